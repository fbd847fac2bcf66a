//! AIP envelopes and building blocks (protocol.md §2).
//!
//! Parsing is strict the way the reference's pydantic models are: required fields,
//! exact lowercase enum values, no coercion between JSON types. Unknown fields are
//! ignored, `null` equals absent, and a duplicated key keeps its last value.
//! Serialisation emits every field in declaration order with `null` for unset ones,
//! which reproduces the reference bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::wire_now;

/// Kinds of message a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMessageType {
    Task,
    Heartbeat,
    CommandResults,
    Error,
    Register,
    TaskEnd,
    DeviceInfoRequest,
    DeviceInfoResponse,
}

impl ClientMessageType {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Heartbeat => "heartbeat",
            Self::CommandResults => "command_results",
            Self::Error => "error",
            Self::Register => "register",
            Self::TaskEnd => "task_end",
            Self::DeviceInfoRequest => "device_info_request",
            Self::DeviceInfoResponse => "device_info_response",
        }
    }
}

/// Kinds of message the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMessageType {
    Task,
    Heartbeat,
    TaskEnd,
    Command,
    Error,
    DeviceInfoRequest,
    DeviceInfoResponse,
}

impl ServerMessageType {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Heartbeat => "heartbeat",
            Self::TaskEnd => "task_end",
            Self::Command => "command",
            Self::Error => "error",
            Self::DeviceInfoRequest => "device_info_request",
            Self::DeviceInfoResponse => "device_info_response",
        }
    }
}

/// Task / message status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Continue,
    Completed,
    Failed,
    Ok,
    Error,
}

impl TaskStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// Role a client registers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    #[default]
    Device,
    Constellation,
}

impl ClientType {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Constellation => "constellation",
        }
    }
}

/// Outcome of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Success,
    Failure,
    Skipped,
    None,
}

/// Tool family of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolType {
    DataCollection,
    Action,
}

/// One tool invocation (element of `ServerMessage.actions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub tool_name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub tool_type: ToolType,
    #[serde(default)]
    pub call_id: Option<String>,
}

/// Outcome of one command (element of `ClientMessage.action_results`; `Result` on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    pub status: ResultStatus,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub call_id: Option<String>,
}

impl ActionResult {
    /// Why this action failed, or `None` when it did not. A `failure` status fails with its
    /// `error`; so does a `success` whose `result` is an object with `success: false` — the
    /// reference's MCP servers (e.g. its Linux `execute_command`) report a non-zero exit or
    /// a refused command that way. The text names the exit code or the tool's error.
    pub fn failure_text(&self) -> Option<String> {
        match self.status {
            ResultStatus::Failure => Some(self.error.clone().unwrap_or_default()),
            ResultStatus::Skipped | ResultStatus::None => None,
            ResultStatus::Success => {
                let obj = self.result.as_ref()?.as_object()?;
                if obj.get("success") != Some(&Value::Bool(false)) {
                    return None;
                }
                let text = |k: &str| {
                    obj.get(k)
                        .and_then(Value::as_str)
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                };
                let detail = text("error")
                    .or_else(|| text("message"))
                    .or_else(|| text("stderr").and_then(|s| s.lines().next()))
                    .map(|d| d.chars().take(500).collect::<String>());
                Some(
                    match (obj.get("exit_code").and_then(Value::as_i64), detail) {
                        (Some(code), Some(detail)) => format!("exited with code {code}: {detail}"),
                        (Some(code), None) => format!("exited with code {code}"),
                        (None, Some(detail)) => detail,
                        (None, None) => "reported success: false".to_owned(),
                    },
                )
            }
        }
    }
}

/// The reference's meta-tool that lists a device's tools (`ufo/client/computer.py`).
pub const LIST_TOOLS: &str = "list_tools";

/// A tool's `tool_key` as the reference device makes it: `action::execute_command`.
pub fn tool_key(tool_type: &str, tool_name: &str) -> String {
    format!("{tool_type}::{tool_name}")
}

/// Description of a device tool (protocol.md §2.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpToolInfo {
    pub tool_key: String,
    pub tool_name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub namespace: String,
    pub tool_type: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Map<String, Value>>,
    #[serde(default)]
    pub output_schema: Option<Map<String, Value>>,
    #[serde(default)]
    pub meta: Option<Map<String, Value>>,
    #[serde(default)]
    pub annotations: Option<Map<String, Value>>,
}

