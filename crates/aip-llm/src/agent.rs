use std::collections::HashSet;
use std::sync::Arc;

use aip_protocol::{ActionResult, Command, ResultStatus, ToolType};
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, FunctionCall, FunctionObject,
};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::client::{LlmClient, WireMessage, WireUsage};
use crate::tools::{finish_schema, wire_schema, NameTable, ToolSpec, FINISH_TOOL};
use crate::{LlmConfig, LlmError};

/// Told to the model when it answered with text only.
const NUDGE: &str =
    "You must call a tool or call `finish` (with status and answer) to end the task.";
/// Longest device information put into the system prompt.
const MAX_SYSTEM_INFO_CHARS: usize = 4_000;

/// What the loop is given for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopContext {
    /// The natural-language request (the user message).
    pub request: String,
    /// `windows`, `linux` or `macos` (decides the shell named in the system prompt).
    pub platform: String,
    /// The device's system information, shown to the model as compact JSON.
    pub system_info: Option<Value>,
    /// The device's tools (`finish` is added by the loop).
    pub tools: Vec<ToolSpec>,
}

impl LoopContext {
    /// A context with nothing in it (a placeholder while one is moved out).
    pub fn empty() -> Self {
        Self {
            request: String::new(),
            platform: String::new(),
            system_info: None,
            tools: Vec::new(),
        }
    }
}

/// One tool invocation the caller must run. `id` is the model's call id: use it as the
/// AIP `Command.call_id` so the result can be matched back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    /// The device's tool name (wire-name mapping already undone).
    pub name: String,
    pub arguments: Map<String, Value>,
}

