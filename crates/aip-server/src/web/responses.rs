//! Every status each route answers, with the body's schema (`schema.rs`) and, for errors,
//! an example per `detail` text — taken from `aip_protocol::errors`, so the document
//! shows the texts the server sends. Each handler's `#[utoipa::path]` names its set.
#![allow(dead_code, clippy::large_enum_variant)] // schema-only: read by the derive, never built

use aip_protocol::errors::http as detail;
use utoipa::IntoResponses;

use super::job_schema::{Job, JobList};
use super::schema::{ClientList, Dispatched, ErrorBody, Health, Ready, Session, SessionList};

/// What the `--local` and API-key guard, then the body reader (`--body-timeout`,
/// `--max-http-body`), answer before any route that needs the key.
#[derive(IntoResponses)]
pub enum Guarded {
    /// A missing or wrong API key (only when the server has one).
    #[response(status = 401,
        headers(("WWW-Authenticate" = String, description = "Always `Bearer`")),
        example = json!({"detail": detail::INVALID_API_KEY}))]
    Unauthorized(ErrorBody),
    /// A credential that may not use the HTTP API (a device key, see `--keys`), or a peer
    /// that is not on loopback when the server runs with `--local`.
    #[response(status = 403, examples(
        ("api_not_permitted" = (value = json!({"detail": detail::API_NOT_PERMITTED}))),
        ("loopback_only" = (value = json!({"detail": detail::LOOPBACK_ONLY}))),
    ))]
    Forbidden(ErrorBody),
    /// The request's body did not arrive within `--body-timeout` (the connection is closed).
    #[response(status = 408, example = json!({"detail": detail::BODY_TIMEOUT}))]
    BodyTimeout(ErrorBody),
    /// The request's body is larger than `--max-http-body` (the connection is closed).
    #[response(status = 413, example = json!({"detail": detail::BODY_TOO_LARGE}))]
    BodyTooLarge(ErrorBody),
}

/// What the `--local` guard and the body reader answer before a public route.
#[derive(IntoResponses)]
pub enum LocalOnly {
    /// A peer that is not on loopback, when the server runs with `--local`.
    #[response(status = 403, example = json!({"detail": detail::LOOPBACK_ONLY}))]
    Forbidden(ErrorBody),
    /// The request's body did not arrive within `--body-timeout` (the connection is closed).
    #[response(status = 408, example = json!({"detail": detail::BODY_TIMEOUT}))]
    BodyTimeout(ErrorBody),
    /// The request's body is larger than `--max-http-body` (the connection is closed).
    #[response(status = 413, example = json!({"detail": detail::BODY_TOO_LARGE}))]
    BodyTooLarge(ErrorBody),
}

/// A storage failure: the store's own text goes to the log only.
#[derive(IntoResponses)]
pub enum StoreFailed {
    /// The store refused a read or write.
    #[response(status = 503, example = json!({"detail": detail::STORAGE_UNAVAILABLE}))]
    Unavailable(ErrorBody),
}

