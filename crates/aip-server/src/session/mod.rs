//! Session manager (server.md §4): creates sessions, runs each as an independent job
//! ([`job`]), routes device reports to it and cancels it.
//!
//! All state changes of one session happen inside its job, so results, timeouts,
//! cancellations and completion cannot race into two terminal states. Everybody else
//! talks to the job through its [`SessionHandle`]: an event channel and a cancel token.
//!
//! A session whose `task` was pushed (HTTP dispatch) may wait a long time for the
//! device's echo, and many may wait at once. Until something happens to it, such a
//! session has no task and no channel of its own: its job is parked in the handle
//! ([`Run::Dormant`]) and one shared timer ([`alarm::Alarms`]) wakes it when its accept
//! timeout (or session timeout) is due. The first event, cancellation or alarm spawns
//! the job, which then runs exactly as if it had been spawned at once. A parked session
//! holds no task and no channel, and costs nothing to schedule.
//!
//! The manager owns what jobs need (registry, store, settings, driver factory), so the
//! layer is built and tested without the web layer (`tests.rs`). Files: `open.rs` (the
//! one way to open a session), `accept.rs` (acceptance transitions), `job.rs` (a
//! session's state machine), `records.rs` (reads, and writes the store refused),
//! `alarm.rs` (the timer of parked jobs), `flag.rs`,
//! [`driver`] (the driver trait, the plan driver) and [`llm`] (the LLM agent driver).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aip_protocol::ActionResult;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{PlatformMode, ServerConfig};
use crate::registry::{ExecutorInfo, Registry};
use crate::storage::{Origin, SessionRecord, SessionStore, StoreError};
use crate::IdDashMap;

mod accept;
mod alarm;
pub mod driver;
mod flag;
mod job;
pub mod llm;
mod open;
mod records;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use accept::Acceptance;
pub use open::OpenRequest;

use alarm::{AlarmKey, Alarms};
use driver::{DriverFactory, SessionDriver};
use flag::Flag;

/// Who drives a session: a driver on the server, or the device itself.
pub enum Driving {
    /// A driver decides the rounds (plan or LLM agent).
    Driver(Box<dyn SessionDriver>),
    /// Nothing on the server can plan it: the device runs it itself (protocol.md §3.11).
    Delegated,
}

/// Why a session is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    DeviceDisconnected,
    RequesterDisconnected,
    Shutdown,
    /// `DELETE /api/sessions/{id}`.
    Api,
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

/// Where a session's job is.
enum Run {
    /// Created, the job not handed over yet; the receiver if an early event opened the
    /// channel (the job is then spawned at once).
    Unstarted(Option<mpsc::Receiver<SessionEvent>>),
    /// Waiting for the executor to take up the pushed task: no task, no channel.
    Dormant {
        job: Box<job::SessionJob>,
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
    acceptance: AtomicU8,
    task_response_id: Mutex<Option<String>>,
    /// Opened by the first event, or when the job is spawned.
    events: OnceLock<mpsc::Sender<SessionEvent>>,
    run: Mutex<Run>,
    cancel: Flag,
    cancel_reason: Mutex<Option<CancelReason>>,
    done: Flag,
}

impl SessionHandle {
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
    fn wake(&self) {
        let mut run = self.run.lock();
        match std::mem::replace(&mut *run, Run::Running) {
            Run::Running => {}
            Run::Unstarted(rx) => {
                *run = Run::Unstarted(Some(rx.unwrap_or_else(|| self.open_channel())));
            }
            Run::Dormant { job, alarm } => {
                let rx = self.open_channel();
                drop(run);
                job.alarms().cancel(alarm);
                tokio::spawn(job.run(rx));
            }
        }
    }

    fn open_channel(&self) -> mpsc::Receiver<SessionEvent> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        // Called under `run`'s lock, once per session: the cell is empty.
        let _ = self.events.set(tx);
        rx
    }

    /// Resolves once the job has stored its final state.
    pub async fn finished(&self) {
        self.done.wait().await
    }
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("Too many active sessions")]
    TooMany,
    #[error("session_id is live")]
    Live { requester: Option<String> },
    /// The executor went away before its `task` could be queued.
    #[error("the executor is not connected")]
    ExecutorGone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What sessions take from the server's configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub max_active: usize,
    /// How the platform handed to drivers is chosen.
    pub platform: PlatformMode,
    /// `None`: sessions never time out.
    pub session_timeout: Option<Duration>,
    pub command_timeout: Duration,
    pub accept_timeout: Duration,
}

