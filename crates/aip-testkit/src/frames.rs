//! Frames and bodies tests send.

use serde_json::{json, Value};

/// Answers one `command` frame with success results echoing the call ids.
pub fn results_for(command: &Value, client_id: &str) -> Value {
    let results: Vec<Value> = command["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| json!({"status": "success", "result": {"tool": a["tool_name"]}, "namespace": "test", "call_id": a["call_id"]}))
        .collect();
    json!({
        "type": "command_results",
        "status": "continue",
        "client_id": client_id,
        "session_id": command["session_id"],
        "prev_response_id": command["response_id"],
        "action_results": results,
    })
}

/// A one-action command list for HTTP `commands`.
pub fn commands(names: &[&str]) -> Value {
    json!(names
        .iter()
        .map(|n| json!({"tool_name": n, "tool_type": "action", "parameters": {}}))
        .collect::<Vec<_>>())
}
