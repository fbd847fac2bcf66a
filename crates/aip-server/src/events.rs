//! The live event bus behind `GET /api/events` (a leaf: the registry's and the session
//! layer's callers publish plain values into it, it knows nothing of them).
//!
//! Invariants:
//! - **Nothing is built when nobody listens.** [`EventBus::publish`] takes a closure that
//!   builds the event's JSON; it runs only while a subscriber is connected (one atomic
//!   load decides), or for [`LINGER`] after the last one left, so that a dashboard that
//!   reconnects can resume where it was.
//! - **Ids increase** across everything published by this process, and start from the
//!   process's start time (milliseconds × 1000), so an id from before a restart is never
//!   mistaken for a newer one.
//! - **Bounded**: the last [`RING`] events are kept for `Last-Event-ID`; each subscriber
//!   reads from a broadcast channel of [`CHANNEL`] events and one that falls further
//!   behind is told so ([`Next::Lagged`]) and dropped by its reader, never waited for.
//! - A resume that cannot be served exactly (the id is older than the ring, from another
//!   process, or events went unrecorded while nobody listened) gets [`Backlog::Resync`]:
//!   the subscriber must reload what it shows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for subscribers that resume with `Last-Event-ID`.
pub const RING: usize = 1024;
/// Events a subscriber may fall behind before it is dropped.
pub const CHANNEL: usize = 1024;
/// How long events are still recorded after the last subscriber left.
pub const LINGER: Duration = Duration::from_secs(60);
/// Subscribers at once; more are refused (503).
pub const MAX_SUBSCRIBERS: usize = 64;

/// What happened: the SSE `event:` name of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    ClientConnected,
    ClientDisconnected,
    SessionCreated,
    SessionState,
    SessionRound,
    SessionEnded,
}

impl EventKind {
    /// The wire name (`event:` line, and `type` in the data).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientConnected => "client_connected",
            Self::ClientDisconnected => "client_disconnected",
            Self::SessionCreated => "session_created",
            Self::SessionState => "session_state",
            Self::SessionRound => "session_round",
            Self::SessionEnded => "session_ended",
        }
    }

    /// Every kind, in the order the document lists them.
    pub const ALL: [EventKind; 6] = [
        Self::ClientConnected,
        Self::ClientDisconnected,
        Self::SessionCreated,
        Self::SessionState,
        Self::SessionRound,
        Self::SessionEnded,
    ];
}

/// One published event: its id, kind and JSON data (an object with `type`).
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub kind: EventKind,
    pub data: String,
}

/// The bus: a broadcast channel for live subscribers and a ring of recent events.
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    ring: Mutex<Ring>,
    /// Subscribers now (kept here: the channel's own count takes a lock).
    subscribers: AtomicUsize,
    epoch: Instant,
    /// Milliseconds after `epoch` until which events are still recorded with no
    /// subscriber; 0: not lingering.
    linger_until_ms: AtomicU64,
}

struct Ring {
    next_id: u64,
    events: VecDeque<Arc<Event>>,
}

/// What a new subscriber gets before the live events.
#[derive(Debug)]
pub enum Backlog {
    /// A fresh subscription: nothing.
    None,
    /// The events after the given `Last-Event-ID`, oldest first.
    Replay(Vec<Arc<Event>>),
    /// The given id cannot be resumed from: reload everything.
    Resync,
}

/// The next live event of a subscription.
#[derive(Debug)]
pub enum Next {
    Event(Arc<Event>),
    /// The subscriber fell more than [`CHANNEL`] events behind.
    Lagged,
    /// The bus is gone.
    Closed,
}

/// One subscriber: its backlog, then its live events. Leaving (drop) starts the linger.
pub struct Subscription {
    pub backlog: Backlog,
    rx: broadcast::Receiver<Arc<Event>>,
    bus: Arc<EventBus>,
}

impl Default for EventBus {
    fn default() -> Self {
        let start = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        Self {
            tx: broadcast::channel(CHANNEL).0,
            ring: Mutex::new(Ring {
                next_id: start.saturating_mul(1000).max(1),
                events: VecDeque::new(),
            }),
            subscribers: AtomicUsize::new(0),
            epoch: Instant::now(),
            linger_until_ms: AtomicU64::new(0),
        }
    }
}

impl EventBus {
    /// Whether events are recorded now: someone listens, or listened within [`LINGER`].
    #[inline]
    pub fn active(&self) -> bool {
        if self.subscribers.load(Ordering::Acquire) > 0 {
            return true;
        }
        if self.linger_until_ms.load(Ordering::Acquire) == 0 {
            return false;
        }
        !self.expire_linger()
    }

    /// Publishes the event `data()` builds (an object; `type` is added), if anyone may read
    /// it; otherwise `data` is never called.
    #[inline]
    pub fn publish(&self, kind: EventKind, data: impl FnOnce() -> Value) {
        if self.active() {
            self.push(kind, data());
        }
    }

    fn push(&self, kind: EventKind, mut data: Value) {
        if let Some(obj) = data.as_object_mut() {
            obj.insert("type".into(), Value::from(kind.as_str()));
        }
        let data = data.to_string();
        let mut ring = self.ring.lock();
        let id = ring.next_id;
        ring.next_id += 1;
        let event = Arc::new(Event { id, kind, data });
        if ring.events.len() >= RING {
            ring.events.pop_front();
        }
        ring.events.push_back(Arc::clone(&event));
        // Sent under the ring's lock, so a new subscriber sees each event exactly once:
        // in its backlog or on its channel.
        let _ = self.tx.send(event);
    }