impl SessionSettings {
    /// The session settings of `config`.
    pub fn of(config: &ServerConfig) -> Self {
        Self {
            max_active: config.max_active_sessions,
            platform: config.platform,
            session_timeout: config.session_timeout,
            command_timeout: config.command_timeout,
            accept_timeout: config.accept_timeout,
        }
    }
}

/// Live sessions, the active-session limit, and the handles their jobs use: the
/// registry (to reach the requester and the executor), the store, the driver factory.
pub struct SessionManager {
    live: IdDashMap<Arc<str>, Arc<SessionHandle>>,
    active: AtomicUsize,
    settings: SessionSettings,
    alarms: Arc<Alarms>,
    registry: Arc<Registry>,
    store: Arc<dyn SessionStore>,
    /// Plans natural-language requests; `None`: they are delegated to the device.
    drivers: Option<Arc<dyn DriverFactory>>,
    /// States the store refused, kept until a retried write lands.
    unsaved: records::Unsaved,
}

/// Everything needed to create a session.
struct NewSession {
    record: SessionRecord,
    /// `record.session_id` was generated by this server just now (not given by a client).
    generated_id: bool,
    requester_conn: Option<u64>,
    executor_conn: u64,
    driving: Driving,
    /// The executor's system info and tools, for the driver.
    executor_info: ExecutorInfo,
}

/// A created (stored, indexed) session whose job has not started yet.
struct PendingSession {
    manager: Arc<SessionManager>,
    handle: Arc<SessionHandle>,
    record: SessionRecord,
    driving: Driving,
    executor_info: ExecutorInfo,
}

