//! The shapes of the fleet job routes' bodies (`web/jobs.rs`), for the OpenAPI document
//! only, like `schema.rs`: never built, they mirror the handlers' output field for field
//! (`tests/openapi.rs` checks real answers against them). Closed sets are listed from the
//! enums of `storage::jobs` through exhaustive `match`es.
#![allow(dead_code)] // schema-only: the fields are read by the derive, never by code

use serde_json::Value;
use utoipa::openapi::schema::{Array, ObjectBuilder, OneOfBuilder, SchemaType};
use utoipa::openapi::{Object, RefOr, Schema, Type};
use utoipa::{IntoParams, ToSchema};

use super::schema::{end_reason_schema, one_of_strings, Command};
use crate::storage::{JobReason, JobState, MemberState};

fn string() -> Object {
    Object::with_type(Type::String)
}

/// A string, or a list of strings.
fn string_or_list() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(string())
        .item(Array::new(string()))
        .into()
}

/// [`string_or_list`], or `null` (as if absent).
fn ids() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(string())
        .item(Array::new(string()))
        .item(Object::with_type(Type::Null))
        .into()
}

/// Tag key → a value or a list of values; `null` as if absent.
fn tag_map() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .additional_properties(Some(string_or_list()))
        .into()
}

fn job_state() -> RefOr<Schema> {
    use JobState::*;
    let listed = |s: JobState| match s {
        Running | Completed | Failed | Cancelled => s.as_str(),
    };
    one_of_strings(&JobState::ALL.map(listed), false)
}

fn member_state() -> RefOr<Schema> {
    use MemberState::*;
    let listed = |s: MemberState| match s {
        Pending | Running | Completed | Failed | Cancelled | Skipped => s.as_str(),
    };
    one_of_strings(&MemberState::ALL.map(listed), false)
}

/// Every [`JobReason`]: its own, and every session end reason as `schema.rs` lists them
/// (exhaustively), or `null`.
fn job_reason() -> RefOr<Schema> {
    use JobReason::*;
    let listed = |r: JobReason| match r {
        DeviceOffline | MaxFailures | Cancelled | Timeout | ServerRestarted | Shutdown
        | NotStarted | Session(_) => r.as_str(),
    };
    let own = [
        DeviceOffline,
        MaxFailures,
        Cancelled,
        Timeout,
        ServerRestarted,
        Shutdown,
        NotStarted,
    ];
    let mut all: Vec<String> = own.map(|r| listed(r).to_owned()).to_vec();
    let sessions = serde_json::to_value(end_reason_schema()).unwrap_or_default();
    for r in sessions["enum"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str().filter(|r| !all.iter().any(|a| a == r)) {
            all.push(r.to_owned());
        }
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    one_of_strings(&all, true)
}

/// `batch`: a number of devices, or a string `"N"` / `"N%"`.
fn batch() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::Integer,
            Type::String,
            Type::Null,
        ]))
        .into()
}

/// `timeout`: seconds, or a string such as `"90s"`, `"15m"`.
fn timeout() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::Number,
            Type::String,
            Type::Null,
        ]))
        .into()
}

/// Which devices (`fleet::selector`): every criterion given must match; a value without
/// `*` or `?` is equality, a list is any-of. At least one criterion.
#[derive(ToSchema)]
#[schema(example = json!({"platform": "linux", "tags": {"role": "web"}}))]
pub struct JobSelector {
    /// Client id globs (`web-*`), one or a list; any may match.
    #[schema(schema_with = ids, required = false)]
    client_ids: Value,
    /// The platform the device registered with (a glob).
    #[schema(required = false)]
    platform: Option<String>,
    /// Registration tags (`aip device --tag role=web`): key → value, or a list of values
    /// any of which may match.
    #[schema(schema_with = tag_map, required = false)]
    tags: Value,
}

/// `POST /api/jobs` body: one of `request` and `commands` at least.
#[derive(ToSchema)]
#[schema(example = json!({"selector": {"tags": {"role": "web"}, "platform": "linux"},
    "commands": [{"tool_name": "execute_command", "tool_type": "action",
                  "parameters": {"command": "uptime"}}],
    "batch": "25%", "max_failures": 3, "timeout": "5m"}))]
pub struct CreateJobRequest {
    selector: JobSelector,
    /// Task text for every device (natural language or a JSON plan); with `commands`
    /// alone, their command lines.
    #[schema(required = false)]
    request: Option<String>,
    /// An explicit plan run on every device.
    #[schema(min_items = 1, required = false)]
    commands: Option<Vec<Command>>,
    /// Every member session's task name; default: the job id.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$", required = false)]
    task_name: Option<String>,
    /// How many devices run at once: a number (≥ 1) or a percentage (`"25%"`); default all.
    #[schema(schema_with = batch, required = false)]
    batch: Value,
    /// After this many failed members no new one starts (the rest are `skipped`).
    #[schema(minimum = 1, required = false)]
    max_failures: Option<u32>,
    /// A member's session still running after this long is cancelled (`failed`, reason
    /// `timeout`).
    #[schema(schema_with = timeout, required = false)]
    timeout: Value,
}

