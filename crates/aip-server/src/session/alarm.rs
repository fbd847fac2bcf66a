//! One timer for every parked session (see [`super::Run::Dormant`]).
//!
//! A parked session registers the instant its job must run even if nothing happens
//! (its accept or session timeout). One task per server sleeps until the earliest such
//! instant and wakes the sessions that are due. Waking a session for any other reason
//! removes its alarm, so the set holds parked sessions only (bounded by the active-session
//! limit).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Most sessions woken before the timer task yields.
const WAKE_SLICE: usize = 256;

/// Wakes the parked session with this id; false once there is nobody left to wake (the
/// timer then stops).
pub(super) type Waker = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Identifies one alarm: when, and a sequence number for alarms due at the same instant.
pub(super) type AlarmKey = (Instant, u64);

/// The alarms of every parked session.
#[derive(Default)]
pub(super) struct Alarms {
    due: Mutex<BTreeMap<AlarmKey, Arc<str>>>,
    seq: AtomicU64,
    /// An alarm earlier than every other was set.
    earlier: Notify,
    timer: OnceLock<()>,
}

impl Alarms {
    /// Wakes `session_id` at `at` unless cancelled first.
    /// The first alarm starts the timer task, which wakes sessions with `waker()`.
    pub(super) fn set(
        self: &Arc<Self>,
        waker: impl FnOnce() -> Waker,
        at: Instant,
        session_id: &Arc<str>,
    ) -> AlarmKey {
        self.timer.get_or_init(|| {
            tokio::spawn(timer(Arc::clone(self), waker()));
        });
        let key = (at, self.seq.fetch_add(1, Ordering::Relaxed));
        let first = {
            let mut due = self.due.lock();
            due.insert(key, Arc::clone(session_id));
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

    /// Removes and returns at most `max` of the sessions due at `now`, earliest first.
    fn take_due(&self, now: Instant, max: usize) -> Vec<Arc<str>> {
        let mut due = self.due.lock();
        let mut taken = Vec::new();
        while taken.len() < max {
            match due.first_entry() {
                Some(entry) if entry.key().0 <= now => taken.push(entry.remove()),
                _ => break,
            }
        }
        taken
    }

    fn next(&self) -> Option<Instant> {
        self.due.lock().first_key_value().map(|(k, _)| k.0)
    }
}

async fn timer(alarms: Arc<Alarms>, wake: Waker) {
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
                // In slices, yielding in between: thousands of sessions may fall due at once
                // (a burst of dispatches nobody accepts) and each wake spawns a job.
                let due = alarms.take_due(Instant::now(), WAKE_SLICE);
                for session_id in due {
                    if !wake(&session_id) {
                        return;
                    }
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_alarms_come_out_earliest_first_in_slices_and_cancelled_ones_never() {
        let alarms = Alarms::default();
        let t0 = Instant::now();
        let mut keys = Vec::new();
        for (i, ms) in [30u64, 10, 20, 10, 500].iter().enumerate() {
            let key = (t0 + Duration::from_millis(*ms), i as u64);
            alarms.due.lock().insert(key, Arc::from(format!("s{i}")));
            keys.push(key);
        }
        alarms.cancel(keys[2]);
        assert_eq!(alarms.next(), Some(t0 + Duration::from_millis(10)));
        let now = t0 + Duration::from_millis(100);
        assert_eq!(alarms.take_due(now, 2), [Arc::from("s1"), Arc::from("s3")]);
        assert_eq!(alarms.take_due(now, 2), [Arc::from("s0")]);
        assert!(alarms.take_due(now, 2).is_empty());
        assert_eq!(alarms.next(), Some(t0 + Duration::from_millis(500)));
    }
}
