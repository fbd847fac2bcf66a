//! A live session as everybody but its job sees it: the [`SessionHandle`] (ids, who asked
//! and who runs it, acceptance, the event channel, the cancel flag), the events it is
//! sent, and where its job is ([`Run`]: not started, parked, spawned).
//!
//! The handle knows its job only as [`Parked`]: something it can spawn once an event,
//! a cancellation or its alarm arrives; the job (`job.rs`) depends on the handle, never
//! the other way round.

use std::sync::atomic::AtomicU8;
use std::sync::{Arc, OnceLock};

use aip_protocol::ActionResult;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use super::alarm::AlarmKey;
use super::flag::Flag;
use crate::storage::{Origin, SessionRecord};

/// Why a session is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    DeviceDisconnected,
    RequesterDisconnected,
    Shutdown,
    /// `DELETE /api/sessions/{id}`.
    Api,
    /// Cluster mode: the cluster declared this node lost and failed its sessions.
    NodeLost,
}

/// Something that happened to a session, delivered to its job.
///
/// The payloads are boxed: every live session's channel allocates a block of 32 slots
/// up front, so the size of this type is paid per session whether or not it is sent.
#[derive(Debug)]
pub enum SessionEvent {
    /// The executor echoed the pushed `task`; the acknowledgement is already queued.
    Echo,
    /// A `command_results` from the executor.
    Results(Box<ReportedResults>),
    /// A `task_end` from the executor of a session it runs itself.
    ClientEnd(Box<ClientEnd>),
}

/// Payload of [`SessionEvent::Results`].
#[derive(Debug)]
pub struct ReportedResults {
    pub prev_response_id: Option<String>,
    pub results: Vec<ActionResult>,
}

/// Payload of [`SessionEvent::ClientEnd`].
#[derive(Debug)]
pub struct ClientEnd {
    pub completed: bool,
    pub error: Option<String>,
    pub result: Option<Value>,
}

/// Capacity of a session's event channel.
const EVENT_QUEUE: usize = 64;

/// How the executor has taken up a task that was pushed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Acceptance {
    /// No `task` was pushed (the requester is driving it directly).
    NotApplicable = 0,
    /// A `task` was pushed; neither echo nor report yet.
    Awaiting = 1,
    /// The device echoed: the server drives it.
    Echoed = 2,
    /// The device reported first: it runs the task itself.
    Reported = 3,
}

impl Acceptance {
    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Awaiting,
            2 => Self::Echoed,
            3 => Self::Reported,
            _ => Self::NotApplicable,
        }
    }
}

/// A session's job as its handle holds it while parked.
pub(super) trait Parked: Send + 'static {
    /// Runs the job on its own task, with its event channel.
    fn spawn(self: Box<Self>, rx: mpsc::Receiver<SessionEvent>);
    /// Cancels the alarm that would have woken it.
    fn cancel_alarm(&self, alarm: AlarmKey);
    /// When it must run even if nothing happens.
    fn wake_at(&self) -> tokio::time::Instant;
}

/// Where a session's job is.
enum Run {
    /// Created, the job not handed over yet; the receiver if an early event opened the
    /// channel (the job is then spawned at once).
    Unstarted(Option<mpsc::Receiver<SessionEvent>>),
    /// Waiting for the executor to take up the pushed task: no task, no channel.
    Dormant {
        job: Box<dyn Parked>,
        alarm: AlarmKey,
    },
    /// Spawned.
    Running,
}

/// Shared view of a live session.
pub struct SessionHandle {
    /// Shared with the live map, the executor's and requester's session sets and the
    /// alarm: one allocation per session.
    pub session_id: Arc<str>,
    pub task_name: String,
    pub origin: Origin,
    /// Requester client id; `None` for the HTTP API.
    pub requester: Option<String>,
    pub requester_conn: Option<u64>,
    pub executor: String,
    pub executor_conn: u64,
    pub(super) acceptance: AtomicU8,
    pub(super) task_response_id: Mutex<Option<String>>,
    /// Opened by the first event, or when the job is spawned.
    events: OnceLock<mpsc::Sender<SessionEvent>>,
    run: Mutex<Run>,
    pub(super) cancel: Flag,
    pub(super) cancel_reason: Mutex<Option<CancelReason>>,
    pub(super) done: Flag,
    /// The round in progress, while the server drives the session.
    step: Mutex<Option<Arc<CurrentStep>>>,
}

