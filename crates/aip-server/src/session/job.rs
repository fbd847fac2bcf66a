//! One session's job: acceptance, rounds, delegation, timeouts, the final state.

use std::sync::Arc;

use aip_protocol::errors as text;
use aip_protocol::{ActionResult, ResultStatus, ServerMessage, ServerMessageType, TaskStatus};
use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::accept::push_task;
use super::alarm::AlarmKey;
use super::driver::Driving;
use super::driver::{rounds_result, Round, SessionContext, Step};
use super::handle::{
    CancelReason, ClientEnd, Parked, ReportedResults, SessionEvent, SessionHandle,
};
use super::manager::SessionManager;
use super::publish;
use super::records::store_until_saved;
use crate::config::fmt_secs;
use crate::registry::ExecutorInfo;
use crate::storage::{EndReason, Origin, SessionRecord, SessionState};

/// How a session ended and who hears about it.
struct Outcome {
    state: SessionState,
    reason: Option<EndReason>,
    error: Option<String>,
    result: Option<Value>,
    notify_requester: bool,
    notify_executor: bool,
}

impl Outcome {
    fn ended(completed: bool, error: Option<String>, result: Option<Value>) -> Self {
        Self {
            state: if completed {
                SessionState::Completed
            } else {
                SessionState::Failed
            },
            reason: None,
            error,
            result,
            notify_requester: true,
            notify_executor: true,
        }
    }

    fn failed(reason: Option<EndReason>, error: String, result: Option<Value>) -> Self {
        Self {
            reason,
            ..Self::ended(false, Some(error), result)
        }
    }
}

enum Accepted {
    Echo,
    Report(SessionEvent),
}

pub(super) struct SessionJob {
    manager: Arc<SessionManager>,
    handle: Arc<SessionHandle>,
    /// Given when the job is spawned.
    rx: Option<mpsc::Receiver<SessionEvent>>,
    record: SessionRecord,
    driving: Option<Driving>,
    executor_info: ExecutorInfo,
    rounds: Vec<Round>,
    started: Instant,
}

impl SessionJob {
    pub(super) fn new(
        manager: Arc<SessionManager>,
        handle: Arc<SessionHandle>,
        record: SessionRecord,
        driving: Driving,
        executor_info: ExecutorInfo,
    ) -> Self {
        Self {
            manager,
            handle,
            rx: None,
            record,
            driving: Some(driving),
            executor_info,
            rounds: Vec::new(),
            started: Instant::now(),
        }
    }

    async fn run(mut self, rx: mpsc::Receiver<SessionEvent>) {
        self.rx = Some(rx);
        let handle = self.handle.clone();
        let session_timeout = self.manager.settings.session_timeout;
        let deadline = session_timeout.map(|t| self.started + t);
        // The driver is polled first: what the device reported before it went away (its
        // last results, then its close) still completes the session if that is all the
        // session was waiting for; otherwise the cancellation or the timeout wins.
        let outcome = tokio::select! {
            biased;
            o = self.drive() => Some(o),
            _ = handle.cancel.wait() => None,
            _ = sleep_until(deadline) => Some(Outcome::failed(
                Some(EndReason::Timeout),
                text::session_timed_out(fmt_secs(session_timeout.unwrap_or_default())),
                None,
            )),
        };
        let mut outcome = outcome.unwrap_or_else(|| self.cancelled());
        if outcome.result.is_none() && !self.rounds.is_empty() {
            // Whatever the device reported is kept, however the session ended.
            outcome.result = Some(rounds_result(&self.rounds));
        }
        Box::pin(self.finish(outcome)).await;
    }

    fn cancelled(&self) -> Outcome {
        let reason = (*self.handle.cancel_reason.lock()).unwrap_or(CancelReason::Shutdown);
        if let CancelReason::JobTimeout(limit) = reason {
            let error = text::job::timed_out(fmt_secs(limit));
            return Outcome::failed(Some(EndReason::Timeout), error, None);
        }
        let (code, error, notify_requester, notify_executor) = match reason {
            CancelReason::DeviceDisconnected => (
                EndReason::DeviceDisconnected,
                text::DEVICE_DISCONNECTED,
                true,
                false,
            ),
            // The executor is told, unlike in protocol.md §5.3 (issue 15): a session that
            // ends must stop the device's running tool calls.
            CancelReason::RequesterDisconnected => (
                EndReason::RequesterDisconnected,
                text::REQUESTER_DISCONNECTED,
                false,
                true,
            ),
            CancelReason::Shutdown => (EndReason::Shutdown, text::SHUTTING_DOWN, true, true),
            CancelReason::Api => (EndReason::Cancelled, text::CANCELLED_OVER_HTTP, true, true),
            CancelReason::Job | CancelReason::JobTimeout(_) => (
                EndReason::Cancelled,
                text::job::CANCELLED_WITH_JOB,
                true,
                true,
            ),
            CancelReason::NodeLost => (EndReason::NodeLost, text::NODE_LOST, true, true),
        };
        Outcome {
            state: SessionState::Cancelled,
            reason: Some(code),
            error: Some(error.to_owned()),
            result: None,
            notify_requester,
            notify_executor,
        }
    }

