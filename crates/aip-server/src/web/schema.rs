//! The shapes of the HTTP API's bodies, for the OpenAPI document (`openapi.rs`) only.
//!
//! The handlers write their JSON directly (`json!`, `SessionView`, `Dispatched::to_json`);
//! these types are never built, they mirror that output field for field, with the
//! examples of http-api.md. `tests/openapi.rs` validates real answers of a running server
//! against them (unknown fields refused), so a field added or renamed in a handler and not
//! here fails a test. Closed sets (states, reasons, origins) are listed from the enums of
//! `storage`, through an exhaustive `match`, so a new variant is a compile error here.
#![allow(dead_code)] // schema-only: the fields are read by the derive, never by code

use std::collections::BTreeMap;

use serde_json::{json, Value};
use utoipa::openapi::{schema, Object, RefOr, Schema, Type};
use utoipa::{IntoParams, ToSchema};

use crate::storage::{EndReason, Origin, SessionState};

/// A string schema with these allowed values, `null` too when `nullable`.
pub(super) fn one_of_strings(values: &[&str], nullable: bool) -> RefOr<Schema> {
    let mut values: Vec<Value> = values.iter().map(|v| json!(v)).collect();
    let ty = if nullable {
        values.push(Value::Null);
        schema::SchemaType::from_iter([Type::String, Type::Null])
    } else {
        schema::SchemaType::new(Type::String)
    };
    Object::builder()
        .schema_type(ty)
        .enum_values(Some(values))
        .into()
}

/// Every [`SessionState`], as shown over HTTP.
pub(crate) fn session_states() -> Vec<&'static str> {
    use SessionState::*;
    // Exhaustive: a new state does not compile until it is listed here.
    let listed = |s: SessionState| match s {
        Created | Running | Completed | Failed | Cancelled => s.as_str(),
    };
    [Created, Running, Completed, Failed, Cancelled]
        .map(listed)
        .to_vec()
}

fn session_state_schema() -> RefOr<Schema> {
    one_of_strings(&session_states(), false)
}

pub(super) fn end_reason_schema() -> RefOr<Schema> {
    use EndReason::*;
    let listed = |r: EndReason| match r {
        Timeout
        | NotAccepted
        | DeviceDisconnected
        | RequesterDisconnected
        | Shutdown
        | Cancelled
        | ServerRestarted
        | NodeLost
        | LostInFlight => r.as_str(),
    };
    let all = [
        Timeout,
        NotAccepted,
        DeviceDisconnected,
        RequesterDisconnected,
        Shutdown,
        Cancelled,
        ServerRestarted,
        NodeLost,
        LostInFlight,
    ];
    one_of_strings(&all.map(listed), true)
}

fn origin_schema() -> RefOr<Schema> {
    use Origin::*;
    let listed = |o: Origin| match o {
        Device | Constellation | Http => o.as_str(),
    };
    one_of_strings(&[Device, Constellation, Http].map(listed), false)
}

/// Any JSON value, `null` included.
fn any_json() -> RefOr<Schema> {
    Object::builder()
        .schema_type(schema::SchemaType::AnyValue)
        .into()
}

/// Body of every error answer (http-api.md §1).
#[derive(ToSchema)]
#[schema(as = Error, example = json!({"detail": "Client not online"}))]
pub struct ErrorBody {
    /// The error's text; the texts of http-api.md are normative.
    detail: String,
}

/// One command of an explicit plan (protocol.md §2.5 Command).
#[derive(ToSchema)]
#[schema(example = json!({"tool_name": "execute_command", "tool_type": "action",
                          "parameters": {"command": "df -h /"}}))]
pub struct Command {
    tool_name: String,
    #[schema(inline)]
    tool_type: ToolType,
    parameters: Option<BTreeMap<String, Value>>,
    call_id: Option<String>,
}

/// Tool family of a command.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ToolType {
    DataCollection,
    Action,
}

/// `POST /api/dispatch` body (http-api.md §3.1). At least one of `target_id` and
/// `client_id` must be a non-empty string; when both are given they must be equal (one
/// that is not a string never is). Unknown fields are ignored.
#[derive(ToSchema)]
#[schema(example = json!({"target_id": "device_win_001",
                          "request": "Open Notepad and type Hello World",
                          "task_name": "notepad_hello"}))]
