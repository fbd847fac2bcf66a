use std::collections::{HashMap, HashSet};

use aip_protocol::McpToolInfo;
use serde_json::{json, Map, Value};

/// The tool the model calls to end the task: `{status: "completed"|"failed", answer: string}`.
pub const FINISH_TOOL: &str = "finish";

/// OpenAI's limit on function names (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_NAME_LEN: usize = 64;

/// A tool the model may call, as the device names it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The device's tool name (what goes into `Command.tool_name`); any string — names the
    /// model cannot use (e.g. `demo.echo`) are mapped for the wire and back.
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments (an object schema; anything else is replaced by an
    /// empty object schema when offered to the model).
    pub parameters: Value,
    /// The tool family the device advertised (`action` / `data_collection`), when known:
    /// what the caller puts into `Command.tool_type`.
    pub tool_type: Option<String>,
}

impl ToolSpec {
    pub fn new(name: impl Into<String>, description: Option<String>, parameters: Value) -> Self {
        ToolSpec {
            name: name.into(),
            description,
            parameters,
            tool_type: None,
        }
    }

    /// From an MCPToolInfo (protocol.md §2.5): `tool_name`, `description` (else `title`),
    /// `input_schema`.
    pub fn from_tool_info(info: &McpToolInfo) -> ToolSpec {
        ToolSpec {
            name: info.tool_name.clone(),
            description: info.description.clone().or_else(|| info.title.clone()),
            parameters: info
                .input_schema
                .clone()
                .map(Value::Object)
                .unwrap_or_else(empty_schema),
            tool_type: Some(info.tool_type.clone()),
        }
    }

    /// From the JSON list a device advertised in its registration `metadata.tools`
    /// (MCPToolInfo objects; `name` / `parameters` / `inputSchema` spellings are accepted
    /// too). Malformed entries (not an object, no non-empty name) and repeated names are
    /// skipped; anything but a list gives no tools.
    pub fn from_advertised(v: &Value) -> Vec<ToolSpec> {
        let Some(list) = v.as_array() else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for entry in list {
            let Some(obj) = entry.as_object() else {
                continue;
            };
            let name = ["tool_name", "name"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_str))
                .map(str::trim)
                .filter(|n| !n.is_empty());
            let Some(name) = name else {
                continue;
            };
            if !seen.insert(name.to_string()) {
                continue;
            }
            let description = ["description", "title"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_str))
                .map(str::to_string);
            let parameters = ["input_schema", "parameters", "inputSchema"]
                .iter()
                .find_map(|k| obj.get(*k).filter(|s| s.is_object()))
                .cloned()
                .unwrap_or_else(empty_schema);
            let tool_type = obj
                .get("tool_type")
                .and_then(Value::as_str)
                .map(str::to_string);
            out.push(ToolSpec {
                name: name.to_string(),
                description,
                parameters,
                tool_type,
            });
        }
        out
    }
}

pub(crate) fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

/// The schema offered to the model: always an object schema.
pub(crate) fn wire_schema(parameters: &Value) -> Value {
    let Some(obj) = parameters.as_object() else {
        return empty_schema();
    };
    let mut obj: Map<String, Value> = obj.clone();
    obj.entry("type").or_insert_with(|| json!("object"));
    if obj.get("type").and_then(Value::as_str) != Some("object") {
        return empty_schema();
    }
    obj.entry("properties").or_insert_with(|| json!({}));
    Value::Object(obj)
}

pub(crate) fn finish_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {
                "type": "string",
                "enum": ["completed", "failed"],
                "description": "completed if the task was done, failed if it could not be done"
            },
            "answer": {
                "type": "string",
                "description": "The final answer or summary for the user (what was done, or why it failed)"
            }
        },
        "required": ["status", "answer"]
    })
}

/// Wire name ↔ device name table. `finish` is reserved; collisions get `_2`, `_3`, ….
#[derive(Debug, Clone, Default)]
pub(crate) struct NameTable {
    to_original: HashMap<String, String>,
}

