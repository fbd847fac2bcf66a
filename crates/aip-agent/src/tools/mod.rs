//! Tools a device offers: the [`Tool`] trait, and the [`ToolSet`] that resolves a
//! `Command` to a tool, applies the operator's policy and turns every outcome — success,
//! failure, refusal, panic, hang — into one AIP `Result`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::{tool_key, ActionResult, Command, McpToolInfo, ResultStatus, LIST_TOOLS};
use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio_util::task::AbortOnDropHandle;

pub mod builtin;
pub mod mcp;

/// What a tool call produced.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutcome {
    /// `status: success` with this `result`.
    Success(Value),
    /// `status: failure` with this `error`, and an optional `result` (e.g. partial output).
    Failure {
        error: String,
        result: Option<Value>,
    },
}

impl ToolOutcome {
    /// A failure without a result.
    pub fn fail(error: impl Into<String>) -> Self {
        Self::Failure {
            error: error.into(),
            result: None,
        }
    }
}

/// One callable tool.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// How the tool is advertised in `metadata.tools` (MCPToolInfo shape).
    fn info(&self) -> McpToolInfo;
    /// Runs the tool. `params` is the command's `parameters` (empty when absent).
    async fn call(&self, params: Map<String, Value>) -> ToolOutcome;
}

/// Decides whether a call may run; `Err` carries the refusal text naming the rule.
pub trait Policy: Send + Sync + 'static {
    /// Checked before every call with the resolved tool name and its parameters.
    fn check(&self, tool_name: &str, params: &Map<String, Value>) -> Result<(), String>;
}

/// Allows everything.
pub struct AllowAll;

impl Policy for AllowAll {
    fn check(&self, _: &str, _: &Map<String, Value>) -> Result<(), String> {
        Ok(())
    }
}

/// The tools of one device, by name.
pub struct ToolSet {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    /// Short names that resolve to a qualified one (`tool` → `server.tool`).
    aliases: BTreeMap<String, String>,
    policy: Arc<dyn Policy>,
    /// Upper bound for any single call; a tool that hangs longer fails.
    call_limit: Duration,
}

impl ToolSet {
    /// An empty set under `policy`.
    pub fn new(policy: Arc<dyn Policy>, call_limit: Duration) -> Self {
        Self {
            tools: BTreeMap::new(),
            aliases: BTreeMap::new(),
            policy,
            call_limit,
        }
    }

    /// Adds a tool under its `tool_name`.
    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        let name = tool.info().tool_name;
        self.tools.insert(name, tool);
    }

    /// Adds a tool under `qualified` (e.g. `server.tool`) and makes `short` resolve to it
    /// unless `short` is already taken (then the short name stays ambiguous and unused).
    pub fn add_qualified(&mut self, qualified: String, short: String, tool: Arc<dyn Tool>) {
        self.tools.insert(qualified.clone(), tool);
        if self.tools.contains_key(&short) {
            return;
        }
        match self.aliases.get(&short) {
            Some(existing) if existing != &qualified => {
                // Ambiguous: two servers offer it; only qualified names work.
                self.aliases.insert(short, String::new());
            }
            Some(_) => {}
            None => {
                self.aliases.insert(short, qualified);
            }
        }
    }

    /// The tool a name resolves to, with its canonical name.
    pub fn resolve(&self, name: &str) -> Option<(&str, &Arc<dyn Tool>)> {
        if let Some((k, t)) = self.tools.get_key_value(name) {
            return Some((k.as_str(), t));
        }
        let target = self.aliases.get(name).filter(|t| !t.is_empty())?;
        self.tools
            .get_key_value(target)
            .map(|(k, t)| (k.as_str(), t))
    }

    /// The advertisement of every tool the policy lets run, for `metadata.tools` and
    /// `list_tools`: `tool_name` is the name a command uses, `tool_key` is
    /// `<tool_type>::<tool_name>` as the reference device makes it.
    pub fn infos(&self) -> Vec<McpToolInfo> {
        let no_params = Map::new();
        self.tools
            .iter()
            .filter(|(name, _)| self.policy.check(name, &no_params).is_ok())
            .map(|(name, t)| {
                let mut info = t.info();
                info.tool_key = tool_key(&info.tool_type, name);
                info.tool_name = name.clone();
                info
            })
            .collect()
    }

    /// The reference's `list_tools` meta-tool (`ufo/client/computer.py`): the tools the
    /// policy lets run, optionally only those of `tool_type` and/or `namespace`, as a list
    /// of MCPToolInfo objects. `remove_meta` is accepted; meta-tools are never listed.
    fn list_tools(&self, params: &Map<String, Value>) -> ToolOutcome {
        let (tool_type, namespace) = match (
            opt_str_param(params, "tool_type"),
            opt_str_param(params, "namespace"),
        ) {
            (Ok(t), Ok(n)) => (t, n),
            (Err(e), _) | (_, Err(e)) => return ToolOutcome::fail(e),
        };
        let listed: Vec<Value> = self
            .infos()
            .into_iter()
            .filter(|i| tool_type.is_none_or(|t| i.tool_type == t))
            .filter(|i| namespace.is_none_or(|n| i.namespace == n))
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect();
        ToolOutcome::Success(Value::Array(listed))
    }

    /// Runs one command and always produces a `Result` echoing its `call_id`.
    pub async fn run(&self, command: &Command) -> ActionResult {
        let outcome = self.run_outcome(command).await;
        let namespace = match self.resolve(&command.tool_name) {
            Some((_, t)) => Some(t.info().namespace),
            None if command.tool_name == LIST_TOOLS => Some(builtin::NAMESPACE.to_owned()),
            None => None,
        };
        let call_id = command.call_id.clone();
        match outcome {
            ToolOutcome::Success(result) => ActionResult {
                status: ResultStatus::Success,
                error: None,
                result: Some(result),
                namespace,
                call_id,
            },
            ToolOutcome::Failure { error, result } => ActionResult {
                status: ResultStatus::Failure,
                error: Some(error),
                result,
                namespace,
                call_id,
            },
        }
    }

    async fn run_outcome(&self, command: &Command) -> ToolOutcome {
        let params = command.parameters.clone().unwrap_or_default();
        let Some((name, tool)) = self.resolve(&command.tool_name) else {
            if command.tool_name == LIST_TOOLS {
                return self.list_tools(&params);
            }
            return ToolOutcome::fail(format!("Unknown tool '{}'", command.tool_name));
        };
        if let Err(refusal) = self.policy.check(name, &params) {
            tracing::warn!(tool = name, refusal = %refusal, "call refused by policy");
            return ToolOutcome::fail(refusal);
        }
        let tool = tool.clone();
        // Its own task, so that a panic becomes a failure instead of taking us down; aborted
        // when this call is dropped (the session ended), which drops the tool's future and
        // with it any child process group it runs.
        let mut task = AbortOnDropHandle::new(tokio::spawn(async move { tool.call(params).await }));
        match tokio::time::timeout(self.call_limit, &mut task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) if e.is_panic() => {
                ToolOutcome::fail(format!("Tool '{name}' crashed: {}", panic_text(e)))
            }
            Ok(Err(e)) => ToolOutcome::fail(format!("Tool '{name}' was cancelled: {e}")),
            Err(_) => {
                task.abort();
                ToolOutcome::fail(format!(
                    "Tool '{name}' did not finish within {} s",
                    crate::fmt_secs(self.call_limit)
                ))
            }
        }
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// Reads a string parameter.
pub fn str_param<'a>(params: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match params.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("parameter '{key}' must be a string, got {other}")),
        None => Err(format!("missing required parameter '{key}'")),
    }
}