/// Client → server envelope (protocol.md §2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientMessage {
    #[serde(rename = "type")]
    pub kind: ClientMessageType,
    pub status: TaskStatus,
    /// `None` (absent or `null`) means `device`; use [`ClientMessage::role`].
    #[serde(default)]
    pub client_type: Option<ClientType>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub task_name: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub target_id: Option<String>,
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub action_results: Option<Vec<ActionResult>>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub prev_response_id: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

impl ClientMessage {
    /// A message of `kind` with `status` and every optional field unset.
    pub fn new(kind: ClientMessageType, status: TaskStatus) -> Self {
        Self {
            kind,
            status,
            client_type: None,
            session_id: None,
            task_name: None,
            client_id: None,
            target_id: None,
            request: None,
            action_results: None,
            timestamp: Some(wire_now()),
            request_id: None,
            prev_response_id: None,
            error: None,
            metadata: None,
        }
    }

    /// The claimed role (`client_type`, defaulting to `device`).
    pub fn role(&self) -> ClientType {
        self.client_type.unwrap_or_default()
    }

    /// Compact JSON, every field present.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// Server → client envelope (protocol.md §2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMessage {
    #[serde(rename = "type")]
    pub kind: ServerMessageType,
    pub status: TaskStatus,
    #[serde(default)]
    pub user_request: Option<String>,
    #[serde(default)]
    pub agent_name: Option<String>,
    #[serde(default)]
    pub process_name: Option<String>,
    #[serde(default)]
    pub root_name: Option<String>,
    #[serde(default)]
    pub actions: Option<Vec<Command>>,
    #[serde(default)]
    pub messages: Option<Vec<String>>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub task_name: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
}

impl ServerMessage {
    /// A message with a fresh `response_id` and the current timestamp.
    pub fn new(kind: ServerMessageType, status: TaskStatus) -> Self {
        Self {
            kind,
            status,
            user_request: None,
            agent_name: None,
            process_name: None,
            root_name: None,
            actions: None,
            messages: None,
            error: None,
            session_id: None,
            task_name: None,
            timestamp: Some(wire_now()),
            response_id: Some(uuid::Uuid::new_v4().to_string()),
            result: None,
        }
    }

    /// `heartbeat`/`ok`: registration accepted, or heartbeat acknowledged.
    pub fn heartbeat_ok() -> Self {
        Self::new(ServerMessageType::Heartbeat, TaskStatus::Ok)
    }

    /// `heartbeat`/`ok` accepting a registration, with the server's self-description
    /// in `result` (see [`crate::features`]).
    pub fn registration_ack(server_info: Value) -> Self {
        let mut m = Self::heartbeat_ok();
        m.result = Some(server_info);
        m
    }

    /// `heartbeat`/`ok` carrying the session id: task accepted.
    pub fn task_ack(session_id: &str) -> Self {
        let mut m = Self::heartbeat_ok();
        m.session_id = Some(session_id.to_owned());
        m
    }

    /// `error`/`error` with a text.
    /// The text is cut to [`crate::errors::MAX_ECHO`] bytes: an error may echo a client's
    /// input (its own `error`, a target id, a parser's excerpt).
    pub fn error(text: impl Into<String>) -> Self {
        let mut m = Self::new(ServerMessageType::Error, TaskStatus::Error);
        m.error = Some(crate::errors::clip_echo(text.into()));
        m
    }

    /// `task`/`continue`: a task assignment pushed to a device.
    pub fn task_assignment(
        session_id: &str,
        task_name: &str,
        request: &str,
        agent_name: Option<&str>,
    ) -> Self {
        let mut m = Self::new(ServerMessageType::Task, TaskStatus::Continue);
        m.user_request = Some(request.to_owned());
        m.agent_name = agent_name.map(str::to_owned);
        m.session_id = Some(session_id.to_owned());
        m.task_name = Some(task_name.to_owned());
        m
    }

    /// `task_end` with `completed` or `failed`.
    pub fn task_end(
        session_id: &str,
        task_name: &str,
        completed: bool,
        result: Option<Value>,
        error: Option<String>,
    ) -> Self {
        let status = if completed {
            TaskStatus::Completed
        } else {
            TaskStatus::Failed
        };
        let mut m = Self::new(ServerMessageType::TaskEnd, status);
        m.session_id = Some(session_id.to_owned());
        m.task_name = Some(task_name.to_owned());
        m.result = result;
        m.error = error;
        m
    }

    /// `device_info_response`/`ok`; its `response_id` echoes the request's `request_id`.
    pub fn device_info_response(request_id: Option<String>, result: Value) -> Self {
        let mut m = Self::new(ServerMessageType::DeviceInfoResponse, TaskStatus::Ok);
        m.response_id = request_id;
        m.result = Some(result);
        m
    }

