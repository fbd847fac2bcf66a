//! REST API (http-api.md): dispatch, task results, sessions (clients: `clients.rs`, fleet
//! jobs: `jobs.rs`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::errors::field_too_long;
use aip_protocol::plan::{non_empty_commands, parse_commands};
use aip_protocol::push_json_str;
use aip_protocol::validate::{is_valid_http_task_name, MAX_ID_LEN, MAX_REQUEST_LEN};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use aip_protocol::errors::http as detail;

use super::error::ApiError;
use super::responses::{
    CancelResponses, DispatchResponses, Guarded, ListResponses, SessionResponses, StoreFailed,
};
use super::schema::{DispatchRequest, SessionQuery};
use super::view::SessionView;
use crate::cluster::{CancelReply, OpenReply, RemoteOpen};
use crate::session::{CancelReason, OpenRequest};
use crate::state::AppState;
use crate::storage::{SessionFilter, SessionRecord, SessionState};

/// Unknown route.
pub async fn not_found() -> ApiError {
    ApiError::not_found(detail::NOT_FOUND)
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, detail::METHOD_NOT_ALLOWED)
}

/// A field of a dispatch body as given: absent (or `null`), of the wrong JSON type, or a
/// value of the expected type.
enum Field<T> {
    Absent,
    Wrong,
    Given(T),
}

impl<'a> Field<Cow<'a, str>> {
    /// A string field of a parsed body.
    fn str_of(body: &'a Value, key: &str) -> Self {
        match body.get(key) {
            None | Some(Value::Null) => Field::Absent,
            Some(Value::String(s)) => Field::Given(Cow::Borrowed(s)),
            Some(_) => Field::Wrong,
        }
    }

    /// A field the typed parser read (`None`: absent or `null`).
    fn from_option(v: Option<Cow<'a, str>>) -> Self {
        v.map_or(Field::Absent, Field::Given)
    }

    /// The string, if given and not empty.
    fn non_empty(&self) -> Option<&str> {
        match self {
            Field::Given(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }
}

/// The fields of a `POST /api/dispatch` body that the handler reads.
struct DispatchFields<'a> {
    request: Field<Cow<'a, str>>,
    target_id: Field<Cow<'a, str>>,
    client_id: Field<Cow<'a, str>>,
    task_name: Field<Cow<'a, str>>,
    session_id: Field<Cow<'a, str>>,
    /// `None`: absent or `null`; a list that is not a valid, non-empty list of commands is
    /// an `Err` with the detail.
    commands: Option<Result<Vec<aip_protocol::Command>, String>>,
}

/// Typed reading of a well-formed body: no `serde_json::Value` tree (whose maps are built
/// and hashed key by key). Any field of another type, a duplicate key, a body that is not
/// an object: the typed read fails and the body is read as a `Value` instead, which gives
/// every such case its own error in the normative order.
#[derive(serde::Deserialize)]
struct TypedBody<'a> {
    #[serde(borrow, default)]
    request: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    task_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(default)]
    commands: Option<Vec<aip_protocol::Command>>,
}

impl<'a> DispatchFields<'a> {
    /// Reads `bytes`, typed if it can, else as a `Value` kept in `value`. `None`: the body
    /// is not a JSON object.
    fn read(bytes: &'a [u8], value: &'a mut Option<Value>) -> Option<Self> {
        Self::typed(bytes).or_else(|| Self::untyped(bytes, value))
    }

    fn typed(bytes: &'a [u8]) -> Option<Self> {
        // A derived struct also accepts a JSON array (fields by position): objects only.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        let b = serde_json::from_slice::<TypedBody<'a>>(bytes).ok()?;
        Some(Self {
            request: Field::from_option(b.request),
            target_id: Field::from_option(b.target_id),
            client_id: Field::from_option(b.client_id),
            task_name: Field::from_option(b.task_name),
            session_id: Field::from_option(b.session_id),
            commands: b.commands.map(non_empty_commands),
        })
    }

    fn untyped(bytes: &[u8], value: &'a mut Option<Value>) -> Option<Self> {
        let body = &*value.insert(serde_json::from_slice(bytes).ok()?);
        if !body.is_object() {
            return None;
        }
        Some(Self {
            request: Field::str_of(body, "request"),
            target_id: Field::str_of(body, "target_id"),
            client_id: Field::str_of(body, "client_id"),
            task_name: Field::str_of(body, "task_name"),
            session_id: Field::str_of(body, "session_id"),
            commands: body
                .get("commands")
                .filter(|v| !v.is_null())
                .map(parse_commands),
        })
    }
}

