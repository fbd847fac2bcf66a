//! Shared server state handed to every handler and session job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use aip_protocol::plan::{looks_like_plan, Plan};
use aip_protocol::Command;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{PlatformMode, ServerConfig};
use crate::registry::Registry;
use crate::session::driver::{DriverFactory, ExecutorInfo, PlanDriver, SessionContext};
use crate::session::{Planner, SessionManager};
use crate::storage::{SessionRecord, SessionStore};

/// Everything the server shares: configuration, registry, sessions, storage.
pub struct AppState {
    pub config: ServerConfig,
    pub registry: Registry,
    pub sessions: SessionManager,
    pub store: Arc<dyn SessionStore>,
    /// Plans natural-language requests; `None` means delegation.
    pub agent: Option<Arc<dyn DriverFactory>>,
    pub started: std::time::Instant,
    /// Set when graceful shutdown begins.
    pub shutting_down: AtomicBool,
    /// Cancelled to close every connection.
    pub shutdown: CancellationToken,
    /// One permit per WebSocket connection.
    pub conn_limit: Arc<Semaphore>,
    next_conn_id: AtomicU64,
}

impl AppState {
    /// State for `config` on `store`, with an optional agent driver factory.
    pub fn new(
        config: ServerConfig,
        store: Arc<dyn SessionStore>,
        agent: Option<Arc<dyn DriverFactory>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sessions: SessionManager::new(config.max_active_sessions),
            conn_limit: Arc::new(Semaphore::new(config.max_connections)),
            config,
            registry: Registry::default(),
            store,
            agent,
            started: std::time::Instant::now(),
            shutting_down: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            next_conn_id: AtomicU64::new(1),
        })
    }

    /// A fresh connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// True once graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The platform handed to drivers (server.md §9 `--platform`).
    pub fn effective_platform(&self, registered: Option<&str>) -> String {
        match self.config.platform {
            PlatformMode::Windows => "windows".into(),
            PlatformMode::Linux => "linux".into(),
            PlatformMode::Auto => match registered {
                Some(p @ ("windows" | "linux")) => p.into(),
                _ if cfg!(windows) => "windows".into(),
                _ => "linux".into(),
            },
        }
    }

    /// Chooses the driver (server.md §5.1): explicit commands, a JSON plan in the
    /// request, the agent, else delegation.
    /// `record` is the new session's, run by a device with `executor`'s registration.
    pub fn planner(
        &self,
        record: &SessionRecord,
        executor: &ExecutorInfo,
        commands: Option<Vec<Command>>,
    ) -> Planner {
        let ctx = &SessionContext::of(record, executor);
        if let Some(commands) = commands {
            return Planner::Driver(Box::new(PlanDriver::new(Plan::from_commands(commands))));
        }
        if looks_like_plan(ctx.request) {
            return Planner::Driver(Box::new(PlanDriver::new(Plan::parse(ctx.request))));
        }
        if let Some(driver) = self.agent.as_ref().and_then(|f| f.create(ctx)) {
            return Planner::Driver(driver);
        }
        Planner::Delegate
    }
}

/// Parses a list of `Command`s given as JSON (HTTP `commands`, `metadata.commands`).
pub fn parse_commands(value: &Value) -> Result<Vec<Command>, String> {
    use serde::Deserialize;
    // Straight from the parsed value; only a list that fails is printed and parsed again
    // for the strict parser's error detail.
    let commands = match Vec::<Command>::deserialize(value) {
        Ok(commands) => commands,
        Err(_) => aip_protocol::messages::parse_strict(&value.to_string()).map_err(|e| e.detail)?,
    };
    non_empty_commands(commands)
}

/// `commands`, unless the list is empty.
pub fn non_empty_commands(commands: Vec<Command>) -> Result<Vec<Command>, String> {
    if commands.is_empty() {
        return Err("the list of commands is empty".into());
    }
    Ok(commands)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_commands_takes_a_list_and_explains_what_is_wrong_with_one() {
        let ok = parse_commands(&json!([
            {"tool_name": "click", "tool_type": "action", "parameters": {"x": 1}},
            {"tool_name": "screenshot", "tool_type": "data_collection", "call_id": "c2"},
        ]))
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].tool_name, "click");
        assert_eq!(ok[1].call_id.as_deref(), Some("c2"));

        assert_eq!(
            parse_commands(&json!([])).unwrap_err(),
            "the list of commands is empty"
        );
        // The strict parser's detail, with the path to the bad field.
        let err = parse_commands(&json!([{"tool_name": "t", "tool_type": "bogus"}])).unwrap_err();
        assert!(
            err.starts_with("[0].tool_type: unknown variant `bogus`"),
            "{err}"
        );
        let err = parse_commands(&json!([{"tool_type": "action"}])).unwrap_err();
        assert!(err.contains("missing field `tool_name`"), "{err}");
        let err = parse_commands(&json!({"tool_name": "t"})).unwrap_err();
        assert!(err.contains("expected a sequence"), "{err}");
    }
}