    /// The number of subscribers now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// A new subscriber, resuming after `last_id` if given; `None` when
    /// [`MAX_SUBSCRIBERS`] are connected.
    pub fn subscribe(self: &Arc<Self>, last_id: Option<u64>) -> Option<Subscription> {
        let taken = self
            .subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SUBSCRIBERS).then_some(n + 1)
            });
        if taken.is_err() {
            return None;
        }
        self.expire_linger();
        let ring = self.ring.lock();
        let rx = self.tx.subscribe();
        let backlog = match last_id {
            None => Backlog::None,
            Some(last) => {
                let oldest = ring.events.front().map_or(ring.next_id, |e| e.id);
                if last >= ring.next_id || last.saturating_add(1) < oldest {
                    Backlog::Resync
                } else {
                    Backlog::Replay(
                        ring.events
                            .iter()
                            .filter(|e| e.id > last)
                            .cloned()
                            .collect(),
                    )
                }
            }
        };
        drop(ring);
        Some(Subscription {
            backlog,
            rx,
            bus: Arc::clone(self),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Ends a linger that is due: the ring is emptied and one id skipped, so that a later
    /// resume from before the gap gets [`Backlog::Resync`]. True if it ended now or before.
    fn expire_linger(&self) -> bool {
        let until = self.linger_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() < until || self.subscribers.load(Ordering::Acquire) > 0 {
            return false;
        }
        if self
            .linger_until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let mut ring = self.ring.lock();
            ring.events.clear();
            ring.next_id += 1;
        }
        true
    }
}

impl Subscription {
    /// The next live event.
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(e) => Next::Event(e),
            Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
            Err(broadcast::error::RecvError::Closed) => Next::Closed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let bus = &self.bus;
        let until = bus.now_ms().saturating_add(LINGER.as_millis() as u64);
        bus.linger_until_ms.store(until, Ordering::Release);
        bus.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn nothing_is_built_while_nobody_listens() {
        let bus = EventBus::default();
        bus.publish(EventKind::SessionCreated, || {
            panic!("built without a subscriber")
        });
        assert!(bus.ring.lock().events.is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_gets_events_in_order_with_increasing_ids_and_type() {
        let bus = Arc::new(EventBus::default());
        let mut sub = bus.subscribe(None).unwrap();
        for n in 0..3 {
            bus.publish(EventKind::SessionState, || json!({"n": n}));
        }
        let mut last = 0;
        for n in 0..3 {
            let Next::Event(e) = sub.next().await else {
                panic!("no event")
            };
            assert!(e.id > last);
            last = e.id;
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v, json!({"n": n, "type": "session_state"}));
        }
    }

    #[tokio::test]
    async fn resume_replays_what_followed_and_an_unknown_id_resyncs() {
        let bus = Arc::new(EventBus::default());
        let first = bus.subscribe(None).unwrap();
        for n in 0..5 {
            bus.publish(EventKind::SessionState, || json!({"n": n}));
        }
        let all: Vec<u64> = ids(&bus.ring.lock().events.iter().cloned().collect::<Vec<_>>());
        drop(first);
        // Still recorded while lingering.
        bus.publish(EventKind::SessionEnded, || json!({}));
        let sub = bus.subscribe(Some(all[2])).unwrap();
        let Backlog::Replay(replayed) = &sub.backlog else {
            panic!("{:?}", sub.backlog)
        };
        assert_eq!(ids(replayed)[..2], all[3..]);
        assert_eq!(replayed.len(), 3);
        let up_to_date = bus.subscribe(Some(all[4] + 1)).unwrap();
        assert!(matches!(&up_to_date.backlog, Backlog::Replay(v) if v.is_empty()));
        assert!(matches!(
            bus.subscribe(Some(1)).unwrap().backlog,
            Backlog::Resync
        ));
        assert!(matches!(
            bus.subscribe(Some(u64::MAX)).unwrap().backlog,
            Backlog::Resync
        ));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_the_channel_is_told() {
        let bus = Arc::new(EventBus::default());
        let mut sub = bus.subscribe(None).unwrap();
        for n in 0..CHANNEL + 1 {
            bus.publish(EventKind::SessionRound, || json!({"n": n}));
        }
        assert!(matches!(sub.next().await, Next::Lagged));
        assert_eq!(bus.ring.lock().events.len(), RING);
    }

    #[test]
    fn subscribers_are_capped_and_a_gap_after_the_linger_resyncs() {
        let bus = Arc::new(EventBus::default());
        let subs: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| bus.subscribe(None).unwrap())
            .collect();
        assert!(bus.subscribe(None).is_none());
        bus.publish(EventKind::ClientConnected, || json!({}));
        let id = bus.ring.lock().events[0].id;
        drop(subs);
        assert!(bus.active(), "lingering");
        // The linger ends (as if LINGER had passed): events are no longer recorded.
        bus.linger_until_ms.store(1, Ordering::Release);
        assert!(!bus.active());
        bus.publish(EventKind::ClientConnected, || panic!("built"));
        assert!(matches!(
            bus.subscribe(Some(id)).unwrap().backlog,
            Backlog::Resync
        ));
    }
}
