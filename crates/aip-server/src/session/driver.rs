//! Session drivers (server.md §5): what decides each round's commands.
//!
//! The session job asks its driver for one [`Step`] at a time and hands it the rounds
//! so far. Drivers never touch sockets; they can be dropped (cancelled) at any await.

use aip_protocol::plan::{default_agent_name, Plan};
use aip_protocol::{ActionResult, Command};
use async_trait::async_trait;
use serde_json::{json, Value};

use crate::registry::ExecutorInfo;
use crate::storage::SessionRecord;

/// What a driver is told about its session: borrowed from the session's record and its
/// executor's registration (a session waiting for its device holds no copy of them).
#[derive(Debug, Clone, Copy)]
pub struct SessionContext<'a> {
    pub session_id: &'a str,
    pub task_name: &'a str,
    pub request: &'a str,
    /// Effective platform: `windows` or `linux`.
    pub platform: &'a str,
    pub executor_id: &'a str,
    /// `agent_name` for steps that name none: the one the executor's registered platform
    /// has (the reference device looks up its tools by it), else the effective platform's.
    pub default_agent_name: &'static str,
    pub executor_system_info: Option<&'a Value>,
    /// The executor's advertised tools (`metadata.tools`), if any.
    pub executor_tools: Option<&'a Value>,
}

impl<'a> SessionContext<'a> {
    /// The context of the session stored as `record`.
    pub fn of(record: &'a SessionRecord, executor: &'a ExecutorInfo) -> Self {
        Self {
            session_id: &record.session_id,
            task_name: &record.task_name,
            request: &record.request,
            platform: &record.platform,
            executor_id: &record.executor,
            default_agent_name: executor
                .agent_name
                .unwrap_or_else(|| default_agent_name(&record.platform)),
            executor_system_info: executor.system_info.as_deref(),
            executor_tools: executor.tools.as_deref(),
        }
    }
}

/// One finished round: the commands sent and the results received (or synthesised).
#[derive(Debug, Clone)]
pub struct Round {
    pub response_id: String,
    pub actions: Vec<Command>,
    pub action_results: Vec<ActionResult>,
}

impl Round {
    /// `{"response_id", "action_results"}` as stored in the session result.
    pub fn to_json(&self) -> Value {
        json!({"response_id": self.response_id, "action_results": self.action_results})
    }
}

/// `{"rounds": [...]}`.
pub fn rounds_result(rounds: &[Round]) -> Value {
    json!({"rounds": rounds.iter().map(Round::to_json).collect::<Vec<_>>()})
}

/// A driver's decision.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send these commands as one `command` frame and wait for the results.
    Commands {
        agent_name: String,
        process_name: Option<String>,
        root_name: Option<String>,
        actions: Vec<Command>,
    },
    /// End the session.
    Finish {
        completed: bool,
        result: Option<Value>,
        error: Option<String>,
    },
}

/// A driver failure; the session fails with `Driver error: <detail>`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// Plans one session step by step.
#[async_trait]
pub trait SessionDriver: Send + Sync {
    /// `agent_name` announced in the `task` assignment (`PlanAgent`, `LinuxAgent`, ...).
    fn agent_name(&self) -> &str;
    /// The next step, given every round so far.
    async fn next_step(
        &mut self,
        ctx: &SessionContext<'_>,
        rounds: &[Round],
    ) -> Result<Step, DriverError>;
}

/// Creates drivers for natural-language requests (the LLM agent driver plugs in here).
pub trait DriverFactory: Send + Sync + 'static {
    /// A driver for this session, or `None` when this factory cannot plan it.
    fn create(&self, ctx: &SessionContext<'_>) -> Option<Box<dyn SessionDriver>>;
}

/// Built-in plan driver (server.md §5.2).
pub struct PlanDriver {
    plan: Result<Plan, String>,
    next: usize,
}

impl PlanDriver {
    /// A driver for a parsed plan, or for a plan that failed to parse (it finishes
    /// `failed` with `Invalid plan: <detail>` at its first step).
    pub fn new(plan: Result<Plan, String>) -> Self {
        Self { plan, next: 0 }
    }
}

#[async_trait]
impl SessionDriver for PlanDriver {
    fn agent_name(&self) -> &str {
        "PlanAgent"
    }

