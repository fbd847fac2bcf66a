//! The session core in process: a manager over a registry of fake connections and an
//! in-memory store, so that a break names the transition (echo against report, timeout
//! against result, cancellation) instead of an unexpected frame on a socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::errors as text;
use aip_protocol::{ActionResult, ClientType, Command, ResultStatus, ToolType};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::*;
use crate::config::PlatformMode;
use crate::conn::{ConnHandle, Outgoing};
use crate::registry::ClientEntry;
use crate::registry::Registry;
use crate::storage::{
    EndReason, SessionFilter, SessionRecord, SessionState, SessionStore, StoreError,
};
use parking_lot::Mutex;

/// A store that keeps records in a map.
#[derive(Default)]
struct MemStore(Mutex<HashMap<String, SessionRecord>>);

#[async_trait]
impl SessionStore for MemStore {
    async fn upsert(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.0.lock().insert(record.session_id.clone(), record);
        Ok(())
    }
    async fn probe_write(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn delete(&self, session_id: &str) -> Result<(), StoreError> {
        self.0.lock().remove(session_id);
        Ok(())
    }
    async fn get(&self, session_id: &str) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.0.lock().get(session_id).cloned().map(Arc::new))
    }
    async fn latest_by_task_name(&self, _: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(None)
    }
    async fn list(&self, _: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn mark_interrupted(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn purge(&self, _: DateTime<Utc>, _: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// A registered device whose outgoing frames the test reads.
struct Device {
    entry: Arc<ClientEntry>,
    rx: mpsc::Receiver<Outgoing>,
}

impl Device {
    /// The next frame sent to the device, parsed.
    async fn frame(&mut self) -> Value {
        let frame = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("no frame within 5 s")
            .expect("connection queue closed");
        match frame {
            Outgoing::Text(json) => serde_json::from_str(&json).expect("a JSON frame"),
            other => panic!("not a text frame: {other:?}"),
        }
    }

    /// The next frame, which must be of this `type`.
    async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.frame().await;
        assert_eq!(frame["type"], kind, "{frame}");
        frame
    }

    fn nothing_queued(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }
}

struct Core {
    manager: Arc<SessionManager>,
    store: Arc<MemStore>,
    device: Device,
}

fn settings() -> SessionSettings {
    SessionSettings {
        max_active: 10,
        platform: PlatformMode::Linux,
        session_timeout: Some(Duration::from_secs(60)),
        command_timeout: Duration::from_secs(60),
        accept_timeout: Duration::from_secs(60),
    }
}

fn core(settings: SessionSettings) -> Core {
    let registry = Arc::new(Registry::default());
    let (tx, rx) = mpsc::channel(64);
    let entry = ClientEntry::new(
        "dev-1".into(),
        ClientType::Device,
        ConnHandle::new(1, tx),
        None,
        None,
    );
    let entry = registry.try_insert(entry).expect("a free client id");
    let store = Arc::new(MemStore::default());
    let manager = SessionManager::new(settings, registry, store.clone(), None);
    Core {
        manager,
        store,
        device: Device { entry, rx },
    }
}

fn command(tool: &str) -> Command {
    Command {
        tool_name: tool.into(),
        tool_type: ToolType::Action,
        parameters: None,
        call_id: None,
    }
}

fn success(call_id: Option<&str>) -> ActionResult {
    ActionResult {
        status: ResultStatus::Success,
        error: None,
        result: Some(json!("ok")),
        namespace: None,
        call_id: call_id.map(str::to_owned),
    }
}

impl Core {
    /// An HTTP dispatch to the device: `commands`, or a natural-language request.
    async fn dispatch(&self, id: &str, commands: Option<Vec<Command>>) -> Arc<SessionHandle> {
        self.manager
            .open(OpenRequest {
                session_id: id.into(),
                generated_id: false,
                task_name: format!("task-{id}"),
                request: "check the disk".into(),
                requester: None,
                executor: self.device.entry.clone(),
                commands,
                job_id: None,
            })
            .await
            .expect("opened")
    }

    async fn record(&self, id: &str) -> SessionRecord {
        self.store.0.lock().get(id).cloned().expect("stored")
    }
}

async fn ended(h: &SessionHandle) {
    tokio::time::timeout(Duration::from_secs(5), h.finished())
        .await
        .expect("the session did not end within 5 s");
}

async fn results(h: &SessionHandle, prev_response_id: &str, r: Vec<ActionResult>) {
    h.deliver(SessionEvent::Results(Box::new(ReportedResults {
        prev_response_id: Some(prev_response_id.into()),
        results: r,
    })))
    .await;
}

// ---- Acceptance (protocol.md §3.6, §3.11)

#[tokio::test]
async fn a_dispatch_is_stored_created_and_pushed_awaiting_its_echo() {
    let mut c = core(settings());
    let h = c.dispatch("s1", Some(vec![command("ls")])).await;
    let task = c.device.expect("task").await;
    assert_eq!(task["agent_name"], "PlanAgent");
    assert_eq!(task["session_id"], "s1");
    assert_eq!(h.acceptance(), Acceptance::Awaiting);
    assert_eq!(
        h.task_response_id().as_deref(),
        task["response_id"].as_str()
    );
    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Created);
    assert!(!r.echo_received);
    assert_eq!(c.manager.active(), 1);
}

#[tokio::test]
async fn an_echo_makes_the_server_drive_and_a_later_report_cannot_take_over() {
    let mut c = core(settings());
    let h = c.dispatch("s1", Some(vec![command("ls")])).await;
    let task = c.device.expect("task").await;
    assert!(h.accept_echo());
    assert!(!h.accept_echo(), "a second echo is not an echo");
    assert!(
        !h.admit_client_end(),
        "an echoed session is not the device's to end"
    );
    assert_eq!(h.acceptance(), Acceptance::Echoed);
    h.deliver(SessionEvent::Echo).await;

    let cmd = c.device.expect("command").await;
    assert_ne!(cmd["response_id"], task["response_id"]);
    let call_id = cmd["actions"][0]["call_id"].as_str().map(str::to_owned);
    assert!(c.manager.get("s1").is_some());
    let rid = cmd["response_id"]
        .as_str()
        .expect("a response id")
        .to_owned();
    results(&h, &rid, vec![success(call_id.as_deref())]).await;
    ended(&h).await;

    let end = c.device.expect("task_end").await;
    assert_eq!(end["status"], "completed");
    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Completed);
    assert!(r.echo_received);
    assert!(c.manager.get("s1").is_none());
    assert_eq!(c.manager.active(), 0);
}

