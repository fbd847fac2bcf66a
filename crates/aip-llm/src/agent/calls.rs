//! The calls of one model step: reading them from the wire leniently, and matching the
//! results the caller reports back to them.

use std::collections::HashSet;

use aip_protocol::{ActionResult, ResultStatus};
use serde_json::{json, Map, Value};

use super::ToolCall;
use crate::tools::NameTable;

/// A call of the last step: either handed to the caller or answered by the loop itself.
#[derive(Debug)]
pub(super) enum Pending {
    Run(ToolCall),
    Rejected { id: String, error: String },
}

/// A failure result for call `id`.
pub(super) fn failure(id: &str, error: String) -> ActionResult {
    ActionResult {
        status: ResultStatus::Failure,
        error: Some(error),
        result: None,
        namespace: None,
        call_id: Some(id.to_owned()),
    }
}

/// The result of every call of a step, in call order: a rejected call its rejection; a
/// call that ran the result with its `call_id`, else the result at its position among
/// the calls that ran (unless that one names another call), else a failure saying no
/// result was reported. No result answers two calls.
pub(super) fn match_results(
    pending: &[Pending],
    results: &[ActionResult],
) -> Vec<(String, ActionResult)> {
    let run_ids: HashSet<&str> = pending
        .iter()
        .filter_map(|p| match p {
            Pending::Run(c) => Some(c.id.as_str()),
            Pending::Rejected { .. } => None,
        })
        .collect();
    let mut used = vec![false; results.len()];
    let mut position = 0usize;
    let mut matched = Vec::with_capacity(pending.len());
    for p in pending {
        let call = match p {
            Pending::Rejected { id, error } => {
                matched.push((id.clone(), failure(id, error.clone())));
                continue;
            }
            Pending::Run(call) => call,
        };
        let k = position;
        position += 1;
        let by_id = results
            .iter()
            .enumerate()
            .position(|(i, r)| !used[i] && r.call_id.as_deref() == Some(call.id.as_str()));
        let by_position = (k < results.len()
            && !used[k]
            && results[k]
                .call_id
                .as_deref()
                .is_none_or(|cid| !run_ids.contains(cid)))
        .then_some(k);
        let result = match by_id.or(by_position) {
            Some(i) => {
                used[i] = true;
                results[i].clone()
            }
            None => failure(&call.id, "No result was reported for this call".into()),
        };
        matched.push((call.id.clone(), result));
    }
    matched
}

/// A tool call as the model sent it.
#[derive(Debug)]
pub(super) struct RawCall {
    pub(super) id: String,
    pub(super) wire_name: String,
    pub(super) raw_arguments: String,
    pub(super) arguments: Result<Map<String, Value>, String>,
}

impl RawCall {
    pub(super) fn display_name(&self, names: &NameTable) -> String {
        names
            .original(&self.wire_name)
            .unwrap_or(&self.wire_name)
            .to_string()
    }

    pub(super) fn transcript(&self, names: &NameTable) -> Value {
        json!({
            "id": self.id,
            "name": self.display_name(names),
            "arguments": match &self.arguments {
                Ok(map) => Value::Object(map.clone()),
                Err(_) => Value::String(self.raw_arguments.clone()),
            },
        })
    }
}

/// Reads `tool_calls` leniently: missing ids are generated, repeated ids made unique, an
/// arguments object (instead of a JSON string) accepted, an empty string read as `{}`.
pub(super) fn parse_calls(raw: &[Value], step: u32) -> Vec<RawCall> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, v)| {
            let mut id = v
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{step}_{i}"));
            if !seen.insert(id.clone()) {
                id = format!("{id}_{i}");
                seen.insert(id.clone());
            }
            let kind = v.get("type").and_then(Value::as_str).unwrap_or("function");
            let function = v.get("function");
            let wire_name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let raw_args = function.and_then(|f| f.get("arguments"));
            let (raw_arguments, arguments) = match raw_args {
                _ if kind != "function" => (
                    String::new(),
                    Err(format!("unsupported tool call type '{kind}'")),
                ),
                Some(Value::String(s)) if s.trim().is_empty() => ("{}".into(), Ok(Map::new())),
                Some(Value::String(s)) => (
                    s.clone(),
                    match serde_json::from_str::<Value>(s) {
                        Ok(Value::Object(m)) => Ok(m),
                        Ok(_) => Err(format!(
                            "arguments must be a JSON object, got: {}",
                            truncate(s, 200)
                        )),
                        Err(e) => Err(format!(
                            "arguments are not valid JSON ({e}): {}",
                            truncate(s, 200)
                        )),
                    },
                ),
                Some(Value::Object(m)) => (Value::Object(m.clone()).to_string(), Ok(m.clone())),
                None | Some(Value::Null) => ("{}".into(), Ok(Map::new())),
                Some(other) => (
                    other.to_string(),
                    Err(format!("arguments must be a JSON object, got: {other}")),
                ),
            };
            RawCall {
                id,
                wire_name,
                raw_arguments,
                arguments,
            }
        })
        .collect()
}

pub(super) fn parse_finish(call: &RawCall) -> Result<(bool, String), String> {
    let args = call
        .arguments
        .as_ref()
        .map_err(|e| format!("Invalid arguments for tool 'finish': {e}"))?;
    let completed = match args.get("status").and_then(Value::as_str).map(str::trim) {
        Some("completed") => true,
        Some("failed") => false,
        other => {
            return Err(format!(
                "Invalid arguments for tool 'finish': status must be \"completed\" or \"failed\", got {}",
                other.map_or("nothing".to_string(), |s| format!("\"{s}\""))
            ))
        }
    };
    let answer = match args.get("answer") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    Ok((completed, answer))
}

/// The text the model sees for one result: `{"status", "error"?, "result"?}` as compact JSON.
pub(super) fn observation(result: &ActionResult) -> String {
    let mut obj = Map::new();
    obj.insert("status".into(), json!(result.status));
    if let Some(e) = &result.error {
        obj.insert("error".into(), json!(e));
    }
    if let Some(r) = &result.result {
        obj.insert("result".into(), r.clone());
    }
    Value::Object(obj).to_string()
}

/// Keeps the first `max` characters and appends `…[truncated N chars]`.
pub(super) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => {
            let dropped = text[cut..].chars().count();
            format!("{}…[truncated {dropped} chars]", &text[..cut])
        }
        None => text.to_string(),
    }
}