    /// Compact JSON, every field present in declaration order: byte for byte what
    /// `serde_json::to_string` writes (tests compare the two), written directly because
    /// every frame the server sends goes through here and serde_json scans each string,
    /// keys included, a byte at a time for characters to escape.
    pub fn to_json(&self) -> String {
        // The string fields before `actions` and `messages`, and those after them.
        let head = [
            ("user_request", &self.user_request),
            ("agent_name", &self.agent_name),
            ("process_name", &self.process_name),
            ("root_name", &self.root_name),
        ];
        let tail = [
            ("error", &self.error),
            ("session_id", &self.session_id),
            ("task_name", &self.task_name),
            ("timestamp", &self.timestamp),
            ("response_id", &self.response_id),
        ];
        // Room for the keys, the nulls and the plain strings.
        let strings: usize = head
            .iter()
            .chain(&tail)
            .map(|(_, v)| v.as_deref().map_or(0, str::len))
            .sum();
        let mut out = String::with_capacity(256 + strings);
        out.push_str("{\"type\":\"");
        out.push_str(self.kind.as_str());
        out.push_str("\",\"status\":\"");
        out.push_str(self.status.as_str());
        out.push('"');
        for (key, value) in head {
            push_field(&mut out, key, value.as_deref());
        }
        push_serialized(&mut out, "actions", self.actions.as_ref());
        push_key(&mut out, "messages");
        match &self.messages {
            Some(messages) => {
                out.push('[');
                for (i, m) in messages.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_json_str(&mut out, m);
                }
                out.push(']');
            }
            None => out.push_str("null"),
        }
        for (key, value) in tail {
            push_field(&mut out, key, value.as_deref());
        }
        push_serialized(&mut out, "result", self.result.as_ref());
        out.push('}');
        out
    }
}

/// Appends `,"key":` (keys are ASCII names with nothing to escape).
fn push_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
}

/// Appends `,"key":value`, the value serialised by serde_json, or `null`.
fn push_serialized<T: Serialize>(out: &mut String, key: &str, value: Option<&T>) {
    push_key(out, key);
    match value {
        Some(v) => out.push_str(&to_json(v)),
        None => out.push_str("null"),
    }
}

