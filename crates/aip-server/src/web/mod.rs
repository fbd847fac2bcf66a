//! Web layer: the router for `/ws` and `/api/*`, with the `--local` and API-key guards.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{middleware, Router};

use crate::state::AppState;

pub mod auth;
pub mod error;
pub mod http;
pub mod ws;

mod handlers;

/// The complete application.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/api/health", get(http::health))
        .route("/api/dispatch", axum::routing::post(http::dispatch))
        .route("/api/task_result/{id}", get(http::task_result))
        .route("/api/clients", get(http::clients))
        .route("/api/sessions", get(http::list_sessions))
        .route(
            "/api/sessions/{id}",
            get(http::get_session).delete(http::cancel_session),
        )
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(DefaultBodyLimit::max(state.config.max_message_size))
        .with_state(state)
}