impl NameTable {
    /// Assigns wire names in order; returns them (same order as `names`).
    pub(crate) fn build<'a>(names: impl IntoIterator<Item = &'a str>) -> (NameTable, Vec<String>) {
        let mut used: HashSet<String> = HashSet::from([FINISH_TOOL.to_string()]);
        let mut table = NameTable::default();
        let mut wire = Vec::new();
        for original in names {
            let base = sanitize(original);
            let mut candidate = base.clone();
            let mut n = 2u32;
            while used.contains(&candidate) {
                let suffix = format!("_{n}");
                let keep = base.len().min(MAX_NAME_LEN - suffix.len());
                candidate = format!("{}{suffix}", &base[..keep]);
                n += 1;
            }
            used.insert(candidate.clone());
            table
                .to_original
                .insert(candidate.clone(), original.to_string());
            wire.push(candidate);
        }
        (table, wire)
    }

    pub(crate) fn original(&self, wire: &str) -> Option<&str> {
        self.to_original.get(wire).map(String::as_str)
    }
}

/// `demo.echo` → `demo__echo`; other characters outside `[a-zA-Z0-9_-]` → `_`; ≤ 64 chars.
fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => out.push(c),
            '.' => out.push_str("__"),
            _ => out.push('_'),
        }
    }
    if out.is_empty() {
        out.push_str("tool");
    }
    // ASCII only from here on, so byte truncation is safe.
    out.truncate(MAX_NAME_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn names_are_mapped_and_unique() {
        let long = "x".repeat(100);
        let names = [
            "execute_command",
            "demo.echo",
            "demo__echo",
            "finish",
            "ünï cödé",
            "",
            long.as_str(),
            long.as_str(),
        ];
        let (table, wire) = NameTable::build(names.iter().copied());
        assert_eq!(wire[0], "execute_command");
        assert_eq!(wire[1], "demo__echo");
        assert_eq!(wire[2], "demo__echo_2");
        assert_eq!(wire[3], "finish_2");
        let unique: HashSet<_> = wire.iter().collect();
        assert_eq!(unique.len(), wire.len());
        for (w, o) in wire.iter().zip(names) {
            assert!(valid(w), "{w}");
            assert_eq!(table.original(w), Some(o));
        }
        assert_eq!(table.original("finish"), None);
    }

    #[test]
    fn advertised_tools_skip_malformed_entries() {
        let v = json!([
            {"tool_key": "action::execute_command", "tool_name": "execute_command", "namespace": "aip",
             "tool_type": "action", "description": "Run a shell command",
             "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
            {"name": "demo.echo", "parameters": {"type": "object"}},
            {"tool_name": ""},
            {"description": "no name"},
            "not an object",
            {"tool_name": "execute_command"}
        ]);
        let tools = ToolSpec::from_advertised(&v);
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[0].name, "execute_command");
        assert_eq!(tools[0].tool_type.as_deref(), Some("action"));
        assert_eq!(
            tools[0].parameters["properties"]["command"]["type"],
            "string"
        );
        assert_eq!(tools[1].name, "demo.echo");
        assert_eq!(wire_schema(&tools[1].parameters), empty_schema());
        assert!(ToolSpec::from_advertised(&json!({"a": 1})).is_empty());
    }

    #[test]
    fn tool_info_conversion() {
        let info: McpToolInfo = serde_json::from_value(json!({
            "tool_key": "action::type_text", "tool_name": "type_text", "namespace": "HostUIExecutor",
            "tool_type": "action", "description": "Type text.",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let spec = ToolSpec::from_tool_info(&info);
        assert_eq!(spec.name, "type_text");
        assert_eq!(spec.description.as_deref(), Some("Type text."));
        assert_eq!(spec.parameters["required"][0], "text");
        assert_eq!(wire_schema(&json!("bad")), empty_schema());
    }
}