    async fn drive(&mut self) -> Outcome {
        let delegate = matches!(self.driving, Some(Driving::Delegated));
        // Pushed before the job started (HTTP dispatch), or pushed now: a WebSocket task
        // nothing here can plan goes to the device (§3.11). Decided by whether a `task`
        // was pushed, not by the acceptance state: the echo may already have arrived.
        let mut pushed = self.handle.task_response_id().is_some();
        if delegate && !pushed {
            self.push_task();
            pushed = true;
        }
        if pushed {
            match self.await_acceptance().await {
                Err(o) => return o,
                Ok(Accepted::Echo) => {
                    self.mark_running().await;
                    if delegate {
                        return Outcome::failed(None, text::NO_AGENT.to_owned(), None);
                    }
                }
                Ok(Accepted::Report(first)) => {
                    self.mark_running().await;
                    return Box::pin(self.delegated(first)).await;
                }
            }
        }
        // Boxed, like `delegated` above and `finish`: a session waiting for its echo
        // (possibly for minutes) then holds only the small acceptance state, not room
        // for the deepest state of every later phase.
        Box::pin(self.driven()).await
    }

    /// Sends the executor a `task` for a session it should run itself.
    fn push_task(&mut self) {
        let msg = ServerMessage::task_assignment(
            &self.record.session_id,
            &self.record.task_name,
            &self.record.request,
            None,
        );
        let registry = &self.manager.registry;
        // Gone or not reachable: its disconnect cancels us, else the accept timeout ends us.
        if let Some(device) = registry.get_conn(&self.handle.executor, self.handle.executor_conn) {
            push_task(registry, &self.handle, &device, &msg);
        }
    }

    async fn await_acceptance(&mut self) -> Result<Accepted, Outcome> {
        // From the session's start: a job parked until now has waited already.
        let limit = self.manager.settings.accept_timeout;
        match tokio::time::timeout_at(self.started + limit, self.recv()).await {
            Err(_) => Err(Outcome::failed(
                Some(EndReason::NotAccepted),
                text::not_accepted(fmt_secs(limit)),
                None,
            )),
            Ok(None) => Err(Outcome::failed(
                None,
                text::driver_error("session channel closed"),
                None,
            )),
            Ok(Some(SessionEvent::Echo)) => Ok(Accepted::Echo),
            Ok(Some(ev)) => Ok(Accepted::Report(ev)),
        }
    }