/// `POST /api/dispatch`: checks in the normative order of http-api.md §3.3.
#[derive(IntoResponses)]
pub enum DispatchResponses {
    /// The session exists (state `created`) and the task is queued on the device's
    /// connection; the device has not necessarily accepted it yet. A dispatch repeating a
    /// known `session_id` with the same target and request (and `task_name`, if given) is
    /// a retry: it gets this answer again, on any node, and runs nothing.
    #[response(status = 200)]
    Dispatched(Dispatched),
    /// A field is missing, empty or invalid, or the target is a constellation.
    #[response(status = 400, examples(
        ("empty_task" = (value = json!({"detail": detail::EMPTY_TASK}))),
        ("empty_client_id" = (value = json!({"detail": detail::EMPTY_CLIENT_ID}))),
        ("targets_differ" = (value = json!({"detail": detail::TARGETS_DIFFER}))),
        ("invalid_task_name" = (value = json!({"detail": detail::INVALID_TASK_NAME}))),
        ("invalid_session_id" = (value = json!({"detail": detail::INVALID_SESSION_ID}))),
        ("invalid_commands" = (value = json!({"detail":
            detail::invalid_commands("the list of commands is empty")}))),
        ("not_a_device" = (value = json!({"detail": detail::TARGET_NOT_DEVICE}))),
        ("request_too_long" = (value = json!({"detail": aip_protocol::errors::field_too_long(
            "request", aip_protocol::validate::MAX_REQUEST_LEN)}))),
    ))]
    BadRequest(ErrorBody),
    /// The target is not connected (or went away while the task was queued).
    #[response(status = 404, example = json!({"detail": detail::CLIENT_NOT_ONLINE}))]
    NotOnline(ErrorBody),
    /// `session_id` is already in use by a live or retained session of another target or
    /// request.
    #[response(status = 409, example = json!({"detail": detail::SESSION_ID_IN_USE}))]
    InUse(ErrorBody),
    /// The body is not a JSON object.
    #[response(status = 422, example = json!({"detail": detail::BODY_NOT_OBJECT}))]
    NotAnObject(ErrorBody),
    /// Too many active sessions, shutting down, the store refused the write, the device
    /// is busy (its outgoing queue is full: no session was created; retry after
    /// `Retry-After` seconds), or (cluster mode) the device's node did not answer. In
    /// every case nothing runs: retry, with the same `session_id` to be safe.
    #[response(status = 503,
        headers(("Retry-After" = String, description = "Seconds to wait; when the device is busy")),
        examples(
        ("device_busy" = (value = json!({"detail": detail::DEVICE_BUSY}))),
        ("too_many_sessions" = (value = json!({"detail": detail::TOO_MANY_SESSIONS}))),
        ("shutting_down" = (value = json!({"detail": detail::SHUTTING_DOWN}))),
        ("storage" = (value = json!({"detail": detail::STORAGE_UNAVAILABLE}))),
    ))]
    Unavailable(ErrorBody),
}

/// `GET /api/task_result/{id}` and `GET /api/sessions/{id}`.
#[derive(IntoResponses)]
pub enum SessionResponses {
    /// The session: `pending` while it runs, `done` with its result once it ended.
    #[response(status = 200)]
    Found(Session),
    /// No such session, or its retained record expired.
    #[response(status = 404, example = json!({"detail": detail::TASK_NOT_FOUND}))]
    NotFound(ErrorBody),
}

/// `DELETE /api/sessions/{id}`.
#[derive(IntoResponses)]
pub enum CancelResponses {
    /// The session, now `cancelled` (reason `cancelled`).
    #[response(status = 200)]
    Cancelled(Session),
    /// No such session.
    #[response(status = 404, example = json!({"detail": detail::TASK_NOT_FOUND}))]
    NotFound(ErrorBody),
    /// The session had already ended.
    #[response(status = 409, example = json!({"detail": detail::ALREADY_FINISHED}))]
    Finished(ErrorBody),
    /// The session's job did not stop within 10 s.
    #[response(status = 500, example = json!({"detail": detail::DID_NOT_STOP}))]
    DidNotStop(ErrorBody),
}

/// `GET /api/sessions`.
#[derive(IntoResponses)]
pub enum ListResponses {
    /// Stored sessions, newest first.
    #[response(status = 200)]
    Sessions(SessionList),
    /// A `state` or `limit` that is not one of the allowed values.
    #[response(status = 400, examples(
        ("invalid_state" = (value = json!({"detail": detail::INVALID_STATE}))),
        ("invalid_limit" = (value = json!({"detail": detail::INVALID_LIMIT}))),
    ))]
    BadRequest(ErrorBody),
}

/// `GET /api/clients`.
#[derive(IntoResponses)]
pub enum ClientsResponses {
    /// The registered WebSocket clients, oldest first (with a selector: the devices it
    /// picks).
    #[response(status = 200)]
    Clients(ClientList),
    /// A selector that cannot be read (a `tag` that is not `key=value`, an empty value).
    #[response(status = 400, example = json!({"detail": detail::invalid_selector("tag 'role' is not key=value")}))]
    BadSelector(ErrorBody),
    /// No connected device matches the selector.
    #[response(status = 404, example = json!({"detail": detail::no_device_matches("platform=linux tag=role=web")}))]
    NoMatch(ErrorBody),
}

