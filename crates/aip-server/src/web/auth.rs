//! `--local` and credential checks, applied before anything else (http-api.md §1–2): a
//! request is authenticated against the key set in force ([`crate::keys`]); only grants
//! that may use the HTTP API pass (a device key gets 403).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use aip_protocol::errors::http as detail;

use super::error::ApiError;
use crate::logsafe::Clip;
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

/// True when authentication is off or the request carries, in a header, a credential
/// that may use the HTTP API.
pub fn header_authorized(app: &AppState, headers: &HeaderMap) -> bool {
    app.keys
        .authenticate(header_key(headers))
        .is_some_and(|g| g.may_use_api())
}

/// Middleware: `--local` first (every route), then the API key (all but health, ready,
/// the OpenAPI document and docs page, the dashboard's page and files, and `/ws`, which checks `?token=` itself and
/// answers 403).
pub async fn guard(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if app.config.local_only && !is_loopback(peer.ip()) {
        if let Some(left_out) = app.peer_warnings.allow(peer.ip()) {
            tracing::warn!(peer = %peer, left_out, "non-loopback peer refused (--local)");
        }
        return ApiError::new(StatusCode::FORBIDDEN, detail::LOOPBACK_ONLY).into_response();
    }
    let path = req.uri().path();
    if path == "/api/health"
        || path == "/api/ready"
        || path == "/ws"
        || super::openapi::is_public(path)
        || super::ui::is_public(path)
        || (path == "/metrics" && app.config.metrics_public)
    {
        return next.run(req).await;
    }
    match app.keys.authenticate(header_key(req.headers())) {
        None => {
            if let Some(left_out) = app.peer_warnings.allow(peer.ip()) {
                tracing::warn!(peer = %peer, path = %Clip(path), left_out, "request with a missing or wrong API key refused");
            }
            let mut resp =
                ApiError::new(StatusCode::UNAUTHORIZED, detail::INVALID_API_KEY).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
        Some(grant) if !grant.may_use_api() => {
            if let Some(left_out) = app.peer_warnings.allow(peer.ip()) {
                tracing::warn!(peer = %peer, key = %grant.name(), path = %Clip(path), left_out, "request with a credential not for the HTTP API refused");
            }
            ApiError::new(StatusCode::FORBIDDEN, detail::API_NOT_PERMITTED).into_response()
        }
        Some(_) => next.run(req).await,
    }
}