/// Appends `,"key":value`, the value a JSON string or `null`.
fn push_field(out: &mut String, key: &str, value: Option<&str>) {
    push_key(out, key);
    match value {
        Some(v) => push_json_str(out, v),
        None => out.push_str("null"),
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it (control
/// characters, `"` and `\\`; nothing else). Ids, names and timestamps have nothing to
/// escape and are copied whole; anything else is left to serde_json.
pub fn push_json_str(out: &mut String, s: &str) {
    // No early exit: the compiler turns this into a vector loop.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&to_json(&s));
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // These types only hold string-keyed maps, so serialisation cannot fail.
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"serialisation_error\":\"{e}\"}}"))
}

pub use crate::parse::{parse_client_message, parse_strict, ParseError};

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn result(status: ResultStatus, error: Option<&str>, result: Value) -> ActionResult {
        ActionResult {
            status,
            error: error.map(str::to_owned),
            result: Some(result),
            namespace: None,
            call_id: None,
        }
    }

    #[test]
    fn failure_text_reads_the_status_and_a_result_that_says_success_false() {
        let ok = result(
            ResultStatus::Success,
            None,
            json!({"success": true, "exit_code": 0}),
        );
        assert_eq!(ok.failure_text(), None);
        assert_eq!(
            result(ResultStatus::Success, None, json!("text")).failure_text(),
            None
        );
        assert_eq!(
            result(ResultStatus::Skipped, Some("s"), Value::Null).failure_text(),
            None
        );
        assert_eq!(
            result(ResultStatus::Failure, Some("boom"), Value::Null)
                .failure_text()
                .as_deref(),
            Some("boom")
        );
        let cases = [
            (
                json!({"success": false, "exit_code": 2, "stderr": "no such file\nmore"}),
                "exited with code 2: no such file",
            ),
            (
                json!({"success": false, "exit_code": 1, "stderr": ""}),
                "exited with code 1",
            ),
            (
                json!({"success": false, "error": "Timeout after 30s."}),
                "Timeout after 30s.",
            ),
            (
                json!({"success": false, "message": "Text is empty"}),
                "Text is empty",
            ),
            (json!({"success": false}), "reported success: false"),
        ];
        for (r, want) in cases {
            assert_eq!(
                result(ResultStatus::Success, None, r.clone())
                    .failure_text()
                    .as_deref(),
                Some(want),
                "{r}"
            );
        }
    }

    use super::*;

    #[test]
    fn server_messages_are_written_as_serde_writes_them() {
        let mut awkward: Vec<String> = [
            "",
            "plain-id_0.9",
            "quote \" backslash \\ slash / done",
            "controls \n\r\t\u{8}\u{c}\u{0}\u{1f} del \u{7f}",
            "unicode é ✓ 🦀 \u{2028}",
            "</script>",
        ]
        .map(String::from)
        .into();
        // Every character serde_json escapes, alone in a string, and its neighbours.
        awkward.extend(
            (0u8..=0x20)
                .chain([b'"', b'\\', b'/', 0x7f])
                .map(|b| format!("a{}b", b as char)),
        );
        let mut cases = vec![
            ServerMessage::heartbeat_ok(),
            ServerMessage::task_ack("6f1c2e0a-3b7d-4c55-9a9e-1d2f3a4b5c6d"),
            ServerMessage::task_assignment("s", "t", "open notepad", Some("agent")),
            ServerMessage::task_end(
                "s",
                "t",
                false,
                Some(serde_json::json!({"a": [1, 2.5, null]})),
                Some("boom".into()),
            ),
            ServerMessage::device_info_response(None, serde_json::json!("x\ny")),
        ];
        for text in &awkward {
            let text = text.as_str();
            let mut m = ServerMessage::error(text);
            m.user_request = Some(text.into());
            m.agent_name = Some(text.into());
            m.process_name = Some(text.into());
            m.root_name = Some(text.into());
            m.messages = Some(vec![text.into(), String::new(), text.into()]);
            m.session_id = Some(text.into());
            m.task_name = Some(text.into());
            m.timestamp = Some(text.into());
            m.response_id = Some(text.into());
            m.result = Some(serde_json::json!({ text: text }));
            m.actions = Some(vec![Command {
                tool_name: text.into(),
                parameters: Some(serde_json::Map::from_iter([(
                    text.to_owned(),
                    Value::from(text),
                )])),
                tool_type: ToolType::Action,
                call_id: Some(text.into()),
            }]);
            cases.push(m);
        }
        let mut empty = ServerMessage::heartbeat_ok();
        empty.messages = Some(Vec::new());
        empty.actions = Some(Vec::new());
        empty.timestamp = None;
        empty.response_id = None;
        cases.push(empty);
        for m in cases {
            let want = serde_json::to_string(&m).expect("serialise");
            assert_eq!(m.to_json(), want);
        }
    }

    #[test]
    fn null_client_type_means_device() {
        let m = parse_client_message(r#"{"type":"heartbeat","status":"ok","client_type":null}"#)
            .expect("valid");
        assert_eq!(m.role(), ClientType::Device);
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth_by_structure() {
        assert!(crate::parse::has_duplicate_keys(r#"{"a":1,"a":2}"#));
        assert!(crate::parse::has_duplicate_keys(
            r#"{"x":[{"b":1,"\u0062":2}]}"#
        ));
        assert!(!crate::parse::has_duplicate_keys(
            r#"{"a":{"a":1},"b":[{"a":2},{"a":3}]}"#
        ));
        assert!(!crate::parse::has_duplicate_keys("not json"));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        let m = parse_client_message(
            r#"{"type":"heartbeat","status":"ok","client_id":"a","client_id":"b"}"#,
        )
        .expect("valid");
        assert_eq!(m.client_id.as_deref(), Some("b"));
    }

    #[test]
    fn strict_types_and_enums() {
        for bad in [
            r#"{"type":"TASK","status":"ok"}"#,
            r#"{"type":"task"}"#,
            r#"{"type":"task","status":"ok","client_id":5}"#,
            r#"{"type":"task","status":"ok","metadata":[]}"#,
            r#"{"type":"command_results","status":"ok","action_results":[{"error":"x"}]}"#,
            r#"[1,2]"#,
            r#"{"type":"task","status":"ok""#,
            r#"{"type":"task","status":"ok"} trailing"#,
        ] {
            assert!(parse_client_message(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn error_detail_names_the_field() {
        let e = parse_client_message(r#"{"type":"bogus","status":"ok"}"#).expect_err("invalid");
        assert!(
            e.detail.starts_with("type: unknown variant"),
            "{}",
            e.detail
        );
    }
}
