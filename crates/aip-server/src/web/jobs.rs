//! Fleet jobs over HTTP: `POST /api/jobs`, `GET /api/jobs`, `GET` and `DELETE
//! /api/jobs/{id}`, and how a job is shown. The rollout itself is `fleet`'s.

use std::sync::Arc;

use aip_protocol::errors::http as detail;
use aip_protocol::time::http_timestamp;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::job_schema::{CreateJobRequest, JobListQuery, JobQuery};
use super::responses::{
    CreateJobResponses, Guarded, JobCancelResponses, JobListResponses, JobResponses, StoreFailed,
};
use crate::fleet::{JobSpec, Members};
use crate::state::AppState;
use crate::storage::{JobRecord, MemberRecord, MemberState};

/// `POST /api/jobs`: one session per device the selector picks, rolled out in batches.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = CreateJobRequest,
    responses(CreateJobResponses, Guarded, StoreFailed))]
pub async fn create_job(
    State(app): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail::BODY_NOT_OBJECT))?;
    let spec = JobSpec::from_body(&value).map_err(ApiError::bad_request)?;
    if app.is_shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            detail::SHUTTING_DOWN,
        ));
    }
    let id = app.jobs.create(spec).await?;
    let (job, _) = app.jobs.get(&id, Members::None).await?;
    Ok(Json(job_view(&job, None)))
}

/// `GET /api/jobs?limit=`: newest first, without members.
#[utoipa::path(
    get,
    path = "/api/jobs",
    tag = "jobs",
    params(JobListQuery),
    responses(JobListResponses, Guarded, StoreFailed)
)]
pub async fn list_jobs(
    State(app): State<Arc<AppState>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let last = q.iter().rev().find(|(k, _)| k == "limit");
    let limit = super::http::list_limit(last.map(|(_, l)| l.as_str()))?;
    let jobs = app.jobs.list(limit).await?;
    Ok(Json(json!({
        "jobs": jobs.iter().map(|j| job_view(j, None)).collect::<Vec<_>>(),
    })))
}

/// `GET /api/jobs/{id}?members=`: the aggregate and each member (all, none, or those
/// in one state).
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "A job id"), JobQuery),
    responses(JobResponses, Guarded, StoreFailed))]
pub async fn get_job(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let members = match q.iter().rev().find(|(k, _)| k == "members") {
        None => Members::All,
        Some((_, v)) => match v.as_str() {
            "" | "all" => Members::All,
            "none" => Members::None,
            s => Members::In(
                MemberState::parse(s)
                    .ok_or_else(|| ApiError::bad_request(detail::INVALID_MEMBER_STATE))?,
            ),
        },
    };
    let (job, listed) = app.jobs.get(&id, members).await?;
    Ok(Json(job_view(&job, Some(&listed))))
}

/// `DELETE /api/jobs/{id}`: cancels the running members' sessions and skips the pending
/// ones; answers the job as it ended.
#[utoipa::path(delete, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "A job id")),
    responses(JobCancelResponses, Guarded))]
pub async fn cancel_job(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.jobs.cancel(&id).await?;
    let (job, members) = app.jobs.get(&id, Members::All).await?;
    Ok(Json(job_view(&job, Some(&members))))
}

/// A job as shown over HTTP: its id, state and counts, what it was asked (the stored
/// request's fields), and, when listed, its members.
pub fn job_view(j: &JobRecord, members: Option<&[MemberRecord]>) -> Value {
    let mut map = Map::new();
    map.insert("job_id".into(), json!(j.job_id));
    map.insert("state".into(), json!(j.state.as_str()));
    map.insert("reason".into(), json!(j.reason.map(|r| r.as_str())));
    map.insert("created_at".into(), json!(http_timestamp(j.created_at)));
    map.insert(
        "finished_at".into(),
        json!(j.finished_at.map(http_timestamp)),
    );
    map.insert("total".into(), json!(j.total()));
    let counts: Map<String, Value> = MemberState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(j.counts[s.index()])))
        .collect();
    map.insert("counts".into(), Value::Object(counts));
    for key in SPEC_FIELDS {
        map.insert(key.into(), j.spec.get(key).cloned().unwrap_or(Value::Null));
    }
    if let Some(members) = members {
        let list = members.iter().map(member_view).collect::<Vec<_>>();
        map.insert("members".into(), Value::Array(list));
    }
    Value::Object(map)
}

/// The request's fields a job shows back.
const SPEC_FIELDS: [&str; 7] = [
    "selector",
    "request",
    "commands",
    "task_name",
    "batch",
    "max_failures",
    "timeout",
];

fn member_view(m: &MemberRecord) -> Value {
    json!({
        "client_id": m.client_id,
        "state": m.state.as_str(),
        "reason": m.reason.map(|r| r.as_str()),
        "session_id": m.session_id,
        "exit_code": m.exit_code,
        "output": m.output,
        "started_at": m.started_at.map(http_timestamp),
        "finished_at": m.finished_at.map(http_timestamp),
    })
}
