//! What an operator's tools poll: liveness (`/api/health`), readiness (`/api/ready`) and
//! Prometheus metrics (`/metrics`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use aip_protocol::errors::http as detail;

use super::auth::header_authorized;
use super::error::ApiError;
use super::responses::{Guarded, HealthResponses, LocalOnly, MetricsResponses, ReadyResponses};
use crate::state::AppState;

/// `GET /api/health`.
#[utoipa::path(get, path = "/api/health", tag = "operations", security(()),
    responses(HealthResponses, LocalOnly))]
pub async fn health(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let shutting_down = app.is_shutting_down();
    let mut body = json!({
        "status": if shutting_down { "shutting_down" } else { "healthy" },
        "uptime_seconds": app.started.elapsed().as_secs(),
        "connected_clients": app.registry.len(),
        "active_sessions": app.sessions.active(),
        "version": crate::build::VERSION,
        "build": {"commit": crate::build::COMMIT, "target": crate::build::TARGET,
                  "profile": crate::build::PROFILE},
    });
    if header_authorized(&app, &headers) {
        let ids: Vec<String> = app
            .registry
            .list()
            .iter()
            .map(|c| c.client_id.clone())
            .collect();
        body["online_clients"] = json!(ids);
    }
    if let Some(cluster) = &app.cluster {
        body["cluster"] = json!({
            "node": cluster.node(),
            "redis": redis_state(cluster),
            "mode": if cluster.is_sharded() { "sharded" } else { "single" },
        });
    }
    let status = if shutting_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// `GET /api/ready`: whether this server can take work now — not shutting down, and the
/// store commits a write (a probe row, at most one probe per second however often this
/// is polled) and holds every session's latest state (none kept in memory for a retried
/// write). Never needs the key; the store's own error text stays in the log.
#[utoipa::path(get, path = "/api/ready", tag = "operations", security(()),
    responses(ReadyResponses, LocalOnly))]
pub async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let store = if app.is_shutting_down() {
        Err("shutting_down")
    } else if app.sessions.unsaved() > 0 {
        // Session states the store refused are still being retried.
        Err("behind")
    } else {
        app.readiness.store_ok(&*app.store).await
    };
    let mut checks = json!({"store": store.err().unwrap_or("ok")});
    let mut ready = store.is_ok();
    if let Some(cluster) = &app.cluster {
        checks["redis"] = json!(redis_state(cluster));
        ready &= cluster.redis_up();
    }
    let (status, body) = if ready {
        (StatusCode::OK, json!({"status": "ready", "checks": checks}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "checks": checks}),
        )
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text exposition (behind the API key unless
/// `--metrics-public`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(MetricsResponses, Guarded)
)]
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let Some(handle) = crate::metrics::install() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail::METRICS_UNAVAILABLE)
            .into_response();
    };
    let clients = app.registry.list();
    let devices = clients
        .iter()
        .filter(|c| c.role == aip_protocol::ClientType::Device)
        .count();
    let body = crate::metrics::render(
        handle,
        devices,
        clients.len() - devices,
        app.sessions.active(),
        app.sessions.unsaved(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Cluster mode: whether the last heartbeat reached Redis.
fn redis_state(cluster: &crate::cluster::Cluster) -> &'static str {
    if cluster.redis_up() {
        "ok"
    } else {
        "unreachable"
    }
}