/// 503 with `Retry-After`: the device's outgoing queue is above its high-water mark, so
/// the task is not queued (and no session is created) rather than have the device
/// disconnected for not reading fast enough.
fn device_busy() -> Response {
    crate::metrics::dispatch_busy();
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail::DEVICE_BUSY).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `POST /api/dispatch` (http-api.md §3): checks in the normative order.
#[utoipa::path(post, path = "/api/dispatch", tag = "tasks", request_body = DispatchRequest,
    responses(DispatchResponses, Guarded))]
pub async fn dispatch(State(app): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let mut value = None;
    let Some(fields) = DispatchFields::read(&body, &mut value) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            detail::BODY_NOT_OBJECT,
        ));
    };
    let valid = fields.validate()?;
    if !valid.generated_id {
        if let Some(same) = known_session(&app, &valid).await? {
            return Ok(same);
        }
    }
    let Some(device) = app.registry.get(&valid.target) else {
        return dispatch_elsewhere(&app, valid).await;
    };
    if device.role != aip_protocol::ClientType::Device {
        return Err(ApiError::bad_request(detail::TARGET_NOT_DEVICE));
    }
    if app.is_shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            detail::SHUTTING_DOWN,
        ));
    }
    if device.conn.is_busy() {
        return Ok(device_busy());
    }
    let handle = app
        .sessions
        .open(OpenRequest {
            session_id: valid.session_id,
            generated_id: valid.generated_id,
            task_name: valid.task_name,
            request: valid.request,
            requester: None,
            executor: Arc::clone(&device),
            commands: valid.commands,
            job_id: None,
        })
        .await?;
    tracing::info!(session_id = %handle.session_id, client_id = %device.client_id, "task dispatched over HTTP");
    Ok(Dispatched::new(&handle.session_id, &handle.task_name, &device.client_id).into_response())
}

/// A dispatch naming a `session_id` that is known (live, or a retained result): the
/// same dispatch again (an HTTP session of the same target and request, and task name if
/// one is given) is a retry and gets the answer the first one got, on any node, whatever
/// the session's state; anything else is `409`. `None`: not known.
async fn known_session(
    app: &AppState,
    valid: &ValidDispatch,
) -> Result<Option<Response>, ApiError> {
    let in_use = || ApiError::new(StatusCode::CONFLICT, detail::SESSION_ID_IN_USE);
    match app.sessions.record(&valid.session_id).await? {
        Some(r) if valid.is_retry_of(&r) => {
            tracing::info!(session_id = %r.session_id, "dispatch retried: answered as the first time");
            Ok(Some(
                Dispatched::new(&r.session_id, &r.task_name, &r.executor).into_response(),
            ))
        }
        Some(_) => Err(in_use()),
        // Live here but not stored yet: a retry racing the first attempt.
        None if app.sessions.get(&valid.session_id).is_some() => Err(in_use()),
        None => Ok(None),
    }
}

/// Cluster mode: a dispatch for a device connected to another node, which opens and
/// runs the session; answered 200 only once that node has stored it.
async fn dispatch_elsewhere(app: &AppState, valid: ValidDispatch) -> Result<Response, ApiError> {
    let not_online = || ApiError::not_found(detail::CLIENT_NOT_ONLINE);
    let cluster = app.cluster.as_ref().ok_or_else(not_online)?;
    if app.is_shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            detail::SHUTTING_DOWN,
        ));
    }
    if !valid.generated_id {
        // A retry of a dispatch whose earlier attempt was answered 503 (its id voided,
        // `Cluster::settle`) is a new attempt.
        cluster.store().unvoid(&valid.session_id).await?;
    }
    let open = RemoteOpen {
        session_id: valid.session_id.clone(),
        generated_id: valid.generated_id,
        task_name: valid.task_name.clone(),
        request: valid.request.clone(),
        commands: valid.commands.clone(),
        job_id: None,
    };
    let (device, outcome) = cluster
        .open_located(&valid.target, open)
        .await?
        .ok_or_else(not_online)?;
    if !device.is_device {
        return Err(ApiError::bad_request(detail::TARGET_NOT_DEVICE));
    }
    match outcome {
        Some(OpenReply::Ok) => {}
        Some(OpenReply::Busy) => return Ok(device_busy()),
        Some(OpenReply::Refused(r)) => {
            if r.status() == 409 && !valid.generated_id {
                // A retry racing its first attempt, which the device's node runs.
                if let Some(same) = known_session(app, &valid).await? {
                    return Ok(same);
                }
            }
            let status =
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(ApiError::new(status, r.detail()));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                detail::NODE_UNAVAILABLE,
            ))
        }
    }
    tracing::info!(session_id = %valid.session_id, client_id = %device.client_id, node = %device.node, "task dispatched over HTTP to another node");
    Ok(Dispatched::new(&valid.session_id, &valid.task_name, &device.client_id).into_response())
}