#[tokio::test]
async fn a_report_on_the_task_first_makes_the_device_run_it_and_the_echo_lose() {
    let mut c = core(settings());
    let h = c.dispatch("s1", None).await;
    let task = c.device.expect("task").await;
    assert_eq!(
        task["agent_name"],
        Value::Null,
        "delegated: no agent plans it"
    );
    let rid = task["response_id"]
        .as_str()
        .expect("a response id")
        .to_owned();

    assert!(h.admit_results(Some(&rid)));
    assert_eq!(h.acceptance(), Acceptance::Reported);
    assert!(!h.accept_echo(), "the echo lost the race");
    results(&h, &rid, vec![success(None)]).await;
    assert!(h.admit_client_end());
    h.deliver(SessionEvent::ClientEnd(Box::new(ClientEnd {
        completed: true,
        error: None,
        result: Some(json!("disk is fine")),
    })))
    .await;
    ended(&h).await;

    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Completed);
    let result = r.result.expect("a result");
    assert_eq!(result["result"], "disk is fine");
    assert_eq!(result["rounds"][0]["response_id"], rid.as_str());
    assert!(
        c.device.nothing_queued(),
        "a device that ended its session itself is not told"
    );
}

#[tokio::test]
async fn while_awaiting_only_a_report_on_the_pushed_task_is_admitted() {
    let mut c = core(settings());
    let h = c.dispatch("s1", None).await;
    c.device.expect("task").await;
    assert!(!h.admit_results(None));
    assert!(!h.admit_results(Some("some-other-response")));
    assert_eq!(h.acceptance(), Acceptance::Awaiting);
    assert!(h.admit_client_end(), "a task_end is a report too");
    assert_eq!(h.acceptance(), Acceptance::Reported);
}

#[tokio::test]
async fn an_echo_of_a_delegated_task_fails_it_for_want_of_an_agent() {
    let mut c = core(settings());
    let h = c.dispatch("s1", None).await;
    c.device.expect("task").await;
    assert!(h.accept_echo());
    h.deliver(SessionEvent::Echo).await;
    ended(&h).await;
    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Failed);
    assert_eq!(r.error.as_deref(), Some(text::NO_AGENT));
}

// ---- Timeouts (server.md §4)

#[tokio::test]
async fn no_echo_within_the_accept_timeout_fails_the_session_not_accepted() {
    let mut c = core(SessionSettings {
        accept_timeout: Duration::from_millis(50),
        ..settings()
    });
    let h = c.dispatch("s1", Some(vec![command("ls")])).await;
    c.device.expect("task").await;
    ended(&h).await;
    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Failed);
    assert_eq!(r.reason, Some(EndReason::NotAccepted));
    assert_eq!(r.error, Some(text::not_accepted("0.05")));
    assert_eq!(c.device.expect("task_end").await["status"], "failed");
}

#[tokio::test]
async fn no_results_within_the_command_timeout_become_failures_and_a_late_result_is_dropped() {
    let mut c = core(SessionSettings {
        command_timeout: Duration::from_millis(50),
        ..settings()
    });
    let h = c
        .dispatch("s1", Some(vec![command("ls"), command("df")]))
        .await;
    c.device.expect("task").await;
    assert!(h.accept_echo());
    h.deliver(SessionEvent::Echo).await;
    let cmd = c.device.expect("command").await;
    let rid = cmd["response_id"]
        .as_str()
        .expect("a response id")
        .to_owned();
    ended(&h).await;
    // Too late: the session has ended; the event goes nowhere.
    results(&h, &rid, vec![success(None)]).await;

    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Failed);
    let timed_out = text::command_timed_out("0.05");
    assert_eq!(
        r.error,
        Some(text::command_failed("ls", &timed_out)),
        "the plan stops at the first failed round"
    );
    let result = r.result.expect("the rounds are kept");
    assert_eq!(
        result["rounds"][0]["action_results"][0]["error"],
        timed_out.as_str()
    );
    assert_eq!(c.device.expect("task_end").await["status"], "failed");
    assert!(
        c.device.nothing_queued(),
        "the second command never went out"
    );
}

