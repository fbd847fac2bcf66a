//! A delegated task run on the device by its own model (protocol.md §3.11), and the one
//! way a round of actions runs here (after the first failure the rest are skipped).

use std::sync::Arc;

use aip_protocol::{ActionResult, ClientMessage, ResultStatus, ServerMessage, TaskStatus};
use serde_json::{json, Map};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::tools::ToolSet;

/// A delegated task run on this device by the local model: one `command_results` per
/// model step (`prev_response_id` = the task's `response_id`), then our own `task_end`.
pub(super) struct DelegatedTask {
    pub(super) tools: Arc<ToolSet>,
    pub(super) tx: mpsc::Sender<Message>,
    pub(super) results: ClientMessage,
    pub(super) end: ClientMessage,
    pub(super) platform: String,
    pub(super) system_info: serde_json::Value,
}

impl DelegatedTask {
    pub(super) async fn run(self, client: aip_llm::LlmClient, task: ServerMessage) {
        use aip_llm::{AgentLoop, Decision, LoopContext, ToolSpec};
        let ctx = LoopContext {
            request: task.user_request.clone().unwrap_or_default(),
            platform: self.platform.clone(),
            system_info: Some(self.system_info.clone()),
            tools: self
                .tools
                .infos()
                .iter()
                .map(ToolSpec::from_tool_info)
                .collect(),
        };
        let mut agent = AgentLoop::with_client(client, ctx);
        let mut feedback = None;
        let (completed, answer, error) = loop {
            match agent.next(feedback.take()).await {
                Ok(Decision::Call(calls)) => {
                    let commands = calls
                        .iter()
                        .map(|c| c.to_command(aip_protocol::ToolType::Action))
                        .collect();
                    let results = run_actions(&self.tools, commands).await;
                    let mut report = self.results.clone();
                    report.timestamp = Some(aip_protocol::time::wire_now());
                    report.session_id = task.session_id.clone();
                    report.prev_response_id = task.response_id.clone();
                    report.action_results = Some(results.clone());
                    let _ = self.tx.send(Message::Text(report.to_json().into())).await;
                    feedback = Some(results);
                }
                Ok(Decision::Finish { completed, answer }) => {
                    let error = (!completed).then(|| answer.clone());
                    break (completed, Some(answer), error);
                }
                Err(e) => break (false, None, Some(e.to_string())),
            }
        };
        let mut end = self.end;
        end.timestamp = Some(aip_protocol::time::wire_now());
        end.status = if completed {
            TaskStatus::Completed
        } else {
            TaskStatus::Failed
        };
        end.session_id = task.session_id;
        end.error = error;
        let mut meta = Map::new();
        meta.insert(
            "result".into(),
            json!({"answer": answer, "transcript": agent.transcript()}),
        );
        end.metadata = Some(meta);
        tracing::info!(
            session_id = end.session_id.as_deref().unwrap_or(""),
            completed,
            steps = agent.steps(),
            "delegated task finished"
        );
        let _ = self.tx.send(Message::Text(end.to_json().into())).await;
    }
}

/// Runs a round's actions in order; after the first failure the rest are skipped.
pub async fn run_actions(
    tools: &ToolSet,
    actions: Vec<aip_protocol::Command>,
) -> Vec<ActionResult> {
    let mut results = Vec::with_capacity(actions.len());
    let mut failed = false;
    for action in actions {
        if failed {
            results.push(ActionResult {
                status: ResultStatus::Skipped,
                error: Some("Skipped due to previous failure (early_exit=True).".into()),
                result: None,
                namespace: None,
                call_id: action.call_id.clone(),
            });
            continue;
        }
        let r = tools.run(&action).await;
        failed = r.status == ResultStatus::Failure;
        results.push(r);
    }
    results
}