/// Reads an optional string parameter.
pub fn opt_str_param<'a>(
    params: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("parameter '{key}' must be a string, got {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aip_protocol::ToolType;

    struct Misbehaving {
        name: &'static str,
    }

    #[async_trait]
    impl Tool for Misbehaving {
        fn info(&self) -> McpToolInfo {
            McpToolInfo {
                tool_key: format!("test.{}", self.name),
                tool_name: self.name.to_owned(),
                title: None,
                namespace: "test".to_owned(),
                tool_type: "action".to_owned(),
                description: None,
                input_schema: None,
                output_schema: None,
                meta: None,
                annotations: None,
            }
        }

        async fn call(&self, _: Map<String, Value>) -> ToolOutcome {
            if self.name == "panics" {
                panic!("tool bug");
            }
            std::future::pending().await
        }
    }

    fn command(name: &str) -> Command {
        Command {
            tool_name: name.to_owned(),
            parameters: None,
            tool_type: ToolType::Action,
            call_id: Some("c".into()),
        }
    }

    #[tokio::test]
    async fn a_panicking_or_hanging_tool_is_a_failure_not_a_crash() {
        let mut set = ToolSet::new(Arc::new(AllowAll), Duration::from_millis(100));
        set.add(Arc::new(Misbehaving { name: "panics" }));
        set.add(Arc::new(Misbehaving { name: "hangs" }));
        let r = set.run(&command("panics")).await;
        assert_eq!(r.status, ResultStatus::Failure);
        assert_eq!(r.error.as_deref(), Some("Tool 'panics' crashed: tool bug"));
        assert_eq!(r.call_id.as_deref(), Some("c"));
        let r = set.run(&command("hangs")).await;
        assert_eq!(r.status, ResultStatus::Failure);
        assert_eq!(
            r.error.as_deref(),
            Some("Tool 'hangs' did not finish within 0.1 s")
        );
    }

    #[test]
    fn short_names_resolve_unless_ambiguous() {
        let mut set = ToolSet::new(Arc::new(AllowAll), Duration::from_secs(1));
        set.add_qualified(
            "a.echo".into(),
            "echo".into(),
            Arc::new(Misbehaving { name: "x" }),
        );
        assert_eq!(set.resolve("echo").map(|(n, _)| n), Some("a.echo"));
        set.add_qualified(
            "b.echo".into(),
            "echo".into(),
            Arc::new(Misbehaving { name: "y" }),
        );
        assert!(set.resolve("echo").is_none(), "two servers offer echo");
        assert!(set.resolve("b.echo").is_some());
    }
}