#[tokio::test]
async fn results_for_another_round_are_dropped_and_the_round_still_waits_for_its_own() {
    let mut c = core(settings());
    let h = c.dispatch("s1", Some(vec![command("ls")])).await;
    c.device.expect("task").await;
    assert!(h.accept_echo());
    h.deliver(SessionEvent::Echo).await;
    let cmd = c.device.expect("command").await;
    results(&h, "not-this-round", vec![success(None)]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        c.manager.get("s1").is_some(),
        "a foreign result ended the round"
    );
    let rid = cmd["response_id"]
        .as_str()
        .expect("a response id")
        .to_owned();
    results(&h, &rid, vec![success(None)]).await;
    ended(&h).await;
    assert_eq!(c.record("s1").await.state, SessionState::Completed);
}

#[tokio::test]
async fn the_session_timeout_ends_a_session_waiting_for_results() {
    let mut c = core(SessionSettings {
        session_timeout: Some(Duration::from_millis(80)),
        ..settings()
    });
    let h = c.dispatch("s1", Some(vec![command("ls")])).await;
    c.device.expect("task").await;
    assert!(h.accept_echo());
    h.deliver(SessionEvent::Echo).await;
    c.device.expect("command").await;
    ended(&h).await;
    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Failed);
    assert_eq!(r.reason, Some(EndReason::Timeout));
    assert_eq!(r.error, Some(text::session_timed_out("0.08")));
}

// ---- Cancellation (server.md §7, http-api.md DELETE)

#[tokio::test]
async fn a_parked_session_cancelled_over_http_ends_cancelled_and_the_device_is_told() {
    let mut c = core(settings());
    let h = c.dispatch("s1", Some(vec![command("ls")])).await;
    c.device.expect("task").await;
    h.cancel(CancelReason::Api);
    ended(&h).await;
    let r = c.record("s1").await;
    assert_eq!(r.state, SessionState::Cancelled);
    assert_eq!(r.reason, Some(EndReason::Cancelled));
    assert_eq!(r.error.as_deref(), Some(text::CANCELLED_OVER_HTTP));
    assert_eq!(c.device.expect("task_end").await["status"], "failed");
}

#[tokio::test]
async fn a_device_disconnect_cancels_without_telling_the_gone_device_and_the_first_reason_wins() {
    let mut c = core(settings());
    let h = c.dispatch("s1", Some(vec![command("ls")])).await;
    c.device.expect("task").await;
    h.cancel(CancelReason::DeviceDisconnected);
    h.cancel(CancelReason::Shutdown);
    ended(&h).await;
    let r = c.record("s1").await;
    assert_eq!(r.reason, Some(EndReason::DeviceDisconnected));
    assert_eq!(r.error.as_deref(), Some(text::DEVICE_DISCONNECTED));
    assert!(c.device.nothing_queued());
}

// ---- Creation

#[tokio::test]
async fn a_live_session_id_and_a_full_house_are_refused() {
    let c = core(SessionSettings {
        max_active: 1,
        ..settings()
    });
    let _h = c.dispatch("s1", Some(vec![command("ls")])).await;
    let again = |id: &str| OpenRequest {
        session_id: id.into(),
        generated_id: false,
        task_name: "t".into(),
        request: "r".into(),
        requester: None,
        executor: c.device.entry.clone(),
        commands: None,
        job_id: None,
    };
    assert!(matches!(
        c.manager.open(again("s2")).await,
        Err(CreateError::TooMany)
    ));
    let c2 = core(settings());
    let _h = c2.dispatch("s1", None).await;
    let same = OpenRequest {
        executor: c2.device.entry.clone(),
        ..again("s1")
    };
    assert!(matches!(
        c2.manager.open(same).await,
        Err(CreateError::Live { requester: None })
    ));
    assert_eq!(c2.manager.active(), 1);
}

#[tokio::test]
async fn a_dispatch_to_a_device_that_left_is_undone() {
    let c = core(settings());
    let gone = Arc::new(ClientEntry::new(
        "dev-2".into(),
        ClientType::Device,
        ConnHandle::new(2, mpsc::channel(1).0),
        None,
        None,
    ));
    let open = OpenRequest {
        session_id: "s1".into(),
        generated_id: false,
        task_name: "t".into(),
        request: "r".into(),
        requester: None,
        executor: gone,
        commands: None,
        job_id: None,
    };
    assert!(matches!(
        c.manager.open(open).await,
        Err(CreateError::ExecutorGone)
    ));
    assert_eq!(c.manager.active(), 0);
    assert!(c.store.0.lock().is_empty(), "the record was deleted again");
}