    /// The next event; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<SessionEvent> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    async fn mark_running(&mut self) {
        let now = Utc::now();
        if self.record.origin == Origin::Http {
            crate::metrics::delivered((now - self.record.created_at).to_std().unwrap_or_default());
        }
        self.record.state = SessionState::Running;
        self.record.started_at = Some(now);
        self.record.echo_received = true;
        self.persist().await;
        publish::state(&self.manager.events, &self.record);
    }

    /// Writes the record; if the store fails, keeps it unsaved (reads show it) and
    /// returns it for [`store_until_saved`]. If the store refuses it by its own rule (the
    /// stored session has ended, or this node was fenced), what the store holds stands:
    /// nothing is kept, and a live session stops (its end then adopts the stored one).
    async fn persist(&self) -> Persisted {
        let manager = &self.manager;
        match manager.store.upsert(self.record.clone()).await {
            Ok(()) => {
                manager.unsaved.forget(&self.record.session_id);
                Persisted::Saved
            }
            Err(e) if e.refusal().is_some() => {
                tracing::warn!(session_id = %self.record.session_id, cause = %e, "session write refused by the store; its stored record stands");
                manager.unsaved.forget(&self.record.session_id);
                if !self.record.state.is_terminal() {
                    self.handle.cancel(CancelReason::NodeLost);
                }
                Persisted::Refused
            }
            Err(e) => {
                tracing::error!(session_id = %self.record.session_id, cause = %e, "could not store session; kept in memory, retrying");
                let kept = Arc::new(self.record.clone());
                manager.unsaved.keep(kept.clone());
                Persisted::Unsaved(kept)
            }
        }
    }

    /// The stored record of this session if it has ended (after a refused write).
    async fn stored_end(&self) -> Option<Arc<SessionRecord>> {
        match self.manager.store.get(&self.record.session_id).await {
            Ok(Some(r)) if r.state.is_terminal() => Some(r),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(session_id = %self.record.session_id, cause = %e, "could not read the stored end of a session");
                None
            }
        }
    }

    /// The device runs the task itself and reports (protocol.md §3.11).
    async fn delegated(&mut self, first: SessionEvent) -> Outcome {
        let task_rid = self.handle.task_response_id();
        let mut next = Some(first);
        loop {
            let ev = match next.take() {
                Some(ev) => ev,
                None => match self.recv().await {
                    Some(ev) => ev,
                    None => std::future::pending().await,
                },
            };
            match ev {
                SessionEvent::Results(r) => {
                    let ReportedResults {
                        prev_response_id,
                        results,
                    } = *r;
                    if prev_response_id.is_some() && prev_response_id == task_rid {
                        self.rounds.push(Round {
                            response_id: task_rid.clone().unwrap_or_default(),
                            actions: Vec::new(),
                            action_results: results,
                        });
                        publish::round(&self.manager.events, &self.record, &self.rounds);
                        self.record.result = Some(Box::new(rounds_result(&self.rounds)));
                        self.persist().await;
                    } else {
                        tracing::warn!(session_id = %self.record.session_id, "command_results with a foreign prev_response_id dropped");
                    }
                }
                SessionEvent::ClientEnd(end) => {
                    let ClientEnd {
                        completed,
                        error,
                        result,
                    } = *end;
                    let mut value = rounds_result(&self.rounds);
                    if let (Some(r), Some(obj)) = (result, value.as_object_mut()) {
                        obj.insert("result".into(), r);
                    }
                    return Outcome {
                        notify_executor: false,
                        ..Outcome::ended(completed, error, Some(value))
                    };
                }
                SessionEvent::Echo => {}
            }
        }
    }

    /// The server drives the session with its driver.
    async fn driven(&mut self) -> Outcome {
        let mut driver = match self.driving.take() {
            Some(Driving::Driver(d)) => d,
            _ => return Outcome::failed(None, text::driver_error("no driver"), None),
        };
        loop {
            let ctx = SessionContext::of(&self.record, &self.executor_info);
            let step = match driver.next_step(&ctx, &self.rounds).await {
                Ok(step) => step,
                Err(e) => return Outcome::failed(None, text::driver_error(&e.to_string()), None),
            };
            let (agent_name, process_name, root_name, mut actions) = match step {
                Step::Finish {
                    completed,
                    result,
                    error,
                } => return Outcome::ended(completed, error, result),
                Step::Commands {
                    agent_name,
                    process_name,
                    root_name,
                    actions,
                } => (agent_name, process_name, root_name, actions),
            };
            if actions.is_empty() {
                return Outcome::failed(None, text::driver_error("a step has no actions"), None);
            }
            if agent_name.is_empty() {
                return Outcome::failed(None, text::driver_error("a step has no agent_name"), None);
            }
            for a in &mut actions {
                if a.call_id.as_deref().is_none_or(str::is_empty) {
                    a.call_id = Some(uuid::Uuid::new_v4().to_string());
                }
            }
            if !self.rounds.is_empty() {
                // The previous round's results, stored before the next command goes out
                // (built here, not after every round: the last round's go with the final
                // state, which the driver's `Finish` or `run` builds).
                self.record.result = Some(Box::new(rounds_result(&self.rounds)));
                self.persist().await;
            }
            let mut msg = ServerMessage::new(ServerMessageType::Command, TaskStatus::Continue);
            msg.agent_name = Some(agent_name);
            msg.process_name = process_name;
            msg.root_name = root_name;
            msg.actions = Some(actions.clone());
            msg.session_id = Some(self.record.session_id.clone());
            msg.task_name = Some(self.record.task_name.clone());
            let rid = msg.response_id.clone().unwrap_or_default();
            let round = u32::try_from(self.rounds.len() + 1).unwrap_or(u32::MAX);
            let tools = actions.iter().map(|a| a.tool_name.clone()).collect();
            self.handle.set_step(round, tools);
            if let Some(device) = self
                .manager
                .registry
                .get_conn(&self.handle.executor, self.handle.executor_conn)
            {
                let _ = device.send(&msg);
            }
            let results = self.await_results(&rid, &actions).await;
            self.rounds.push(Round {
                response_id: rid,
                actions,
                action_results: results,
            });
            publish::round(&self.manager.events, &self.record, &self.rounds);
        }
    }

    async fn await_results(
        &mut self,
        rid: &str,
        actions: &[aip_protocol::Command],
    ) -> Vec<ActionResult> {
        let limit = self.manager.settings.command_timeout;
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Err(_) | Ok(None) => {
                    tracing::warn!(session_id = %self.record.session_id, "command timed out");
                    let error = text::command_timed_out(fmt_secs(limit));
                    return actions
                        .iter()
                        .map(|a| ActionResult {
                            status: ResultStatus::Failure,
                            error: Some(error.clone()),
                            result: None,
                            namespace: None,
                            call_id: a.call_id.clone(),
                        })
                        .collect();
                }
                Ok(Some(SessionEvent::Results(r))) => {
                    if r.prev_response_id.as_deref() == Some(rid) {
                        return r.results;
                    }
                    tracing::warn!(session_id = %self.record.session_id, "late or foreign command_results dropped");
                }
                Ok(Some(_)) => {}
            }
        }
    }

    async fn finish(mut self, o: Outcome) {
        let Outcome {
            state,
            reason,
            error,
            result,
            notify_requester,
            notify_executor,
        } = o;
        let sid = self.record.session_id.clone();
        // The `task_end` frame is serialised once, here, and the result then moves into
        // the record: it is neither deep-copied nor serialised once per recipient.
        let mut end = ServerMessage::task_end(
            &sid,
            &self.record.task_name,
            state == SessionState::Completed,
            result,
            error.clone(),
        );
        let mut end_json = end.to_json();
        self.record.state = state;
        self.record.reason = reason;
        self.record.error = error;
        self.record.result = end.result.take().map(Box::new);
        let finished = Utc::now();
        self.record.finished_at = Some(finished);
        crate::metrics::session_ended(
            state.as_str(),
            reason.map_or("none", EndReason::as_str),
            (finished - self.record.created_at)
                .to_std()
                .unwrap_or_default(),
        );
        // Stored before anyone is told; if the store fails, the final state is kept in
        // memory (reads show it), everyone is told, and the write is retried below. If the
        // store refuses it because the session has ended there already (another node
        // ended it), the stored end is what everyone is told: a result is never
        // contradicted later.
        let unsaved = match self.persist().await {
            Persisted::Saved => None,
            Persisted::Unsaved(r) => Some(r),
            Persisted::Refused => {
                if let Some(stored) = self.stored_end().await {
                    end_json = stored.task_end().to_json();
                    self.record = SessionRecord::clone(&stored);
                }
                None
            }
        };
        publish::ended(&self.manager.events, &self.record);
        self.manager.release(&sid);
        self.manager.unindex(&self.handle);

        let h = &self.handle;
        let requester_is_executor = h.requester.as_deref() == Some(h.executor.as_str())
            && h.requester_conn == Some(h.executor_conn);
        let tell = |client: &str, conn| {
            if let Some(e) = self.manager.registry.get_conn(client, conn) {
                let _ = e.send_text(end_json.clone());
            }
        };
        if requester_is_executor {
            // A device's own session: it hears once, unless it ended the session itself.
            if notify_executor {
                tell(&h.executor, h.executor_conn);
            }
        } else {
            if notify_requester {
                if let (Some(requester), Some(conn)) = (&h.requester, h.requester_conn) {
                    tell(requester, conn);
                }
            }
            if notify_executor {
                tell(&h.executor, h.executor_conn);
            }
        }
        tracing::info!(
            session_id = %sid,
            state = state.as_str(),
            reason = reason.map_or("", EndReason::as_str),
            "session ended"
        );
        h.done.set();
        if let Some(record) = unsaved {
            store_until_saved(&self.manager, record).await;
        }
    }
}

/// What became of a write of a session's record.
enum Persisted {
    Saved,
    /// The store failed; kept in memory, to retry.
    Unsaved(Arc<SessionRecord>),
    /// The store refused it by its own rule; its stored record stands.
    Refused,
}

impl Parked for SessionJob {
    fn spawn(self: Box<Self>, rx: mpsc::Receiver<SessionEvent>) {
        tokio::spawn((*self).run(rx));
    }

    fn cancel_alarm(&self, alarm: AlarmKey) {
        self.manager.alarms.cancel(alarm);
    }

    /// When a parked job must run even if nothing happens: its accept timeout, or its
    /// session timeout if that is earlier.
    fn wake_at(&self) -> Instant {
        let settings = &self.manager.settings;
        let limit = match settings.session_timeout {
            Some(t) => t.min(settings.accept_timeout),
            None => settings.accept_timeout,
        };
        self.started + limit
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
