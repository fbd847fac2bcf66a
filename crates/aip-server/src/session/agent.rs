//! The LLM agent driver (server.md §5.3): each model step becomes one `command` round on
//! the executing device; the model sees the results and ends with `finish`.

use std::sync::Arc;

use aip_llm::{AgentLoop, Decision, LlmClient, LlmConfig, LoopContext, ToolSpec};
use aip_protocol::{Command, ToolType, LIST_TOOLS};
use async_trait::async_trait;
use serde_json::{json, Value};

use super::driver::{
    rounds_result, DriverError, DriverFactory, Round, SessionContext, SessionDriver, Step,
};

/// Tools assumed when a device advertised none: the reference Linux agent's shell tool.
pub fn default_tools() -> Vec<ToolSpec> {
    vec![ToolSpec::new(
        "execute_command",
        Some("Run a shell command on the device and return exit_code, stdout and stderr.".into()),
        json!({
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "timeout": {"type": "number", "description": "Seconds before the command is killed."}
            },
            "required": ["command"]
        }),
    )]
}

/// Creates an [`LlmDriver`] for every natural-language session.
pub struct LlmDriverFactory {
    client: LlmClient,
}

impl LlmDriverFactory {
    /// A factory sharing one HTTP client (connection pool) across sessions.
    pub fn new(config: LlmConfig) -> Result<Self, aip_llm::LlmError> {
        Ok(Self {
            client: LlmClient::new(Arc::new(config))?,
        })
    }
}

impl DriverFactory for LlmDriverFactory {
    fn create(&self, ctx: &SessionContext<'_>) -> Option<Box<dyn SessionDriver>> {
        let tools = ctx
            .executor_tools
            .map(ToolSpec::from_advertised)
            .unwrap_or_default();
        let loop_ctx = LoopContext {
            request: ctx.request.to_owned(),
            platform: ctx.platform.to_owned(),
            system_info: ctx.executor_system_info.cloned(),
            tools: Vec::new(),
        };
        // A device that advertised no tools (the reference's) is asked for them first,
        // as the reference's agents open every session.
        let mut driver = LlmDriver {
            client: self.client.clone(),
            phase: Phase::Discover(loop_ctx),
            tools: Vec::new(),
            agent_name: ctx.default_agent_name.to_owned(),
            answered: 0,
        };
        if !tools.is_empty() {
            driver.start_planning(tools);
        }
        Some(Box::new(driver))
    }
}

/// The `list_tools` round's command, exactly as the reference's agents send it.
pub fn list_tools_command() -> Command {
    Command {
        tool_name: LIST_TOOLS.to_owned(),
        parameters: json!({"tool_type": "action"}).as_object().cloned(),
        tool_type: ToolType::Action,
        call_id: None,
    }
}

/// The tools a `list_tools` round reported: the first result's list of MCPToolInfo (or
/// that list as JSON text); nothing when the device could not list them.
pub fn listed_tools(round: Option<&Round>) -> Vec<ToolSpec> {
    let Some(first) = round.and_then(|r| r.action_results.first()) else {
        return Vec::new();
    };
    if first.failure_text().is_some() {
        return Vec::new();
    }
    match &first.result {
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .map(|v| ToolSpec::from_advertised(&v))
            .unwrap_or_default(),
        Some(v) => ToolSpec::from_advertised(v),
        None => Vec::new(),
    }
}

/// Where an [`LlmDriver`] is.
enum Phase {
    /// The executor advertised no tools: ask for them before the model's first step.
    Discover(LoopContext),
    /// The `list_tools` round is out.
    Listing(LoopContext),
    /// The model plans (boxed: the loop is large and the other phases are short-lived).
    Plan(Box<AgentLoop>),
}

/// Plans one session with the model.
pub struct LlmDriver {
    client: LlmClient,
    phase: Phase,
    /// The tools offered to the model (for each call's `tool_type`).
    tools: Vec<ToolSpec>,
    agent_name: String,
    /// Rounds already handed to the model (or consumed by discovery).
    answered: usize,
}

impl LlmDriver {
    fn tool_type(tools: &[ToolSpec], name: &str) -> ToolType {
        match tools
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.tool_type.as_deref())
        {
            Some("data_collection") => ToolType::DataCollection,
            _ => ToolType::Action,
        }
    }

    /// The model starts with `tools`.
    fn start_planning(&mut self, tools: Vec<ToolSpec>) {
        let ctx = match &mut self.phase {
            Phase::Discover(ctx) | Phase::Listing(ctx) => LoopContext {
                tools: tools.clone(),
                ..std::mem::replace(ctx, LoopContext::empty())
            },
            Phase::Plan(_) => return,
        };
        self.tools = tools;
        self.phase = Phase::Plan(Box::new(AgentLoop::with_client(self.client.clone(), ctx)));
    }

    /// Moves through discovery; returns the `list_tools` step while one is due.
    fn discover(&mut self, ctx: &SessionContext<'_>, rounds: &[Round]) -> Option<Step> {
        match &mut self.phase {
            Phase::Discover(loop_ctx) => {
                let loop_ctx = std::mem::replace(loop_ctx, LoopContext::empty());
                self.phase = Phase::Listing(loop_ctx);
                self.answered = rounds.len() + 1;
                Some(Step::Commands {
                    agent_name: self.agent_name.clone(),
                    process_name: None,
                    root_name: None,
                    actions: vec![list_tools_command()],
                })
            }
            Phase::Listing(_) => {
                let mut tools = listed_tools(rounds.last());
                if tools.is_empty() {
                    tracing::info!(
                        session_id = ctx.session_id,
                        "the device listed no tools; offering the default shell tool"
                    );
                    tools = default_tools();
                }
                self.answered = rounds.len();
                self.start_planning(tools);
                None
            }
            Phase::Plan(_) => None,
        }
    }
}

#[async_trait]
impl SessionDriver for LlmDriver {
    fn agent_name(&self) -> &str {
        &self.agent_name
    }

    async fn next_step(
        &mut self,
        ctx: &SessionContext<'_>,
        rounds: &[Round],
    ) -> Result<Step, DriverError> {
        if let Some(step) = self.discover(ctx, rounds) {
            return Ok(step);
        }
        let Phase::Plan(agent) = &mut self.phase else {
            return Err(DriverError("tool discovery did not finish".into()));
        };
        let results = (rounds.len() > self.answered)
            .then(|| rounds.last().map(|r| r.action_results.clone()))
            .flatten();
        self.answered = rounds.len();
        let decision = agent
            .next(results)
            .await
            .map_err(|e| DriverError(e.to_string()))?;
        Ok(match decision {
            Decision::Call(calls) => Step::Commands {
                agent_name: self.agent_name.clone(),
                process_name: None,
                root_name: None,
                actions: calls
                    .iter()
                    .map(|c| c.to_command(Self::tool_type(&self.tools, &c.name)))
                    .collect(),
            },
            Decision::Finish { completed, answer } => {
                let mut result = rounds_result(rounds);
                if let Value::Object(obj) = &mut result {
                    obj.insert("answer".into(), json!(answer));
                    obj.insert("transcript".into(), agent.transcript());
                }
                Step::Finish {
                    completed,
                    result: Some(result),
                    error: (!completed).then_some(answer),
                }
            }
        })
    }
}
