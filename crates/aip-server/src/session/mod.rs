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
//! costs about half the memory of a running one and nothing to schedule.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use aip_protocol::ActionResult;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::Notify;

use crate::state::AppState;
use crate::storage::{Origin, SessionRecord, StoreError};
use crate::IdDashMap;

pub mod agent;
mod alarm;
pub mod driver;
mod job;

use alarm::{AlarmKey, Alarms};

use driver::{ExecutorInfo, SessionDriver};

/// What plans a session.
pub enum Planner {
    /// A driver decides the rounds (plan or agent).
    Driver(Box<dyn SessionDriver>),
    /// Nothing on the server can plan it: the device runs it itself (protocol.md §3.11).
    Delegate,
}

/// How the executor has taken up a task that was pushed to it (protocol.md §3.6).
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
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Awaiting,
            2 => Self::Echoed,
            3 => Self::Reported,
            _ => Self::NotApplicable,
        }
    }
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
    pub owner: Option<String>,
    pub owner_conn: Option<u64>,
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
    /// Current acceptance state.
    pub fn acceptance(&self) -> Acceptance {
        Acceptance::from_u8(self.acceptance.load(Ordering::Acquire))
    }

    /// Moves `from` → `to`; false if the state was something else.
    pub fn transition(&self, from: Acceptance, to: Acceptance) -> bool {
        self.acceptance
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records that a `task` with `response_id` was pushed to the executor.
    pub fn set_pushed(&self, response_id: String) {
        *self.task_response_id.lock() = Some(response_id);
        self.acceptance
            .store(Acceptance::Awaiting as u8, Ordering::Release);
    }

    /// `response_id` of the pushed `task`, if any.
    pub fn task_response_id(&self) -> Option<String> {
        self.task_response_id.lock().clone()
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

/// A flag set once that tasks can wait for: what a `CancellationToken` would do for a
/// session's cancellation and end, without the tree node it allocates (two per session,
/// ~250 bytes of every session waiting for its device).
#[derive(Default)]
struct Flag {
    set: AtomicBool,
    notify: Notify,
}

impl Flag {
    /// Sets the flag and wakes every waiter; later calls do nothing.
    fn set(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Resolves once the flag is set.
    async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a `set` in between still wakes this waiter.
        notified.as_mut().enable();
        if self.set.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("Too many active sessions")]
    TooMany,
    #[error("session_id is live")]
    Live { owner: Option<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Live sessions and the active-session limit.
pub struct SessionManager {
    live: IdDashMap<Arc<str>, Arc<SessionHandle>>,
    active: AtomicUsize,
    max_active: usize,
    alarms: Arc<Alarms>,
}

/// Everything needed to create a session.
pub struct NewSession {
    pub record: SessionRecord,
    /// `record.session_id` was generated by this server just now (not given by a client).
    pub fresh_id: bool,
    pub owner_conn: Option<u64>,
    pub executor_conn: u64,
    pub planner: Planner,
    /// The executor's system info and tools, for the driver.
    pub executor_info: ExecutorInfo,
}

/// A created (stored, indexed) session whose job has not started yet.
pub struct PendingSession {
    pub handle: Arc<SessionHandle>,
    record: SessionRecord,
    planner: Planner,
    executor_info: ExecutorInfo,
}

impl SessionManager {
    /// An empty manager allowing `max_active` live sessions.
    pub fn new(max_active: usize) -> Self {
        Self {
            live: IdDashMap::default(),
            active: AtomicUsize::new(0),
            max_active,
            alarms: Arc::new(Alarms::default()),
        }
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
                (n < self.max_active).then_some(n + 1)
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
    pub async fn create(
        &self,
        app: &Arc<AppState>,
        new: NewSession,
    ) -> Result<PendingSession, CreateError> {
        if !self.reserve() {
            return Err(CreateError::TooMany);
        }
        let record = new.record;
        crate::metrics::session_started(record.origin.as_str());
        let handle = Arc::new(SessionHandle {
            session_id: Arc::from(record.session_id.as_str()),
            task_name: record.task_name.clone(),
            origin: record.origin,
            owner: record.owner.clone(),
            owner_conn: new.owner_conn,
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
                let owner = o.get().owner.clone();
                drop(o);
                self.active.fetch_sub(1, Ordering::AcqRel);
                return Err(CreateError::Live { owner });
            }
            Entry::Vacant(v) => {
                v.insert(handle.clone());
            }
        }
        let stored = if new.fresh_id {
            app.store.insert_new(record.clone()).await
        } else {
            app.store.upsert(record.clone()).await
        };
        if let Err(e) = stored {
            self.release(&record.session_id);
            return Err(e.into());
        }
        // Index by requester and executor; if either vanished meanwhile, its disconnect
        // procedure may have missed us, so cancel now.
        let sid = &handle.session_id;
        if let (Some(owner), Some(conn)) = (&handle.owner, handle.owner_conn) {
            match app.registry.get_conn(owner, conn) {
                Some(e) => {
                    e.as_requester.lock().insert(Arc::clone(sid));
                }
                None => handle.cancel(CancelReason::RequesterDisconnected),
            }
        }
        match app
            .registry
            .get_conn(&handle.executor, handle.executor_conn)
        {
            Some(e) => {
                e.as_executor.lock().insert(Arc::clone(sid));
            }
            None => handle.cancel(CancelReason::DeviceDisconnected),
        }
        if let (Some(owner), Some(conn)) = (&handle.owner, handle.owner_conn) {
            if app.registry.get_conn(owner, conn).is_none() {
                handle.cancel(CancelReason::RequesterDisconnected);
            }
        }
        if app
            .registry
            .get_conn(&handle.executor, handle.executor_conn)
            .is_none()
        {
            handle.cancel(CancelReason::DeviceDisconnected);
        }
        Ok(PendingSession {
            handle,
            record,
            planner: new.planner,
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
    pub fn start(self, app: &Arc<AppState>) {
        let handle = self.handle.clone();
        let job = job::SessionJob::new(
            app.clone(),
            self.handle,
            self.record,
            self.planner,
            self.executor_info,
        );
        let mut run = handle.run.lock();
        let rx = match std::mem::replace(&mut *run, Run::Running) {
            Run::Unstarted(Some(rx)) => rx,
            Run::Unstarted(None) if handle.acceptance() == Acceptance::Awaiting => {
                let alarm = app
                    .sessions
                    .alarms
                    .set(app, job.wake_at(), &handle.session_id);
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
    pub async fn abort(self, app: &Arc<AppState>) {
        let sid = &self.handle.session_id;
        app.sessions.release(sid);
        unindex(app, &self.handle);
        if let Some(e) = app.registry.get(&self.handle.executor) {
            e.remove_pending_echo(sid);
        }
        if let Err(e) = app.store.delete(sid).await {
            tracing::error!(session_id = %sid, cause = %e, "could not delete an aborted session");
        }
        self.handle.done.set();
    }
}

fn unindex(app: &AppState, h: &SessionHandle) {
    if let Some(owner) = &h.owner {
        if let Some(e) = app.registry.get(owner) {
            e.as_requester.lock().remove(&h.session_id);
        }
    }
    if let Some(e) = app.registry.get(&h.executor) {
        e.as_executor.lock().remove(&h.session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::Flag;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn flag_wakes_waiters_set_before_and_after_they_wait() {
        let flag = Arc::new(Flag::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let flag = flag.clone();
                tokio::spawn(async move { flag.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        flag.set();
        flag.set();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
        // Already set: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), flag.wait())
            .await
            .expect("waiting on a set flag did not resolve");
    }

    #[tokio::test]
    async fn flag_not_set_keeps_waiting() {
        let flag = Flag::default();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), flag.wait())
                .await
                .is_err(),
            "an unset flag resolved"
        );
    }
}