pub struct DispatchRequest {
    /// Task text, not empty nor only spaces, at most 1 MiB; a natural-language request
    /// unless `commands` is given or it is a JSON plan (server.md §5).
    request: String,
    /// Target device id (seed name).
    target_id: Option<String>,
    /// Target device id (reference name).
    client_id: Option<String>,
    /// Name for the task; default: a new UUID v4.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    task_name: Option<String>,
    /// Session id to use (1–256 characters, not in use); default: a new UUID v4.
    #[schema(min_length = 1, max_length = 256)]
    session_id: Option<String>,
    /// An explicit plan, one command per round, stopping at the first failure.
    #[schema(min_items = 1)]
    commands: Option<Vec<Command>>,
}

/// `200` answer of `POST /api/dispatch` (http-api.md §3.2).
#[derive(ToSchema)]
#[schema(example = json!({"status": "dispatched",
                          "session_id": "3f4a2b1c-9d8e-4f3a-b2c1-9a8b7c6d5e4f",
                          "task_name": "notepad_hello", "client_id": "device_win_001"}))]
pub struct Dispatched {
    /// Always `dispatched`.
    #[schema(schema_with = dispatched_status)]
    status: String,
    session_id: String,
    task_name: String,
    client_id: String,
}

fn dispatched_status() -> RefOr<Schema> {
    one_of_strings(&["dispatched"], false)
}

/// A session as `task_result` and `/api/sessions` show it (http-api.md §4.2): `result`,
/// `error` and `reason` once it is done, `finished_at` once set.
#[derive(ToSchema)]
#[schema(example = json!({
    "status": "done",
    "result": {"rounds": [{"response_id": "d8f1e2a3-b4c5-4d6e-9f70-8a1b2c3d4e5f",
        "action_results": [{"status": "success", "error": null, "result": "Notepad started",
            "namespace": "HostUIExecutor", "call_id": "9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}]}]},
    "state": "completed", "error": null, "reason": null,
    "session_id": "3f4a2b1c-9d8e-4f3a-b2c1-9a8b7c6d5e4f", "task_name": "notepad_hello",
    "client_id": "device_win_001", "created_at": "2025-01-01T10:03:20.330100Z",
    "finished_at": "2025-01-01T10:03:25.112000Z", "origin": "http", "requester": null,
    "started_at": "2025-01-01T10:03:20.401000Z"}))]
pub struct Session {
    /// `pending` while `created`/`running`, then `done`.
    #[schema(schema_with = session_status)]
    status: String,
    /// The final result (any JSON, may be `null`); present once done.
    #[schema(schema_with = any_json, required = false)]
    result: Value,
    #[schema(schema_with = session_state_schema)]
    state: String,
    /// Error text for `failed`/`cancelled`, else `null`; present once done.
    #[schema(required = false)]
    error: Option<String>,
    /// Machine-readable cause, or `null`; present once done.
    #[schema(schema_with = end_reason_schema, required = false)]
    reason: Option<String>,
    session_id: String,
    task_name: String,
    /// The executor device.
    client_id: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime, required = false)]
    finished_at: String,
    /// Who asked: an HTTP caller, a device (its own task) or a constellation.
    #[schema(schema_with = origin_schema)]
    origin: String,
    /// The requesting client (device or constellation), `null` over HTTP.
    #[schema(required = true)]
    requester: Option<String>,
    /// When the device accepted the task, or `null`.
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    /// While the server drives the session (`task_result` and `GET /api/sessions/{id}`
    /// only): the round in progress.
    #[schema(required = false)]
    step: Step,
    /// The task's request as given (`GET /api/sessions/{id}` only).
    #[schema(required = false)]
    request: String,
    /// The fleet job that opened it (`GET /api/jobs/{id}`), when one did.
    #[schema(required = false)]
    job_id: String,
}

/// The round a running session is in.
#[derive(ToSchema)]
#[schema(example = json!({"round": 2, "tools": ["execute_command"]}))]
pub struct Step {
    /// 1-based.
    #[schema(minimum = 1)]
    round: u32,
    /// The tools the round's commands call, in order.
    tools: Vec<String>,
}

fn session_status() -> RefOr<Schema> {
    one_of_strings(&["pending", "done"], false)
}

/// `GET /api/sessions` answer: newest first.
#[derive(ToSchema)]
#[schema(example = json!({"sessions": [{"status": "pending", "state": "running",
    "session_id": "3f4a2b1c-9d8e-4f3a-b2c1-9a8b7c6d5e4f", "task_name": "notepad_hello",
    "client_id": "device_win_001", "created_at": "2025-01-01T10:03:20.330100Z",
    "origin": "http", "requester": null, "started_at": "2025-01-01T10:03:20.401000Z"}]}))]
pub struct SessionList {
    sessions: Vec<Session>,
}