    async fn next_step(
        &mut self,
        ctx: &SessionContext<'_>,
        rounds: &[Round],
    ) -> Result<Step, DriverError> {
        let plan = match &self.plan {
            Ok(p) => p,
            Err(detail) => {
                return Ok(Step::Finish {
                    completed: false,
                    result: None,
                    error: Some(aip_protocol::errors::invalid_plan(detail)),
                })
            }
        };
        if plan.stop_on_failure {
            if let Some(last) = rounds.last() {
                if let Some((i, why)) = last
                    .action_results
                    .iter()
                    .enumerate()
                    .find_map(|(i, r)| r.failure_text().map(|why| (i, why)))
                {
                    let failed = &last.action_results[i];
                    let tool = failed
                        .call_id
                        .as_deref()
                        .and_then(|id| {
                            last.actions
                                .iter()
                                .find(|c| c.call_id.as_deref() == Some(id))
                        })
                        .or_else(|| last.actions.get(i))
                        .map(|c| c.tool_name.as_str())
                        .unwrap_or("unknown");
                    return Ok(Step::Finish {
                        completed: false,
                        result: Some(rounds_result(rounds)),
                        error: Some(aip_protocol::errors::command_failed(tool, &why)),
                    });
                }
            }
        }
        let Some(step) = plan.steps.get(self.next) else {
            return Ok(Step::Finish {
                completed: true,
                result: Some(rounds_result(rounds)),
                error: None,
            });
        };
        self.next += 1;
        Ok(Step::Commands {
            agent_name: step
                .agent_name
                .clone()
                .or_else(|| plan.agent_name.clone())
                .unwrap_or_else(|| ctx.default_agent_name.to_owned()),
            process_name: step
                .process_name
                .clone()
                .or_else(|| plan.process_name.clone()),
            root_name: step.root_name.clone().or_else(|| plan.root_name.clone()),
            actions: step.actions.clone(),
        })
    }
}

/// Who drives a session: a driver on the server, or the device itself.
pub enum Driving {
    /// A driver decides the rounds (plan or LLM agent).
    Driver(Box<dyn SessionDriver>),
    /// Nothing on the server can plan it: the device runs it itself (protocol.md §3.11).
    Delegated,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aip_protocol::{ResultStatus, ToolType};

    use super::*;

    fn ctx(platform: &str) -> SessionContext<'_> {
        SessionContext {
            session_id: "s",
            task_name: "t",
            request: "r",
            platform,
            executor_id: "d",
            default_agent_name: aip_protocol::plan::default_agent_name(platform),
            executor_system_info: None,
            executor_tools: None,
        }
    }

    fn cmd(tool: &str, call_id: &str) -> Command {
        Command {
            tool_name: tool.into(),
            tool_type: ToolType::Action,
            parameters: None,
            call_id: Some(call_id.into()),
        }
    }

    fn result(status: ResultStatus, call_id: &str) -> ActionResult {
        ActionResult {
            status,
            error: (status == ResultStatus::Failure).then(|| "boom".into()),
            result: None,
            namespace: None,
            call_id: Some(call_id.into()),
        }
    }

    /// The round the job would record after sending `step`'s actions.
    fn round(step: Step, statuses: &[ResultStatus]) -> Round {
        let Step::Commands { actions, .. } = step else {
            panic!("expected commands")
        };
        let action_results = actions
            .iter()
            .zip(statuses)
            .map(|(a, s)| result(*s, a.call_id.as_deref().unwrap()))
            .collect();
        Round {
            response_id: "rid".into(),
            actions,
            action_results,
        }
    }

    #[tokio::test]
    async fn a_plan_sends_one_round_per_step_then_completes_with_every_round() {
        let plan = Plan::from_commands(vec![cmd("ls", "c1"), cmd("df", "c2")]);
        let mut d = PlanDriver::new(plan);
        let mut rounds = Vec::new();
        for tool in ["ls", "df"] {
            let step = d.next_step(&ctx("windows"), &rounds).await.unwrap();
            let Step::Commands {
                agent_name,
                actions,
                ..
            } = &step
            else {
                panic!("expected commands")
            };
            assert_eq!(agent_name, "HostAgent", "the platform's default");
            assert_eq!(actions[0].tool_name, tool);
            rounds.push(round(step, &[ResultStatus::Success]));
        }
        match d.next_step(&ctx("windows"), &rounds).await.unwrap() {
            Step::Finish {
                completed, result, ..
            } => {
                assert!(completed);
                assert_eq!(result.unwrap()["rounds"].as_array().unwrap().len(), 2);
            }
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_action_stops_the_plan_naming_the_tool_found_by_call_id() {
        let plan = Plan::parse(
            r#"{"agent_name": "A", "steps": [
                {"actions": [{"tool_name": "ls", "tool_type": "action", "call_id": "c1"},
                             {"tool_name": "rm", "tool_type": "action", "call_id": "c2"}]},
                {"actions": [{"tool_name": "df", "tool_type": "action"}]}]}"#,
        );
        let mut d = PlanDriver::new(plan);
        let step = d.next_step(&ctx("linux"), &[]).await.unwrap();
        let mut r = round(step, &[ResultStatus::Success, ResultStatus::Failure]);
        // Reported in another order: the failed one is still `rm`.
        r.action_results.reverse();
        match d.next_step(&ctx("linux"), &[r]).await.unwrap() {
            Step::Finish {
                completed, error, ..
            } => {
                assert!(!completed);
                assert_eq!(error.as_deref(), Some("Command 'rm' failed: boom"));
            }
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_invalid_plan_fails_at_its_first_step() {
        let mut d = PlanDriver::new(Err("steps must not be empty".into()));
        match d.next_step(&ctx("linux"), &[]).await.unwrap() {
            Step::Finish {
                completed, error, ..
            } => {
                assert!(!completed);
                assert_eq!(
                    error.as_deref(),
                    Some("Invalid plan: steps must not be empty")
                );
            }
            other => panic!("expected the end, got {other:?}"),
        }
    }
}