impl SessionManager {
    /// An empty manager; sessions reach clients through `registry` and are stored in
    /// `store`; `drivers` plans natural-language requests (`None`: delegation).
    pub fn new(
        settings: SessionSettings,
        registry: Arc<Registry>,
        store: Arc<dyn SessionStore>,
        drivers: Option<Arc<dyn DriverFactory>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            live: IdDashMap::default(),
            active: AtomicUsize::new(0),
            settings,
            alarms: Arc::new(Alarms::default()),
            registry,
            store,
            drivers,
            unsaved: records::Unsaved::default(),
        })
    }

    /// What the sessions were configured with.
    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The live session `session_id`.
    pub fn get(&self, session_id: &str) -> Option<Arc<SessionHandle>> {
        self.live.get(session_id).map(|h| h.clone())
    }

    /// Number of live sessions.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.live.iter().map(|h| h.value().clone()).collect()
    }

    fn reserve(&self) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_active).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, session_id: &str) {
        if self.live.remove(session_id).is_some() {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Stores and indexes a new session. The caller queues its first frames, then calls
    /// [`PendingSession::start`] (or [`PendingSession::abort`]).
    async fn create(self: &Arc<Self>, new: NewSession) -> Result<PendingSession, CreateError> {
        if !self.reserve() {
            return Err(CreateError::TooMany);
        }
        let record = new.record;
        crate::metrics::session_started(record.origin.as_str());
        let handle = Arc::new(SessionHandle {
            session_id: Arc::from(record.session_id.as_str()),
            task_name: record.task_name.clone(),
            origin: record.origin,
            requester: record.requester.clone(),
            requester_conn: new.requester_conn,
            executor: record.executor.clone(),
            executor_conn: new.executor_conn,
            acceptance: AtomicU8::new(Acceptance::NotApplicable as u8),
            task_response_id: Mutex::new(None),
            events: OnceLock::new(),
            run: Mutex::new(Run::Unstarted(None)),
            cancel: Flag::default(),
            cancel_reason: Mutex::new(None),
            done: Flag::default(),
        });
        match self.live.entry(Arc::clone(&handle.session_id)) {
            Entry::Occupied(o) => {
                let requester = o.get().requester.clone();
                drop(o);
                self.active.fetch_sub(1, Ordering::AcqRel);
                return Err(CreateError::Live { requester });
            }
            Entry::Vacant(v) => {
                v.insert(handle.clone());
            }
        }
        let stored = if new.generated_id {
            self.store.insert_generated(record.clone()).await
        } else {
            self.store.upsert(record.clone()).await
        };
        if let Err(e) = stored {
            self.release(&record.session_id);
            return Err(e.into());
        }
        // An earlier session of this id whose end is not stored yet stops retrying.
        self.unsaved.forget(&record.session_id);
        // Index by requester and executor; if either vanished meanwhile, its disconnect
        // procedure may have missed us, so cancel now.
        let sid = &handle.session_id;
        if let (Some(requester), Some(conn)) = (&handle.requester, handle.requester_conn) {
            match self.registry.get_conn(requester, conn) {
                Some(e) => {
                    e.as_requester.lock().insert(Arc::clone(sid));
                }
                None => handle.cancel(CancelReason::RequesterDisconnected),
            }
        }
        match self
            .registry
            .get_conn(&handle.executor, handle.executor_conn)
        {
            Some(e) => {
                e.as_executor.lock().insert(Arc::clone(sid));
            }
            None => handle.cancel(CancelReason::DeviceDisconnected),
        }
        if let (Some(requester), Some(conn)) = (&handle.requester, handle.requester_conn) {
            if self.registry.get_conn(requester, conn).is_none() {
                handle.cancel(CancelReason::RequesterDisconnected);
            }
        }
        if self
            .registry
            .get_conn(&handle.executor, handle.executor_conn)
            .is_none()
        {
            handle.cancel(CancelReason::DeviceDisconnected);
        }
        Ok(PendingSession {
            manager: Arc::clone(self),
            handle,
            record,
            driving: new.driving,
            executor_info: new.executor_info,
        })
    }

    /// Cancels every live session (shutdown) and waits until they are stored.
    pub async fn cancel_all(&self, reason: CancelReason) {
        let all = self.all();
        for h in &all {
            h.cancel(reason);
        }
        for h in all {
            h.finished().await;
        }
    }
}

impl PendingSession {
    /// Starts the session's job: spawned now, or parked until the executor takes up the
    /// pushed task (or its timeout is due) if nothing has happened to it yet.
    fn start(self) {
        let handle = self.handle.clone();
        let manager = self.manager;
        let job = job::SessionJob::new(
            Arc::clone(&manager),
            self.handle,
            self.record,
            self.driving,
            self.executor_info,
        );
        let mut run = handle.run.lock();
        let rx = match std::mem::replace(&mut *run, Run::Running) {
            Run::Unstarted(Some(rx)) => rx,
            Run::Unstarted(None) if handle.acceptance() == Acceptance::Awaiting => {
                let alarm =
                    manager
                        .alarms
                        .set(|| manager.waker(), job.wake_at(), &handle.session_id);
                *run = Run::Dormant {
                    job: Box::new(job),
                    alarm,
                };
                return;
            }
            Run::Unstarted(None) => handle.open_channel(),
            // Started twice: the first start stands.
            other => {
                *run = other;
                return;
            }
        };
        drop(run);
        tokio::spawn(job.run(rx));
    }

    /// Undoes [`SessionManager::create`]: the session never existed.
    async fn abort(self) {
        let sid = &self.handle.session_id;
        let manager = &self.manager;
        manager.release(sid);
        manager.unindex(&self.handle);
        if let Some(e) = manager.registry.get(&self.handle.executor) {
            e.remove_pending_echo(sid);
        }
        if let Err(e) = manager.store.delete(sid).await {
            tracing::error!(session_id = %sid, cause = %e, "could not delete an aborted session");
        }
        self.handle.done.set();
    }
}

impl SessionManager {
    /// What the alarm timer wakes parked sessions with; it holds the manager weakly.
    fn waker(self: &Arc<Self>) -> alarm::Waker {
        let manager = Arc::downgrade(self);
        Box::new(move |session_id| {
            let Some(manager) = manager.upgrade() else {
                return false;
            };
            if let Some(h) = manager.get(session_id) {
                h.wake();
            }
            true
        })
    }

    /// Removes a session from its requester's and executor's session sets.
    fn unindex(&self, h: &SessionHandle) {
        if let Some(requester) = &h.requester {
            if let Some(e) = self.registry.get(requester) {
                e.as_requester.lock().remove(&h.session_id);
            }
        }
        if let Some(e) = self.registry.get(&h.executor) {
            e.as_executor.lock().remove(&h.session_id);
        }
    }
}
