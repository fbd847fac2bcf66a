//! The LLM agent driver (server.md §5.3): each model step becomes one `command` round on
//! the executing device; the model sees the results and ends with `finish`.

use std::sync::Arc;

use aip_llm::{AgentLoop, Decision, LlmClient, LlmConfig, LoopContext, ToolSpec};
use aip_protocol::ToolType;
use async_trait::async_trait;
use serde_json::{json, Value};

use super::driver::{
    default_agent_name, rounds_result, DriverError, DriverFactory, Round, SessionContext,
    SessionDriver, Step,
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
        let mut tools = ctx
            .executor_tools
            .map(ToolSpec::from_advertised)
            .unwrap_or_default();
        if tools.is_empty() {
            tools = default_tools();
        }
        let agent_name = default_agent_name(ctx.platform).to_owned();
        let loop_ctx = LoopContext {
            request: ctx.request.to_owned(),
            platform: ctx.platform.to_owned(),
            system_info: ctx.executor_system_info.cloned(),
            tools: tools.clone(),
        };
        Some(Box::new(LlmDriver {
            agent: AgentLoop::with_client(self.client.clone(), loop_ctx),
            agent_name,
            tools,
            answered: 0,
        }))
    }
}

/// Plans one session with the model.
pub struct LlmDriver {
    agent: AgentLoop,
    agent_name: String,
    tools: Vec<ToolSpec>,
    /// Rounds already handed to the model.
    answered: usize,
}

impl LlmDriver {
    fn tool_type(&self, name: &str) -> ToolType {
        match self
            .tools
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.tool_type.as_deref())
        {
            Some("data_collection") => ToolType::DataCollection,
            _ => ToolType::Action,
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
        _ctx: &SessionContext<'_>,
        rounds: &[Round],
    ) -> Result<Step, DriverError> {
        let results = (rounds.len() > self.answered)
            .then(|| rounds.last().map(|r| r.action_results.clone()))
            .flatten();
        self.answered = rounds.len();
        let decision = self
            .agent
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
                    .map(|c| c.to_command(self.tool_type(&c.name)))
                    .collect(),
            },
            Decision::Finish { completed, answer } => {
                let mut result = rounds_result(rounds);
                if let Value::Object(obj) = &mut result {
                    obj.insert("answer".into(), json!(answer));
                    obj.insert("transcript".into(), self.agent.transcript());
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