impl ToolCall {
    /// The AIP command for this call (`call_id` = `id`).
    pub fn to_command(&self, tool_type: ToolType) -> Command {
        Command {
            tool_name: self.name.clone(),
            parameters: Some(self.arguments.clone()),
            tool_type,
            call_id: Some(self.id.clone()),
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run these calls, in order, and pass their results to the next [`AgentLoop::next`].
    Call(Vec<ToolCall>),
    /// The task is over: the model called `finish`, or the step limit was reached
    /// (`completed: false`, `Stopped after N steps without finishing`).
    Finish { completed: bool, answer: String },
}

/// A call of the last step: either handed to the caller or answered by the loop itself.
#[derive(Debug)]
enum Pending {
    Run(ToolCall),
    Rejected { id: String, error: String },
}

/// The conversation of one task with the model. Not tied to any transport: the caller runs
/// the tool calls (remotely or locally) and feeds the results back.
pub struct AgentLoop {
    client: Result<LlmClient, String>,
    config: Arc<LlmConfig>,
    names: NameTable,
    /// Wire names offered to the model, for error messages.
    offered: Vec<String>,
    tools: Vec<ChatCompletionTools>,
    messages: Vec<ChatCompletionRequestMessage>,
    pending: Option<Vec<Pending>>,
    transcript: Vec<Value>,
    steps: u32,
    finished: Option<Decision>,
}

impl std::fmt::Debug for AgentLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLoop")
            .field("config", &self.config)
            .field("steps", &self.steps)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl AgentLoop {
    /// A loop with its own HTTP client. A configuration error (e.g. a key that is not a
    /// valid header value) is reported by the first [`AgentLoop::next`].
    pub fn new(config: Arc<LlmConfig>, ctx: LoopContext) -> Self {
        let client = LlmClient::new(config.clone()).map_err(|e| e.to_string());
        Self::build(client, config, ctx)
    }

    /// A loop sharing `client` (and its connection pool) with others.
    pub fn with_client(client: LlmClient, ctx: LoopContext) -> Self {
        let config = client.config().clone();
        Self::build(Ok(client), config, ctx)
    }

    fn build(client: Result<LlmClient, String>, config: Arc<LlmConfig>, ctx: LoopContext) -> Self {
        let (names, wire) = NameTable::build(ctx.tools.iter().map(|t| t.name.as_str()));
        let mut tools: Vec<ChatCompletionTools> = ctx
            .tools
            .iter()
            .zip(&wire)
            .map(|(spec, name)| {
                function_tool(
                    name,
                    spec.description.clone(),
                    wire_schema(&spec.parameters),
                )
            })
            .collect();
        tools.push(function_tool(
            FINISH_TOOL,
            Some("End the task. Call it once the request is done (status \"completed\") or cannot be done (status \"failed\"), with a short answer for the user.".into()),
            finish_schema(),
        ));
        let mut offered = wire;
        offered.push(FINISH_TOOL.to_string());
        let messages = vec![
            ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                content: ChatCompletionRequestSystemMessageContent::Text(system_prompt(&ctx)),
                name: None,
            }),
            ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                content: ChatCompletionRequestUserMessageContent::Text(ctx.request.clone()),
                name: None,
            }),
        ];
        AgentLoop {
            client,
            config,
            names,
            offered,
            tools,
            messages,
            pending: None,
            transcript: Vec::new(),
            steps: 0,
            finished: None,
        }
    }

    /// Model calls made so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// `[{"step", "text", "tool_calls", "results", "usage", …}, …]`, one entry per model call.
    /// Extra keys when they apply: `finish` `{status, answer}`, `ignored_calls` (calls made
    /// together with `finish`), `note`.
    pub fn transcript(&self) -> Value {
        Value::Array(self.transcript.clone())
    }

    /// One decision. `results`: the `ActionResult`s of the previous [`Decision::Call`], in
    /// call order (matched to calls by `call_id == ToolCall.id` when present, else by
    /// position); `None` on the first step. Steps the caller has nothing to run for (text
    /// only, unknown tool, malformed arguments) are answered to the model within this call.
    /// After an error the conversation is intact: calling again with `None` retries.
    pub async fn next(&mut self, results: Option<Vec<ActionResult>>) -> Result<Decision, LlmError> {
        if let Some(done) = &self.finished {
            return Ok(done.clone());
        }
        let client = self.client.clone().map_err(LlmError::Config)?;
        match self.pending.take() {
            Some(pending) => self.feed_results(pending, results.unwrap_or_default()),
            None if results.as_ref().is_some_and(|r| !r.is_empty()) => {
                tracing::debug!("results passed with no pending tool calls: ignored");
            }
            None => {}
        }
        loop {
            if self.steps >= self.config.max_steps {
                let answer = format!("Stopped after {} steps without finishing", self.steps);
                tracing::info!(steps = self.steps, "LLM agent stopped: step limit reached");
                return Ok(self.finish(false, answer));
            }
            let request = self.request();
            let response = client.complete(&request).await?;
            self.steps += 1;
            let usage = response.usage;
            let message = response
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message)
                .unwrap_or_default();
            if let Some(decision) = self.take_step(message, usage) {
                return Ok(decision);
            }
        }
    }

    fn request(&self) -> CreateChatCompletionRequest {
        CreateChatCompletionRequest {
            model: self.config.model.clone(),
            messages: self.messages.clone(),
            tools: Some(self.tools.clone()),
            temperature: self.config.temperature,
            ..Default::default()
        }
    }

    fn finish(&mut self, completed: bool, answer: String) -> Decision {
        let decision = Decision::Finish { completed, answer };
        self.finished = Some(decision.clone());
        decision
    }

    /// Handles one model answer; `Some` when the caller gets a decision, `None` when the
    /// loop answered the model itself and must call it again.
    fn take_step(&mut self, message: WireMessage, usage: Option<WireUsage>) -> Option<Decision> {
        let step = self.steps;
        let text = message.text();
        let calls = parse_calls(message.tool_calls.as_deref().unwrap_or_default(), step);
        tracing::info!(
            step,
            tool_calls = calls.len(),
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            total_tokens = usage.map(|u| u.total_tokens),
            "LLM step"
        );
        if let Some(t) = &text {
            tracing::debug!(step, text = %t, "LLM text");
        }
        let mut entry = json!({
            "step": step,
            "text": text,
            "tool_calls": calls.iter().map(|c| c.transcript(&self.names)).collect::<Vec<_>>(),
            "results": [],
            "usage": usage.map(|u| json!({
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
            })),
        });

        // `finish` wins over everything else in the same answer.
        let mut finish_error = None;
        if let Some(i) = calls.iter().position(|c| c.wire_name == FINISH_TOOL) {
            match parse_finish(&calls[i]) {
                Ok((completed, answer)) => {
                    let ignored: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, c)| json!(c.display_name(&self.names)))
                        .collect();
                    entry["finish"] = json!({
                        "status": if completed { "completed" } else { "failed" },
                        "answer": answer,
                    });
                    if !ignored.is_empty() {
                        tracing::info!(
                            step,
                            ignored = ignored.len(),
                            "finish called with other tool calls: those are ignored"
                        );
                        entry["ignored_calls"] = Value::Array(ignored);
                        entry["note"] = json!(
                            "finish was called together with other tool calls; they were ignored"
                        );
                    }
                    self.transcript.push(entry);
                    tracing::info!(step, completed, "LLM agent finished");
                    return Some(self.finish(completed, answer));
                }
                Err(e) => finish_error = Some((i, e)),
            }
        }

        let pending: Vec<Pending> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| match &finish_error {
                Some((j, e)) if *j == i => Pending::Rejected {
                    id: c.id.clone(),
                    error: e.clone(),
                },
                _ => self.check(c),
            })
            .collect();
        self.messages.push(assistant_message(text, &calls));

        if pending.is_empty() {
            entry["note"] = json!("no tool call: the model was told to call a tool or finish");
            self.transcript.push(entry);
            self.messages.push(ChatCompletionRequestMessage::User(
                ChatCompletionRequestUserMessage {
                    content: ChatCompletionRequestUserMessageContent::Text(NUDGE.into()),
                    name: None,
                },
            ));
            return None;
        }
        self.transcript.push(entry);
        let runs: Vec<ToolCall> = pending
            .iter()
            .filter_map(|p| match p {
                Pending::Run(c) => Some(c.clone()),
                Pending::Rejected { .. } => None,
            })
            .collect();
        if runs.is_empty() {
            self.feed_results(pending, Vec::new());
            return None;
        }
        self.pending = Some(pending);
        Some(Decision::Call(runs))
    }

    fn check(&self, call: &RawCall) -> Pending {
        let reject = |error: String| Pending::Rejected {
            id: call.id.clone(),
            error,
        };
        let Some(name) = self.names.original(&call.wire_name) else {
            return reject(format!(
                "Unknown tool '{}'. Available tools: {}.",
                call.wire_name,
                self.offered.join(", ")
            ));
        };
        match &call.arguments {
            Ok(arguments) => Pending::Run(ToolCall {
                id: call.id.clone(),
                name: name.to_string(),
                arguments: arguments.clone(),
            }),
            Err(e) => reject(format!(
                "Invalid arguments for tool '{}': {e}",
                call.wire_name
            )),
        }
    }

    /// Answers every call of the last step with one `tool` message, in call order.
    fn feed_results(&mut self, pending: Vec<Pending>, results: Vec<ActionResult>) {
        let run_ids: HashSet<&str> = pending
            .iter()
            .filter_map(|p| match p {
                Pending::Run(c) => Some(c.id.as_str()),
                Pending::Rejected { .. } => None,
            })
            .collect();
        let mut used = vec![false; results.len()];
        let mut recorded = Vec::new();
        let mut position = 0usize;
        for p in &pending {
            let (id, result) = match p {
                Pending::Rejected { id, error } => (
                    id.clone(),
                    ActionResult {
                        status: ResultStatus::Failure,
                        error: Some(error.clone()),
                        result: None,
                        namespace: None,
                        call_id: Some(id.clone()),
                    },
                ),
                Pending::Run(call) => {
                    let k = position;
                    position += 1;
                    let by_id = results.iter().enumerate().position(|(i, r)| {
                        !used[i] && r.call_id.as_deref() == Some(call.id.as_str())
                    });
                    let by_position = (k < results.len()
                        && !used[k]
                        && results[k]
                            .call_id
                            .as_deref()
                            .is_none_or(|cid| !run_ids.contains(cid)))
                    .then_some(k);
                    match by_id.or(by_position) {
                        Some(i) => {
                            used[i] = true;
                            (call.id.clone(), results[i].clone())
                        }
                        None => (
                            call.id.clone(),
                            ActionResult {
                                status: ResultStatus::Failure,
                                error: Some("No result was reported for this call".into()),
                                result: None,
                                namespace: None,
                                call_id: Some(call.id.clone()),
                            },
                        ),
                    }
                }
            };
            let content = truncate(&observation(&result), self.config.max_observation_chars);
            self.messages.push(ChatCompletionRequestMessage::Tool(
                ChatCompletionRequestToolMessage {
                    content: ChatCompletionRequestToolMessageContent::Text(content),
                    tool_call_id: id,
                },
            ));
            recorded.push(serde_json::to_value(&result).unwrap_or(Value::Null));
        }
        if let Some(last) = self.transcript.last_mut() {
            last["results"] = Value::Array(recorded);
        }
    }
}