impl DispatchFields<'_> {
    /// The checks that need nothing but the body, in the normative order.
    fn validate(self) -> Result<ValidDispatch, ApiError> {
        let request = match &self.request {
            Field::Given(r) if r.len() > MAX_REQUEST_LEN => {
                return Err(ApiError::bad_request(field_too_long(
                    "request",
                    MAX_REQUEST_LEN,
                )))
            }
            Field::Given(r) if !r.trim().is_empty() => r.to_string(),
            _ => return Err(ApiError::bad_request(detail::EMPTY_TASK)),
        };
        let target = match (self.target_id.non_empty(), self.client_id.non_empty()) {
            (None, None) => return Err(ApiError::bad_request(detail::EMPTY_CLIENT_ID)),
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::bad_request(detail::TARGETS_DIFFER))
            }
            // A value that is not a string names no client: it cannot agree with the id.
            _ if matches!(self.target_id, Field::Wrong)
                || matches!(self.client_id, Field::Wrong) =>
            {
                return Err(ApiError::bad_request(detail::TARGETS_DIFFER))
            }
            (Some(a), _) | (None, Some(a)) => a.to_owned(),
        };
        let (task_name, task_name_given) = match &self.task_name {
            Field::Absent => (uuid::Uuid::new_v4().to_string(), false),
            Field::Given(n) if is_valid_http_task_name(n) => (n.to_string(), true),
            _ => return Err(ApiError::bad_request(detail::INVALID_TASK_NAME)),
        };
        // A generated UUID cannot be in use; only a client-supplied id needs the store lookup.
        let (session_id, generated_id) = match &self.session_id {
            Field::Absent => (uuid::Uuid::new_v4().to_string(), true),
            Field::Given(s) if (1..=MAX_ID_LEN).contains(&s.chars().count()) => {
                (s.to_string(), false)
            }
            _ => return Err(ApiError::bad_request(detail::INVALID_SESSION_ID)),
        };
        let commands = match self.commands {
            None => None,
            Some(c) => Some(c.map_err(|e| ApiError::bad_request(detail::invalid_commands(&e)))?),
        };
        Ok(ValidDispatch {
            target,
            session_id,
            generated_id,
            task_name,
            task_name_given,
            request,
            commands,
        })
    }
}

impl ValidDispatch {
    /// Whether this dispatch repeats the one that made `r`: an HTTP session of the same
    /// target and request (and task name, if this one names it).
    fn is_retry_of(&self, r: &SessionRecord) -> bool {
        r.origin == crate::storage::Origin::Http
            && r.requester.is_none()
            && r.executor == self.target
            && r.request == self.request
            && (!self.task_name_given || r.task_name == self.task_name)
    }
}

/// A dispatch body that passed the checks of [`DispatchFields::validate`].
struct ValidDispatch {
    target: String,
    session_id: String,
    generated_id: bool,
    task_name: String,
    /// `task_name` was given (not generated).
    task_name_given: bool,
    request: String,
    commands: Option<Vec<aip_protocol::Command>>,
}

/// The answer to a dispatch (http-api.md §3), keys in this order.
#[cfg_attr(test, derive(serde::Serialize))]
struct Dispatched<'a> {
    status: &'static str,
    session_id: &'a str,
    task_name: &'a str,
    client_id: &'a str,
}

impl<'a> Dispatched<'a> {
    fn new(session_id: &'a str, task_name: &'a str, client_id: &'a str) -> Self {
        Self {
            status: "dispatched",
            session_id,
            task_name,
            client_id,
        }
    }