/// `POST /api/jobs`.
#[derive(IntoResponses)]
pub enum CreateJobResponses {
    /// The job is stored and its rollout started: the job without its members.
    #[response(status = 200)]
    Created(Job),
    /// A field is missing or invalid.
    #[response(status = 400, examples(
        ("selector_required" = (value = json!({"detail": detail::SELECTOR_REQUIRED}))),
        ("invalid_selector" = (value = json!({"detail": detail::invalid_selector("unknown field 'tag'")}))),
        ("empty_task" = (value = json!({"detail": detail::EMPTY_TASK}))),
        ("invalid_commands" = (value = json!({"detail":
            detail::invalid_commands("the list of commands is empty")}))),
        ("invalid_task_name" = (value = json!({"detail": detail::INVALID_TASK_NAME}))),
        ("invalid_batch" = (value = json!({"detail": detail::INVALID_BATCH}))),
        ("invalid_max_failures" = (value = json!({"detail": detail::INVALID_MAX_FAILURES}))),
        ("invalid_timeout" = (value = json!({"detail": detail::INVALID_TIMEOUT}))),
    ))]
    BadRequest(ErrorBody),
    /// No connected device matches the selector.
    #[response(status = 404, example = json!({"detail": detail::no_device_matches("platform=linux tag=role=web")}))]
    NoMatch(ErrorBody),
    /// The body is not a JSON object.
    #[response(status = 422, example = json!({"detail": detail::BODY_NOT_OBJECT}))]
    NotAnObject(ErrorBody),
    /// Shutting down, the store refused the write (in cluster mode: Redis did not
    /// answer), or this server keeps no jobs (an embedding without a job store).
    #[response(status = 503, examples(
        ("shutting_down" = (value = json!({"detail": detail::SHUTTING_DOWN}))),
        ("storage" = (value = json!({"detail": detail::STORAGE_UNAVAILABLE}))),
        ("unavailable" = (value = json!({"detail": detail::JOBS_UNAVAILABLE}))),
    ))]
    Unavailable(ErrorBody),
}

/// `GET /api/jobs/{id}`.
#[derive(IntoResponses)]
pub enum JobResponses {
    /// The job and the members asked for.
    #[response(status = 200)]
    Found(Job),
    /// A `members` filter that is not `all`, `none` or a member state.
    #[response(status = 400, example = json!({"detail": detail::INVALID_MEMBER_STATE}))]
    BadRequest(ErrorBody),
    /// No such job.
    #[response(status = 404, example = json!({"detail": detail::JOB_NOT_FOUND}))]
    NotFound(ErrorBody),
}

/// `DELETE /api/jobs/{id}`.
#[derive(IntoResponses)]
pub enum JobCancelResponses {
    /// The job, now `cancelled`: running members' sessions cancelled, pending ones skipped.
    #[response(status = 200)]
    Cancelled(Job),
    /// No such job.
    #[response(status = 404, example = json!({"detail": detail::JOB_NOT_FOUND}))]
    NotFound(ErrorBody),
    /// The job had already ended.
    #[response(status = 409, example = json!({"detail": detail::JOB_ALREADY_FINISHED}))]
    Finished(ErrorBody),
    /// The store refused a read, or (cluster mode) the node running the job did not answer.
    #[response(status = 503, examples(
        ("storage" = (value = json!({"detail": detail::STORAGE_UNAVAILABLE}))),
        ("node" = (value = json!({"detail": detail::JOB_NODE_UNAVAILABLE}))),
    ))]
    Unavailable(ErrorBody),
}

/// `GET /api/jobs`.
#[derive(IntoResponses)]
pub enum JobListResponses {
    /// Jobs, newest first, without their members.
    #[response(status = 200)]
    Jobs(JobList),
    /// A `limit` out of range.
    #[response(status = 400, example = json!({"detail": detail::INVALID_LIMIT}))]
    BadRequest(ErrorBody),
}