fn function_tool(
    name: &str,
    description: Option<String>,
    parameters: Value,
) -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: name.to_string(),
            description,
            parameters: Some(parameters),
            strict: None,
        },
    })
}

fn assistant_message(text: Option<String>, calls: &[RawCall]) -> ChatCompletionRequestMessage {
    let tool_calls = (!calls.is_empty()).then(|| {
        calls
            .iter()
            .map(|c| {
                ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                    id: c.id.clone(),
                    function: FunctionCall {
                        name: c.wire_name.clone(),
                        // Malformed arguments are not replayed (providers may reject them);
                        // the tool message tells the model what was wrong.
                        arguments: match &c.arguments {
                            Ok(_) => c.raw_arguments.clone(),
                            Err(_) => "{}".into(),
                        },
                    },
                })
            })
            .collect()
    });
    let content = match (&text, &tool_calls) {
        (Some(t), _) => Some(ChatCompletionRequestAssistantMessageContent::Text(
            t.clone(),
        )),
        (None, None) => Some(ChatCompletionRequestAssistantMessageContent::Text(
            String::new(),
        )),
        (None, Some(_)) => None,
    };
    ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
        content,
        tool_calls,
        ..Default::default()
    })
}

/// A tool call as the model sent it.
#[derive(Debug)]
struct RawCall {
    id: String,
    wire_name: String,
    raw_arguments: String,
    arguments: Result<Map<String, Value>, String>,
}