/// Members by state.
#[derive(ToSchema)]
pub struct JobCounts {
    pending: u32,
    running: u32,
    completed: u32,
    failed: u32,
    cancelled: u32,
    skipped: u32,
}

/// One device of a job.
#[derive(ToSchema)]
pub struct JobMember {
    client_id: String,
    #[schema(schema_with = member_state)]
    state: String,
    /// Why it ended so (`device_offline`, `max_failures`, `timeout`, a session's reason …).
    #[schema(schema_with = job_reason, required = true)]
    reason: Option<String>,
    /// Its session, once started (`GET /api/sessions/{id}`).
    #[schema(required = true)]
    session_id: Option<String>,
    /// The last command's exit code.
    #[schema(required = true)]
    exit_code: Option<i64>,
    /// The first line of its output, or of its error (at most 200 characters).
    #[schema(required = true)]
    output: Option<String>,
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
}

/// A job: the aggregate, what it was asked, and (`GET`/`DELETE /api/jobs/{id}`) its
/// members in rollout order.
#[derive(ToSchema)]
#[schema(example = json!({"job_id": "5b0f6f2e-1c1d-4c1e-9a55-2f7f3c1d9e01", "state": "running",
    "reason": null, "created_at": "2025-01-01T10:00:00.000000Z", "finished_at": null,
    "total": 2, "counts": {"pending": 1, "running": 1, "completed": 0, "failed": 0,
    "cancelled": 0, "skipped": 0},
    "selector": {"tags": {"role": ["web"]}}, "request": "uptime", "commands": null,
    "task_name": null, "batch": 1, "max_failures": null, "timeout": null,
    "members": [{"client_id": "web-1", "state": "running", "reason": null,
        "session_id": "3f4a2b1c-9d8e-4f3a-b2c1-9a8b7c6d5e4f", "exit_code": null, "output": null,
        "started_at": "2025-01-01T10:00:00.100000Z", "finished_at": null},
      {"client_id": "web-2", "state": "pending", "reason": null, "session_id": null,
        "exit_code": null, "output": null, "started_at": null, "finished_at": null}]}))]
pub struct Job {
    job_id: String,
    #[schema(schema_with = job_state)]
    state: String,
    /// `max_failures`, `cancelled`, `shutdown`, `server_restarted`, `node_lost` (cluster
    /// mode: the node running it was lost), or `null`.
    #[schema(schema_with = job_reason, required = true)]
    reason: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
    /// Number of members.
    total: u32,
    counts: JobCounts,
    selector: JobSelector,
    request: String,
    #[schema(required = true)]
    commands: Option<Vec<Command>>,
    #[schema(required = true)]
    task_name: Option<String>,
    /// As given: `null` (all at once), a number or `"N%"`.
    #[schema(schema_with = batch, required = true)]
    batch: Value,
    #[schema(required = true)]
    max_failures: Option<u32>,
    /// Seconds, or `null`.
    #[schema(required = true)]
    timeout: Option<f64>,
    #[schema(required = false)]
    members: Vec<JobMember>,
}

/// `GET /api/jobs` answer: newest first, without members.
#[derive(ToSchema)]
#[schema(example = json!({"jobs": [{"job_id": "5b0f6f2e-1c1d-4c1e-9a55-2f7f3c1d9e01",
    "state": "completed", "reason": null, "created_at": "2025-01-01T10:00:00.000000Z",
    "finished_at": "2025-01-01T10:00:04.210000Z", "total": 2, "counts": {"pending": 0,
    "running": 0, "completed": 2, "failed": 0, "cancelled": 0, "skipped": 0},
    "selector": {"platform": "linux"}, "request": "uptime", "commands": null,
    "task_name": null, "batch": "50%", "max_failures": 1, "timeout": 60.0}]}))]
pub struct JobList {
    jobs: Vec<Job>,
}

/// `GET /api/jobs` parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /api/jobs/{id}` parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Which members to list: `all` (default), `none`, or those in one state.
    #[param(schema_with = members_filter)]
    members: Option<String>,
}

fn members_filter() -> RefOr<Schema> {
    let mut values = vec!["", "all", "none"];
    values.extend(MemberState::ALL.map(MemberState::as_str));
    one_of_strings(&values, false)
}

/// `GET /api/clients` selector (any given: only the devices it picks; none: 404).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// Client id globs, comma-separated (repeatable).
    client_id: Option<String>,
    /// Platform (a glob).
    platform: Option<String>,
    /// `key=value`, `key=v1,v2` (any of), globs allowed (repeatable).
    tag: Option<String>,
}