    /// The `200` answer, JSON.
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response()
    }

    /// What serde_json would write (a test compares), written directly like every
    /// frame (see `ServerMessage::to_json`).
    fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        let fields = [
            ("{\"status\":", self.status),
            (",\"session_id\":", self.session_id),
            (",\"task_name\":", self.task_name),
            (",\"client_id\":", self.client_id),
        ];
        for (key, value) in fields {
            out.push_str(key);
            push_json_str(&mut out, value);
        }
        out.push('}');
        out
    }
}

/// One session's view; while it runs, with the step in progress.
fn shown(app: &AppState, record: &SessionRecord) -> Response {
    let step = if record.state.is_terminal() {
        None
    } else {
        app.sessions.get(&record.session_id).and_then(|h| h.step())
    };
    Json(SessionView(record, step.as_deref())).into_response()
}

/// `GET /api/task_result/{id}`: by session id, else the newest with that task name.
#[utoipa::path(get, path = "/api/task_result/{id}", tag = "tasks",
    params(("id" = String, Path, description = "A session id, else a task name (the newest session with it)")),
    responses(SessionResponses, Guarded, StoreFailed))]
pub async fn task_result(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = match app.sessions.record(&id).await? {
        Some(r) => r,
        None => app
            .sessions
            .record_by_task_name(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(detail::TASK_NOT_FOUND))?,
    };
    Ok(shown(&app, &record))
}

/// A list's `limit` query value: 1 to 1000, 100 when absent.
pub(super) fn list_limit(given: Option<&str>) -> Result<usize, ApiError> {
    match given {
        None => Ok(100),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request(detail::INVALID_LIMIT)),
    }
}

/// `GET /api/sessions?state=&client_id=&limit=`: newest first.
#[utoipa::path(
    get,
    path = "/api/sessions",
    tag = "tasks",
    params(SessionQuery),
    responses(ListResponses, Guarded, StoreFailed)
)]
pub async fn list_sessions(
    State(app): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let state = match q.get("state").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            SessionState::parse(s).ok_or_else(|| ApiError::bad_request(detail::INVALID_STATE))?,
        ),
    };
    let limit = list_limit(q.get("limit").map(String::as_str))?;
    let filter = SessionFilter {
        state,
        client_id: q.get("client_id").filter(|s| !s.is_empty()).cloned(),
        limit,
    };
    let records = app.sessions.records(&filter).await?;
    Ok(Json(json!({
        "sessions": records.iter().map(|r| SessionView(r, None)).collect::<Vec<_>>(),
    })))
}

/// `GET /api/sessions/{id}`: by session id only.
#[utoipa::path(get, path = "/api/sessions/{id}", tag = "tasks",
    params(("id" = String, Path, description = "A session id")),
    responses(SessionResponses, Guarded, StoreFailed))]
pub async fn get_session(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = app
        .sessions
        .record(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(detail::TASK_NOT_FOUND))?;
    // The request too (not on `task_result`, the hot path, nor in lists).
    let step = (!record.state.is_terminal())
        .then(|| app.sessions.get(&record.session_id).and_then(|h| h.step()))
        .flatten();
    let mut view = serde_json::to_value(SessionView(&record, step.as_deref())).unwrap_or_default();
    if let Some(obj) = view.as_object_mut() {
        obj.insert("request".into(), Value::String(record.request.clone()));
    }
    Ok(Json(view).into_response())
}

/// `DELETE /api/sessions/{id}`: cancels a live session and returns its final view.
#[utoipa::path(delete, path = "/api/sessions/{id}", tag = "tasks",
    params(("id" = String, Path, description = "A session id")),
    responses(CancelResponses, Guarded, StoreFailed))]
