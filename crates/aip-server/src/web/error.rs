//! The error of every HTTP handler, and the one place where what went wrong inside
//! (storage, session creation) becomes a status code and a `{"detail": "…"}` body.

use aip_protocol::errors::http as detail;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::fleet::JobError;
use crate::session::CreateError;
use crate::storage::{Refusal, StoreError};

/// An error answer: `{"detail": "<text>"}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    /// An error with this status and detail text.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    /// 400 with this detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404 with this detail.
    pub fn not_found(detail: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"detail": self.detail}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(cause = %e, "storage failure in an HTTP request");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail::STORAGE_UNAVAILABLE)
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::TooMany => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, detail::TOO_MANY_SESSIONS)
            }
            CreateError::Live { .. } => Self::new(StatusCode::CONFLICT, detail::SESSION_ID_IN_USE),
            CreateError::ExecutorGone => Self::not_found(detail::CLIENT_NOT_ONLINE),
            // An ended session of this id stored meanwhile (its result is final).
            CreateError::Store(StoreError::Refused(Refusal::Ended)) => {
                Self::new(StatusCode::CONFLICT, detail::SESSION_ID_IN_USE)
            }
            CreateError::Store(e) => e.into(),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Unavailable => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, detail::JOBS_UNAVAILABLE)
            }
            JobError::NoMatch(selector) => {
                Self::new(StatusCode::NOT_FOUND, detail::no_device_matches(&selector))
            }
            JobError::NotFound => Self::not_found(detail::JOB_NOT_FOUND),
            JobError::AlreadyFinished => {
                Self::new(StatusCode::CONFLICT, detail::JOB_ALREADY_FINISHED)
            }
            JobError::NodeUnavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                detail::JOB_NODE_UNAVAILABLE,
            ),
            JobError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, detail::SHUTTING_DOWN)
            }
            JobError::Store(e) => e.into(),
        }
    }
}
