//! `--local` and API-key checks, applied before anything else (http-api.md §1–2).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use aip_protocol::errors::http as detail;

use super::error::ApiError;
use crate::state::AppState;

/// Loopback: 127.0.0.0/8, ::1, and IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Constant-time key comparison.
pub fn key_matches(expected: &str, given: &str) -> bool {
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// The key presented in `X-API-Key` or `Authorization: Bearer`.
pub fn header_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// True when no key is configured or the request carries the right one in a header.
pub fn header_authorized(app: &AppState, headers: &HeaderMap) -> bool {
    match &app.config.api_key {
        None => true,
        Some(expected) => header_key(headers).is_some_and(|k| key_matches(expected, k)),
    }
}

/// Middleware: `--local` first (every route), then the API key (all but health, ready,
/// the OpenAPI document and docs page, and `/ws`, which checks `?token=` itself and
/// answers 403).
pub async fn guard(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if app.config.local_only && !is_loopback(peer.ip()) {
        tracing::warn!(peer = %peer, "non-loopback peer refused (--local)");
        return ApiError::new(StatusCode::FORBIDDEN, detail::LOOPBACK_ONLY).into_response();
    }
    let path = req.uri().path();
    if path == "/api/health"
        || path == "/api/ready"
        || path == "/ws"
        || super::openapi::is_public(path)
        || (path == "/metrics" && app.config.metrics_public)
    {
        return next.run(req).await;
    }
    if !header_authorized(&app, req.headers()) {
        tracing::warn!(peer = %peer, path = %crate::logsafe::Clip(path), "request with a missing or wrong API key refused");
        let mut resp =
            ApiError::new(StatusCode::UNAUTHORIZED, detail::INVALID_API_KEY).into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    next.run(req).await
}
