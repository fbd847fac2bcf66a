//! Reading session records, the writes the store has not taken yet
//! ([`super::unsaved`]) first, and retrying those writes.
//!
//! A job writes its record at each step; when the store refuses a write (the disk
//! filled up), the record is kept in `Unsaved` and the job retries the write with
//! backoff ([`store_until_saved`]) until it lands. Reads go through the manager, which answers from `Unsaved`
//! first: an ended session never shows as `running` because its final write failed,
//! and readiness reports the store as behind while anything is unsaved.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::{SessionFilter, SessionRecord, StoreError};

use super::manager::SessionManager;

impl SessionManager {
    /// The record of `session_id`: its unsaved state if the store is behind, else the
    /// stored one.
    pub async fn record(&self, session_id: &str) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        if let Some(r) = self.unsaved.get(session_id) {
            return Ok(Some(r));
        }
        self.store.get(session_id).await
    }

    /// The most recently created record named `task_name` (unsaved states included).
    pub async fn record_by_task_name(
        &self,
        task_name: &str,
    ) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let stored = self.store.latest_by_task_name(task_name).await?;
        let newest_unsaved = self
            .unsaved
            .all()
            .into_iter()
            .filter(|r| r.task_name == task_name)
            .max_by_key(|r| r.created_at);
        // An unsaved record with this name is the newer state of its session, and wins
        // unless the stored one is a newer session.
        Ok(match (stored, newest_unsaved) {
            (Some(s), Some(u)) if s.created_at > u.created_at => Some(Arc::new(s)),
            (s, None) => s.map(Arc::new),
            (_, u) => u,
        })
    }

    /// Records matching `filter`, newest first, unsaved states in place of stored ones.
    pub async fn records(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let mut list = self.store.list(filter).await?;
        let unsaved = self.unsaved.all();
        if unsaved.is_empty() {
            return Ok(list);
        }
        // The unsaved state replaces the stored one (and may no longer match `filter`),
        // or joins the list if its stored state did not match.
        list.retain(|r| self.unsaved.get(&r.session_id).is_none());
        list.extend(
            unsaved
                .iter()
                .filter(|r| matches(r, filter))
                .map(|r| SessionRecord::clone(r)),
        );
        list.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        if filter.limit > 0 {
            list.truncate(filter.limit);
        }
        Ok(list)
    }

    /// Whether this node holds a state of `session_id` that the store has not taken yet
    /// (its write is being retried).
    pub fn is_unsaved(&self, session_id: &str) -> bool {
        self.unsaved.get(session_id).is_some()
    }

    /// Number of sessions whose latest state the store has not taken yet.
    pub fn unsaved(&self) -> usize {
        self.unsaved.len()
    }

    /// Waits (at most `limit`) until every unsaved state is stored; how many are not.
    pub async fn wait_saved(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        while self.unsaved() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.unsaved()
    }
}

/// Whether `r` is selected by `filter` (its state and client; the limit aside).
fn matches(r: &SessionRecord, filter: &SessionFilter) -> bool {
    filter.state.is_none_or(|s| s == r.state)
        && filter
            .client_id
            .as_deref()
            .is_none_or(|c| r.executor == c || r.requester.as_deref() == Some(c))
}

/// Retries writing `record`, backing off up to 1 s (a store back from an outage gets the
/// held states within a second: other nodes read them from it), until it lands or is
/// superseded (a newer write of it, or a new session of its id).
pub(super) async fn store_until_saved(manager: &SessionManager, record: Arc<SessionRecord>) {
    let mut wait = std::time::Duration::from_millis(100);
    let mut attempts = 1u32;
    while manager.unsaved.holds(&record) {
        tokio::time::sleep(wait).await;
        attempts += 1;
        match manager.store.upsert(SessionRecord::clone(&record)).await {
            Ok(()) => {
                manager.unsaved.saved(&record);
                tracing::info!(session_id = %record.session_id, attempts, "session stored after retrying");
                return;
            }
            Err(e) if e.refusal().is_some() => {
                // The store's own rule: no retry can land it; what it holds stands.
                manager.unsaved.saved(&record);
                tracing::warn!(session_id = %record.session_id, cause = %e, attempts, "session not stored: the store keeps its own record of it");
                return;
            }
            Err(e) => {
                tracing::debug!(session_id = %record.session_id, cause = %e, attempts, "store still refuses the session");
            }
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(1));
    }
}
