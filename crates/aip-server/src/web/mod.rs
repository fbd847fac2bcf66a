//! Web layer: the router for `/ws`, `/api/*`, the docs page (`openapi.rs`) and the
//! dashboard (`ui.rs`, served from the fallback: it is not part of the API), with the
//! `--local` and API-key guards.

use std::sync::Arc;

use aip_protocol::errors::http as detail;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::routing::get;
use axum::{middleware, Router};

use crate::state::AppState;

pub mod auth;
pub mod clients;
pub mod error;
pub mod events;
pub mod http;
pub mod jobs;
pub mod openapi;
pub mod ops;
pub mod serve;
pub mod view;
pub mod ws;

mod handlers;
mod job_schema;
mod responses;
mod schema;
pub mod ui;

/// The complete application.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/api/health", get(ops::health))
        .route("/api/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/api/dispatch", axum::routing::post(http::dispatch))
        .route("/api/task_result/{id}", get(http::task_result))
        .route("/api/clients", get(clients::clients))
        .route("/api/events", get(events::events))
        .route("/api/sessions", get(http::list_sessions))
        .route(
            "/api/sessions/{id}",
            get(http::get_session).delete(http::cancel_session),
        )
        .route("/api/jobs", get(jobs::list_jobs).post(jobs::create_job))
        .route(
            "/api/jobs/{id}",
            get(jobs::get_job).delete(jobs::cancel_job),
        )
        .merge(openapi::routes())
        .fallback(ui::fallback)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(DefaultBodyLimit::max(state.config.max_http_body))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// Reads a request's body (after the guard) within `--body-timeout` and
/// `--max-http-body`: 408 or 413 otherwise, and the connection is closed. `/ws` has no
/// body and is left alone.
async fn read_body(
    State(app): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    if request.uri().path() == "/ws" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let limit = app.config.max_http_body;
    let refusal = match tokio::time::timeout(
        app.config.body_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Ok(Ok(bytes)) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            return next.run(request).await;
        }
        Err(_) => error::ApiError::new(StatusCode::REQUEST_TIMEOUT, detail::BODY_TIMEOUT),
        // Over the limit (or a peer that went away: nobody reads this answer).
        Ok(Err(_)) => error::ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, detail::BODY_TOO_LARGE),
    };
    let mut response = refusal.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The access log: one line per HTTP request (target `aip_access`, INFO) with method, path
/// (never the query, which may hold `?token=`; cut and escaped, since it is the client's),
/// status, duration and peer. Costs nothing beyond a check when that target is off.
async fn access_log(
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    if !tracing::enabled!(target: "aip_access", tracing::Level::INFO) {
        return next.run(request).await;
    }
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path: String = request.uri().path().chars().take(256).collect();
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let response = next.run(request).await;
    tracing::info!(
        target: "aip_access",
        method = %method,
        path = ?path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        peer = %peer,
        "request"
    );
    response
}