pub async fn cancel_session(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(handle) = app.sessions.get(&id) else {
        if let Some(cluster) = &app.cluster {
            match cluster.cancel_remote(&id).await? {
                None => {}
                Some(Some(CancelReply::Ok)) => {
                    let record = app
                        .sessions
                        .record(&id)
                        .await?
                        .ok_or_else(|| ApiError::not_found(detail::TASK_NOT_FOUND))?;
                    tracing::info!(session_id = %id, "session on another node cancelled over HTTP");
                    return Ok(Json(SessionView(&record, None)).into_response());
                }
                Some(Some(CancelReply::Refused(_))) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        detail::ALREADY_FINISHED,
                    ))
                }
                Some(_) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        detail::NODE_UNAVAILABLE,
                    ))
                }
            }
        }
        return match app.sessions.record(&id).await? {
            Some(_) => Err(ApiError::new(
                StatusCode::CONFLICT,
                detail::ALREADY_FINISHED,
            )),
            None => Err(ApiError::not_found(detail::TASK_NOT_FOUND)),
        };
    };
    handle.cancel(CancelReason::Api);
    if tokio::time::timeout(Duration::from_secs(10), handle.finished())
        .await
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            detail::DID_NOT_STOP,
        ));
    }
    let record = app
        .sessions
        .record(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(detail::TASK_NOT_FOUND))?;
    tracing::info!(session_id = %id, "session cancelled over HTTP");
    Ok(Json(SessionView(&record, None)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the handler reads of a body, printed.
    fn summary(f: &DispatchFields<'_>) -> String {
        let field = |x: &Field<Cow<'_, str>>| match x {
            Field::Absent => "absent".to_owned(),
            Field::Wrong => "wrong".to_owned(),
            Field::Given(s) => format!("{s:?}"),
        };
        format!(
            "{} {} {} {} {} {:?}",
            field(&f.request),
            field(&f.target_id),
            field(&f.client_id),
            field(&f.task_name),
            field(&f.session_id),
            f.commands
        )
    }

    #[test]
    fn typed_and_untyped_reads_of_a_dispatch_body_agree() {
        let bodies = [
            r#"{"request": "open notepad", "target_id": "dev-1"}"#,
            r#" {"request": "a\"b", "client_id": "dev-1", "task_name": null, "session_id": "s-1", "extra": [1]}"#,
            r#"{"request": "x", "target_id": "", "client_id": "d", "task_name": "t-1", "commands":
                [{"tool_name": "click", "tool_type": "action", "parameters": {"x": 1}, "call_id": "c1"}]}"#,
            r#"{"request": "x", "target_id": "d", "commands": []}"#,
            r#"{"request": "x", "target_id": "d", "commands": null}"#,
        ];
        for body in bodies {
            let typed = DispatchFields::typed(body.as_bytes()).expect("typed read");
            let mut value = None;
            let untyped = DispatchFields::untyped(body.as_bytes(), &mut value).expect("read");
            assert_eq!(summary(&typed), summary(&untyped), "{body}");
        }
    }

    #[test]
    fn bodies_the_typed_read_refuses_are_read_as_values() {
        for (body, expected) in [
            // Wrong types: the typed read fails; the fields are told apart.
            (
                r#"{"request": 5, "target_id": "d"}"#,
                "wrong \"d\" absent absent absent None",
            ),
            (
                r#"{"request": "x", "task_name": 7}"#,
                "\"x\" absent absent wrong absent None",
            ),
            // A duplicate key: the last one counts, as when read as a value.
            (
                r#"{"request": "a", "request": "b"}"#,
                "\"b\" absent absent absent absent None",
            ),
        ] {
            assert!(DispatchFields::typed(body.as_bytes()).is_none(), "{body}");
            let mut value = None;
            let f = DispatchFields::read(body.as_bytes(), &mut value).expect("an object");
            assert_eq!(summary(&f), expected, "{body}");
        }
        // A list (which a derived struct would read by position) and a non-object.
        for body in [r#"["x", "d"]"#, "5", "not json", ""] {
            let mut value = None;
            assert!(
                DispatchFields::read(body.as_bytes(), &mut value).is_none(),
                "{body}"
            );
        }
        // A list of commands that is not valid keeps its detail.
        let body = r#"{"request": "x", "target_id": "d", "commands": [{"tool_name": 1}]}"#;
        let mut value = None;
        let f = DispatchFields::read(body.as_bytes(), &mut value).expect("an object");
        assert!(matches!(f.commands, Some(Err(_))));
    }

    #[test]
    fn the_dispatch_answer_is_written_as_serde_writes_it() {
        for id in ["s-1", "with \"quotes\" and \\", "ctl\u{1}\n", "é✓"] {
            let answer = Dispatched {
                status: "dispatched",
                session_id: id,
                task_name: "t",
                client_id: id,
            };
            assert_eq!(answer.to_json(), serde_json::to_string(&answer).unwrap());
        }
    }
}