/// `GET /api/health`.
#[derive(IntoResponses)]
pub enum HealthResponses {
    /// Alive.
    #[response(status = 200)]
    Healthy(Health),
    /// Shutting down (`status` is `shutting_down`).
    #[response(status = 503, example = json!({"status": "shutting_down", "uptime_seconds": 3600,
        "connected_clients": 0, "active_sessions": 0, "version": "0.1.0",
        "build": {"commit": "1a2b3c4d5e6f", "target": "x86_64-unknown-linux-gnu",
                  "profile": "release"}}))]
    ShuttingDown(Health),
}

/// `GET /api/ready`.
#[derive(IntoResponses)]
pub enum ReadyResponses {
    /// The store commits writes and holds every session's latest state.
    #[response(status = 200)]
    Ready(Ready),
    /// Not ready: `checks.store` says why.
    #[response(status = 503,
        example = json!({"status": "not_ready", "checks": {"store": "failing"}}))]
    NotReady(Ready),
}

/// `GET /metrics`.
#[derive(IntoResponses)]
pub enum MetricsResponses {
    /// Prometheus text exposition (format version 0.0.4).
    #[response(status = 200, content_type = "text/plain",
        example = json!("# TYPE aip_active_sessions gauge\naip_active_sessions 0\n"))]
    Metrics(String),
    /// The metrics recorder could not be installed in this process.
    #[response(status = 503, example = json!({"detail": detail::METRICS_UNAVAILABLE}))]
    Unavailable(ErrorBody),
}

/// `GET /ws`: the AIP WebSocket endpoint (protocol.md §1).
#[derive(IntoResponses)]
pub enum WsResponses {
    /// The connection is upgraded to a WebSocket speaking AIP.
    #[response(status = 101)]
    Upgraded,
    /// Not a WebSocket upgrade request (the answer is plain text).
    #[response(status = 400, content_type = "text/plain",
        example = json!("Connection header did not include 'upgrade'"))]
    NotAnUpgrade(String),
    /// A missing or wrong key (`?token=`, `X-API-Key` or `Authorization: Bearer`), or,
    /// with `--local`, a peer that is not on loopback.
    #[response(status = 403, examples(
        ("invalid_api_key" = (value = json!({"detail": detail::INVALID_API_KEY}))),
        ("loopback_only" = (value = json!({"detail": detail::LOOPBACK_ONLY}))),
    ))]
    Forbidden(ErrorBody),
    /// The connection cap is reached, or the server is shutting down.
    #[response(status = 503, examples(
        ("too_many_connections" = (value = json!({"detail": detail::TOO_MANY_CONNECTIONS}))),
        ("shutting_down" = (value = json!({"detail": detail::SHUTTING_DOWN}))),
    ))]
    Unavailable(ErrorBody),
}

/// `GET /api/events`: Server-Sent Events (see the operation's description).
#[derive(IntoResponses)]
pub enum EventsResponses {
    /// The stream: `retry:` and a comment first, then one frame per event —
    /// `id: <n>`, `event: <type>` and one `data:` line, a JSON object with `type` and the
    /// event's fields — and a `: keep-alive` comment every 15 s. It does not end while
    /// the server runs; a subscriber that falls behind is disconnected.
    #[response(status = 200, content_type = "text/event-stream",
        headers(("Cache-Control" = String, description = "`no-cache`")),
        example = json!("retry: 2000\n: aip events\n\nid: 1764584400000001\nevent: session_created\ndata: {\"session_id\":\"3f4a2b1c-9d8e-4f3a-b2c1-9a8b7c6d5e4f\",\"task_name\":\"disk\",\"request\":\"plan\",\"origin\":\"http\",\"requester\":null,\"client_id\":\"device_win_001\",\"state\":\"created\",\"created_at\":\"2025-01-01T10:03:20.330100Z\",\"started_at\":null,\"type\":\"session_created\"}\n\n"))]
    Stream(String),
    /// As many subscribers as the server keeps are connected; retry later.
    #[response(status = 503,
        headers(("Retry-After" = String, description = "Seconds to wait")),
        example = json!({"detail": detail::TOO_MANY_SUBSCRIBERS}))]
    Unavailable(ErrorBody),
}
