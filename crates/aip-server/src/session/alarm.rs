//! One timer for every parked session (see [`super::Run::Dormant`]).
//!
//! A parked session registers the instant its job must run even if nothing happens
//! (its accept or session timeout). One task per server sleeps until the earliest such
//! instant and wakes the sessions that are due. Waking a session for any other reason
//! removes its alarm, so the set holds parked sessions only (bounded by the active-session
//! limit).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::state::AppState;

/// Identifies one alarm: when, and a sequence number for alarms due at the same instant.
pub(super) type AlarmKey = (Instant, u64);

/// The alarms of every parked session.
#[derive(Default)]
pub(super) struct Alarms {
    due: Mutex<BTreeMap<AlarmKey, String>>,
    seq: AtomicU64,
    /// An alarm earlier than every other was set.
    earlier: Notify,
    timer: OnceLock<()>,
}

impl Alarms {
    /// Wakes `session_id` at `at` unless cancelled first.
    pub(super) fn set(
        self: &Arc<Self>,
        app: &Arc<AppState>,
        at: Instant,
        session_id: &str,
    ) -> AlarmKey {
        self.timer.get_or_init(|| {
            tokio::spawn(timer(Arc::clone(self), Arc::downgrade(app)));
        });
        let key = (at, self.seq.fetch_add(1, Ordering::Relaxed));
        let first = {
            let mut due = self.due.lock();
            due.insert(key, session_id.to_owned());
            due.first_key_value().is_some_and(|(k, _)| *k == key)
        };
        if first {
            self.earlier.notify_one();
        }
        key
    }

    /// Removes an alarm (no-op if it already went off).
    pub(super) fn cancel(&self, key: AlarmKey) {
        self.due.lock().remove(&key);
    }

    /// Removes and returns the sessions due at `now`.
    fn take_due(&self, now: Instant) -> Vec<String> {
        let mut due = self.due.lock();
        let later = due.split_off(&(now, u64::MAX));
        std::mem::replace(&mut *due, later).into_values().collect()
    }

    fn next(&self) -> Option<Instant> {
        self.due.lock().first_key_value().map(|(k, _)| k.0)
    }
}

async fn timer(alarms: Arc<Alarms>, app: Weak<AppState>) {
    loop {
        match alarms.next() {
            None => alarms.earlier.notified().await,
            Some(at) if at > Instant::now() => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = alarms.earlier.notified() => {}
                }
            }
            Some(_) => {
                let due = alarms.take_due(Instant::now());
                let Some(app) = app.upgrade() else { return };
                for session_id in due {
                    if let Some(h) = app.sessions.get(&session_id) {
                        h.wake();
                    }
                }
            }
        }
    }
}