impl RawCall {
    fn display_name(&self, names: &NameTable) -> String {
        names
            .original(&self.wire_name)
            .unwrap_or(&self.wire_name)
            .to_string()
    }

    fn transcript(&self, names: &NameTable) -> Value {
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
fn parse_calls(raw: &[Value], step: u32) -> Vec<RawCall> {
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

fn parse_finish(call: &RawCall) -> Result<(bool, String), String> {
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
fn observation(result: &ActionResult) -> String {
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
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => {
            let dropped = text[cut..].chars().count();
            format!("{}…[truncated {dropped} chars]", &text[..cut])
        }
        None => text.to_string(),
    }
}

fn shell(platform: &str) -> (&'static str, &'static str) {
    match platform.trim().to_ascii_lowercase().as_str() {
        "windows" | "win32" | "win" => ("Windows", "PowerShell"),
        "macos" | "darwin" | "mac" | "osx" => ("macOS", "zsh"),
        "linux" => ("Linux", "bash"),
        _ => ("an unknown operating system", "the system shell"),
    }
}

fn system_prompt(ctx: &LoopContext) -> String {
    let (os, shell) = shell(&ctx.platform);
    let info = ctx
        .system_info
        .as_ref()
        .map(|v| truncate(&v.to_string(), MAX_SYSTEM_INFO_CHARS))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "You are an agent that carries out the user's request on a {os} computer (platform: {platform}). \
         Shell commands on this device run in {shell}: write them for {shell}.\n\
         Device information: {info}\n\n\
         Rules:\n\
         - Act only through the provided tools; you see each tool's result in the next message.\n\
         - Work step by step: check the results before going on, and recover from errors when you can.\n\
         - Do not ask the user questions; nobody answers them.\n\
         - End by calling `finish`: status \"completed\" with the answer or a summary of what was done, \
           or status \"failed\" with the reason. Never end with a plain text reply.",
        platform = ctx.platform,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_marks_dropped_chars() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 2), "ab…[truncated 4 chars]");
        assert_eq!(truncate("ééé", 1), "é…[truncated 2 chars]");
    }

    #[test]
    fn shells_by_platform() {
        assert_eq!(shell("linux").1, "bash");
        assert_eq!(shell("Windows").1, "PowerShell");
        assert_eq!(shell("macos").1, "zsh");
    }

    #[test]
    fn lenient_call_parsing() {
        let calls = parse_calls(
            &[
                json!({"id": "a", "type": "function", "function": {"name": "x", "arguments": ""}}),
                json!({"id": "a", "function": {"name": "x", "arguments": {"k": 1}}}),
                json!({"function": {"name": "x", "arguments": "[1]"}}),
                json!({"id": "c", "function": {"name": "x", "arguments": "{oops"}}),
            ],
            3,
        );
        assert_eq!(calls[0].arguments, Ok(Map::new()));
        assert_eq!(calls[1].id, "a_1");
        assert_eq!(calls[1].arguments.as_ref().map(|m| m.len()), Ok(1));
        assert_eq!(calls[2].id, "call_3_2");
        assert!(calls[2].arguments.is_err());
        assert!(calls[3].arguments.is_err());
    }
}