/// `GET /api/sessions` filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// Only sessions in this state (empty: any).
    #[param(schema_with = state_filter)]
    state: Option<String>,
    /// Only sessions this client requested or executed (empty: any).
    client_id: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn state_filter() -> RefOr<Schema> {
    let mut states = session_states();
    states.push("");
    one_of_strings(&states, false)
}

/// One registered WebSocket client (http-api.md §5).
#[derive(ToSchema)]
pub struct Client {
    client_id: String,
    #[schema(schema_with = client_type)]
    r#type: String,
    #[schema(format = DateTime)]
    connected_at: String,
    /// Time of the last inbound frame.
    #[schema(format = DateTime)]
    last_seen: String,
    /// Platform declared at registration, or `null`.
    #[schema(required = true)]
    platform: Option<String>,
    /// A constellation's scope, or `null`.
    #[schema(required = true)]
    target_id: Option<String>,
    /// The string values of the registration's `metadata.tags` (`aip device --tag k=v`).
    tags: BTreeMap<String, String>,
    /// Live sessions it runs or requested (cluster mode: only for clients of the node
    /// answering).
    #[schema(minimum = 0, required = false)]
    sessions: u64,
    /// Cluster mode only: the node the client is connected to.
    #[schema(required = false)]
    node: String,
}

fn client_type() -> RefOr<Schema> {
    one_of_strings(&["device", "constellation"], false)
}

/// `GET /api/clients` answer, in registration order.
#[derive(ToSchema)]
#[schema(example = json!({"online_clients": ["device_win_001"],
    "clients": [{"client_id": "device_win_001", "type": "device",
        "connected_at": "2025-01-01T10:00:00.118230Z", "last_seen": "2025-01-01T10:05:12.004100Z",
        "platform": "windows", "target_id": null, "tags": {"rack": "4"}, "sessions": 1}]}))]
pub struct ClientList {
    /// Ids only (reference format).
    online_clients: Vec<String>,
    clients: Vec<Client>,
}

/// What this binary is (as `aip --version` prints it).
#[derive(ToSchema)]
pub struct Build {
    commit: String,
    target: String,
    profile: String,
}

/// `GET /api/health` answer (http-api.md §6).
#[derive(ToSchema)]
#[schema(example = json!({"status": "healthy", "uptime_seconds": 3600, "connected_clients": 2,
    "active_sessions": 1, "version": "0.1.0",
    "build": {"commit": "1a2b3c4d5e6f", "target": "x86_64-unknown-linux-gnu", "profile": "release"},
    "online_clients": ["device_win_001", "galaxy_main@device_win_001"]}))]
pub struct Health {
    /// `healthy`, or `shutting_down` (with HTTP 503).
    #[schema(schema_with = health_status)]
    status: String,
    uptime_seconds: u64,
    connected_clients: u64,
    /// Sessions in state `created` or `running`.
    active_sessions: u64,
    version: String,
    build: Build,
    /// Present only when no key is configured or the request carries a valid key.
    #[schema(required = false)]
    online_clients: Vec<String>,
    /// Cluster mode only: this node and whether Redis answers.
    #[schema(required = false)]
    cluster: ClusterHealth,
}

/// A node's view of the cluster.
#[derive(ToSchema)]
pub struct ClusterHealth {
    node: String,
    /// `ok` or `unreachable` (the last heartbeat, at most a second old, failed).
    #[schema(schema_with = redis_check)]
    redis: String,
    /// `single` (one Redis) or `sharded` (Redis Cluster).
    mode: String,
}

fn redis_check() -> RefOr<Schema> {
    one_of_strings(&["ok", "unreachable"], false)
}

fn health_status() -> RefOr<Schema> {
    one_of_strings(&["healthy", "shutting_down"], false)
}

/// `GET /api/ready` answer.
#[derive(ToSchema)]
#[schema(example = json!({"status": "ready", "checks": {"store": "ok"}}))]
pub struct Ready {
    #[schema(schema_with = ready_status)]
    status: String,
    checks: ReadyChecks,
}

/// What readiness checked.
#[derive(ToSchema)]
pub struct ReadyChecks {
    /// `ok`, or why the store cannot take work: `failing`, `timeout`, `behind` (a session's
    /// latest state is held in memory for a retried write) or `shutting_down`.
    #[schema(schema_with = store_check)]
    store: String,
    /// Cluster mode only: whether Redis answers (`ok` or `unreachable`).
    #[schema(required = false, schema_with = redis_check)]
    redis: String,
}

fn ready_status() -> RefOr<Schema> {
    one_of_strings(&["ready", "not_ready"], false)
}

fn store_check() -> RefOr<Schema> {
    one_of_strings(
        &["ok", "failing", "timeout", "behind", "shutting_down"],
        false,
    )
}
