//! Session states the store refused (the disk filled up), kept in memory until a
//! retried write lands: reads answer from here first (`records.rs`), the job retries
//! (`job.rs`), readiness reports the store as behind while any are kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::storage::SessionRecord;
use crate::IdDashMap;

/// Records whose latest write the store refused, by session id.
#[derive(Default)]
pub(super) struct Unsaved {
    records: IdDashMap<Arc<str>, Arc<SessionRecord>>,
    /// `records.len()`, readable without visiting every shard (checked on every write).
    count: AtomicUsize,
}

impl Unsaved {
    /// Keeps `record` as the latest state of its session.
    pub(super) fn keep(&self, record: Arc<SessionRecord>) {
        let id = Arc::from(record.session_id.as_str());
        if self.records.insert(id, record).is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Forgets `session_id` once a write of it landed (or a new session took the id).
    pub(super) fn forget(&self, session_id: &str) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        if self.records.remove(session_id).is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets `record` if it is still the unsaved state of its session (its write landed).
    pub(super) fn saved(&self, record: &Arc<SessionRecord>) {
        let id = record.session_id.as_str();
        if self
            .records
            .remove_if(id, |_, kept| Arc::ptr_eq(kept, record))
            .is_some()
        {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether `record` is still the unsaved state of its session (no newer write, and
    /// its id not taken by a new session).
    pub(super) fn holds(&self, record: &Arc<SessionRecord>) -> bool {
        self.records
            .get(record.session_id.as_str())
            .is_some_and(|r| Arc::ptr_eq(r.value(), record))
    }

    pub(super) fn get(&self, session_id: &str) -> Option<Arc<SessionRecord>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.records.get(session_id).map(|r| r.value().clone())
    }

    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub(super) fn all(&self) -> Vec<Arc<SessionRecord>> {
        if self.len() == 0 {
            return Vec::new();
        }
        self.records.iter().map(|r| r.value().clone()).collect()
    }
}