/// The round a driven session is in: its number (1-based) and the tools it called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentStep {
    pub round: u32,
    pub tools: Vec<String>,
}

impl SessionHandle {
    /// The handle of a new session of `record`, its job not started yet.
    pub(super) fn new(
        record: &SessionRecord,
        requester_conn: Option<u64>,
        executor_conn: u64,
    ) -> Self {
        Self {
            session_id: Arc::from(record.session_id.as_str()),
            task_name: record.task_name.clone(),
            origin: record.origin,
            requester: record.requester.clone(),
            requester_conn,
            executor: record.executor.clone(),
            executor_conn,
            acceptance: AtomicU8::new(Acceptance::NotApplicable as u8),
            task_response_id: Mutex::new(None),
            events: OnceLock::new(),
            run: Mutex::new(Run::Unstarted(None)),
            cancel: Flag::default(),
            cancel_reason: Mutex::new(None),
            done: Flag::default(),
            step: Mutex::new(None),
        }
    }

    /// Hands the job over: spawned now, or parked (`park` sets its alarm) if nothing has
    /// happened to the session yet and its pushed task awaits the echo. A second start
    /// is ignored.
    pub(super) fn start(&self, job: Box<dyn Parked>, park: impl FnOnce(&dyn Parked) -> AlarmKey) {
        let mut run = self.run.lock();
        let rx = match std::mem::replace(&mut *run, Run::Running) {
            Run::Unstarted(Some(rx)) => rx,
            Run::Unstarted(None) if self.acceptance() == Acceptance::Awaiting => {
                let alarm = park(&*job);
                *run = Run::Dormant { job, alarm };
                return;
            }
            Run::Unstarted(None) => self.open_channel(),
            // Started twice: the first start stands.
            other => {
                *run = other;
                return;
            }
        };
        drop(run);
        job.spawn(rx);
    }
    /// Delivers an event to the job (waits if the job is behind: backpressure on the
    /// sender's connection only).
    pub async fn deliver(&self, event: SessionEvent) {
        self.wake();
        let sent = match self.events.get() {
            Some(tx) => tx.send(event).await.is_ok(),
            None => false,
        };
        if !sent {
            tracing::debug!(session_id = %self.session_id, "event for a finished session dropped");
        }
    }

    /// Cancels the session; the first reason wins.
    pub fn cancel(&self, reason: CancelReason) {
        {
            let mut r = self.cancel_reason.lock();
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.cancel.set();
        self.wake();
    }

    /// Opens the event channel if it is not open yet; a parked job is spawned with it.
    pub(super) fn wake(&self) {
        let mut run = self.run.lock();
        match std::mem::replace(&mut *run, Run::Running) {
            Run::Running => {}
            Run::Unstarted(rx) => {
                *run = Run::Unstarted(Some(rx.unwrap_or_else(|| self.open_channel())));
            }
            Run::Dormant { job, alarm } => {
                let rx = self.open_channel();
                drop(run);
                job.cancel_alarm(alarm);
                job.spawn(rx);
            }
        }
    }

    fn open_channel(&self) -> mpsc::Receiver<SessionEvent> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        // Called under `run`'s lock, once per session: the cell is empty.
        let _ = self.events.set(tx);
        rx
    }

    /// The round in progress (driven sessions, once the first command went out).
    pub fn step(&self) -> Option<Arc<CurrentStep>> {
        self.step.lock().clone()
    }

    /// Records that round `round` went out with these tools.
    pub(super) fn set_step(&self, round: u32, tools: Vec<String>) {
        *self.step.lock() = Some(Arc::new(CurrentStep { round, tools }));
    }

    /// Resolves once the job has stored its final state.
    pub async fn finished(&self) {
        self.done.wait().await
    }
}
