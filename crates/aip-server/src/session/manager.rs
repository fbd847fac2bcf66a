//! The session manager: live sessions by id, the active-session limit, and what every
//! session's job uses (settings, the registry to reach its peers, the store, the timer
//! of parked jobs, the writes the store refused). Opening a session is in `open.rs`,
//! reading records in `records.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::alarm::{self, Alarms};
use super::driver::DriverFactory;
use super::handle::{CancelReason, SessionHandle};
use super::unsaved::Unsaved;
use crate::config::{PlatformMode, ServerConfig};
use crate::events::EventBus;
use crate::registry::Registry;
use crate::storage::{SessionStore, StoreError};
use crate::IdDashMap;

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
    pub(super) live: IdDashMap<Arc<str>, Arc<SessionHandle>>,
    pub(super) active: AtomicUsize,
    pub(super) settings: SessionSettings,
    pub(super) alarms: Arc<Alarms>,
    pub(super) registry: Arc<Registry>,
    pub(super) store: Arc<dyn SessionStore>,
    /// Plans natural-language requests; `None`: they are delegated to the device.
    pub(super) drivers: Option<Arc<dyn DriverFactory>>,
    /// States the store refused, kept until a retried write lands.
    pub(super) unsaved: Unsaved,
    /// Where sessions announce their changes (`GET /api/events`).
    pub events: Arc<EventBus>,
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
            unsaved: Unsaved::default(),
            events: Arc::new(EventBus::default()),
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

    pub(super) fn reserve(&self) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_active).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn release(&self, session_id: &str) {
        if self.live.remove(session_id).is_some() {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
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

impl SessionManager {
    /// What the alarm timer wakes parked sessions with; it holds the manager weakly.
    pub(super) fn waker(self: &Arc<Self>) -> alarm::Waker {
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
    pub(super) fn unindex(&self, h: &SessionHandle) {
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
