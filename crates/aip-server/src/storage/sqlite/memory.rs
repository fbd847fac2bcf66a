//! What the store keeps in memory: where each live record is in the `live` table
//! ([`Memory`]), the records of the sessions that ended last ([`Recent`]), and the
//! writer's view of both during a batch ([`LiveView`]). Written only by the writer
//! thread, after a commit, so a read never sees anything but the committed state.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;

use rusqlite::Connection;
use smallvec::{smallvec, SmallVec};

use super::db_err;
use crate::storage::{SessionRecord, StoreError};
use crate::IdMap;

/// Where the records of live sessions are in the `live` table, and the records of the
/// sessions that ended last. Written only by the writer thread, after a commit; read by
/// every read.
#[derive(Default)]
pub(super) struct Memory {
    by_id: IdMap<String, LiveEntry>,
    /// Task name (shared with the entries of `by_id`) → (created_at, rowid) of its live
    /// records; usually one, kept inline.
    by_task: IdMap<Arc<str>, SmallVec<[(i64, i64); 1]>>,
    pub(super) recent: Recent,
}

/// The committed records of the sessions that ended last, at most `capacity` of them and
/// `max_bytes` of their text (see [`weight`]), oldest forgotten first. A result is
/// typically read right after its session ends (the requester polls or is told); such a
/// read is then answered from memory instead of a query on the blocking pool. Kept exact:
/// every write that changes or removes an ended record updates or drops its entry in the
/// same step as the live map.
#[derive(Default)]
pub(super) struct Recent {
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    rows: IdMap<String, (u64, Arc<SessionRecord>, usize)>,
    /// Insertion order; an entry whose generation no longer matches `rows` is stale.
    order: VecDeque<(u64, String)>,
    generation: u64,
}

/// What a record kept in memory costs, roughly: its fixed part, its texts, and its result
/// as the JSON text it was stored as.
pub(super) fn weight(record: &SessionRecord, result_json: Option<&str>) -> usize {
    std::mem::size_of::<SessionRecord>()
        + record.session_id.len()
        + record.task_name.len()
        + record.request.len()
        + record.requester.as_ref().map_or(0, String::len)
        + record.executor.len()
        + record.platform.len()
        + record.error.as_ref().map_or(0, String::len)
        + result_json.map_or(0, str::len)
}

impl Recent {
    pub(super) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            capacity,
            max_bytes,
            ..Self::default()
        }
    }

    /// Keeps `record`, which weighs `weight` bytes.
    pub(super) fn put(&mut self, record: Arc<SessionRecord>, weight: usize) {
        if self.capacity == 0 {
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        self.order
            .push_back((generation, record.session_id.clone()));
        self.bytes += weight;
        if let Some((_, _, old)) = self
            .rows
            .insert(record.session_id.clone(), (generation, record, weight))
        {
            self.bytes -= old;
        }
        while self.order.len() > self.capacity || self.bytes > self.max_bytes {
            let Some((g, id)) = self.order.pop_front() else {
                break;
            };
            if self
                .rows
                .get(&id)
                .is_some_and(|(current, ..)| *current == g)
            {
                self.remove(&id);
            }
        }
    }

    pub(super) fn get(&self, session_id: &str) -> Option<Arc<SessionRecord>> {
        self.rows
            .get(session_id)
            .map(|(_, record, _)| Arc::clone(record))
    }

    fn remove(&mut self, session_id: &str) {
        if let Some((_, _, weight)) = self.rows.remove(session_id) {
            self.bytes -= weight;
        }
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

pub(super) struct LiveEntry {
    pub(super) rowid: i64,
    pub(super) task_name: Arc<str>,
    pub(super) created_at: i64,
}

impl Memory {
    pub(super) fn load(
        conn: &Connection,
        recent_capacity: usize,
        recent_bytes: usize,
    ) -> Result<Memory, StoreError> {
        let mut index = Memory {
            recent: Recent::new(recent_capacity, recent_bytes),
            ..Memory::default()
        };
        let mut stmt = conn
            .prepare("SELECT id, session_id, task_name, created_at FROM live")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(1)?,
                    LiveEntry {
                        rowid: row.get(0)?,
                        task_name: Arc::from(row.get::<_, String>(2)?),
                        created_at: row.get(3)?,
                    },
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (id, entry) = row.map_err(db_err)?;
            index.insert(id, entry);
        }
        Ok(index)
    }

    pub(super) fn rowid(&self, session_id: &str) -> Option<i64> {
        self.by_id.get(session_id).map(|e| e.rowid)
    }

    /// The newest live record with this task name.
    pub(super) fn newest_for_task(&self, task_name: &str) -> Option<i64> {
        self.by_task
            .get(task_name)?
            .iter()
            .max()
            .map(|&(_, rowid)| rowid)
    }

    fn insert(&mut self, session_id: String, mut entry: LiveEntry) {
        self.remove(&session_id);
        self.recent.remove(&session_id);
        let row = (entry.created_at, entry.rowid);
        match self.by_task.entry(Arc::clone(&entry.task_name)) {
            Entry::Occupied(mut o) => {
                o.get_mut().push(row);
                entry.task_name = Arc::clone(o.key());
            }
            Entry::Vacant(v) => {
                v.insert(smallvec![row]);
            }
        }
        self.by_id.insert(session_id, entry);
    }

    fn remove(&mut self, session_id: &str) {
        let Some(old) = self.by_id.remove(session_id) else {
            return;
        };
        if let Some(rows) = self.by_task.get_mut(&*old.task_name) {
            rows.retain(|&mut (_, rowid)| rowid != old.rowid);
            if rows.is_empty() {
                self.by_task.remove(&*old.task_name);
            }
        }
    }

    pub(super) fn apply(&mut self, change: IndexChange) {
        match change {
            IndexChange::Insert(id, entry) => self.insert(id, entry),
            IndexChange::Remove(id) => {
                self.remove(&id);
                self.recent.remove(&id);
            }
            IndexChange::Clear => {
                self.by_id.clear();
                self.by_task.clear();
                self.recent.clear();
            }
            IndexChange::ForgetEnded => self.recent.clear(),
        }
    }
}

/// A change to [`Memory`] made by a write, applied once its transaction committed.
/// (An ended record that was stored is added to the recent records afterwards.)
pub(super) enum IndexChange {
    /// A live record was stored.
    Insert(String, LiveEntry),
    /// The record left the live table, or was deleted.
    Remove(String),
    /// Every live record was moved or deleted.
    Clear,
    /// Ended records were deleted (purge).
    ForgetEnded,
}

/// The writer's view of the live rows during a batch: the committed index plus what the
/// batch's earlier operations changed.
pub(super) struct LiveView<'a> {
    committed: &'a parking_lot::Mutex<Memory>,
    /// Session id → its rowid now (`None`: removed) for ids the batch touched.
    overlay: IdMap<String, Option<i64>>,
    /// The batch emptied the live table.
    cleared: bool,
}

impl<'a> LiveView<'a> {
    pub(super) fn new(committed: &'a parking_lot::Mutex<Memory>) -> Self {
        Self {
            committed,
            overlay: IdMap::default(),
            cleared: false,
        }
    }

    pub(super) fn rowid(&self, session_id: &str) -> Option<i64> {
        match self.overlay.get(session_id) {
            Some(v) => *v,
            None if self.cleared => None,
            None => self.committed.lock().rowid(session_id),
        }
    }

    /// Takes in the changes of an operation that succeeded.
    pub(super) fn note(&mut self, changes: &[IndexChange]) {
        for change in changes {
            match change {
                IndexChange::Insert(id, e) => {
                    self.overlay.insert(id.clone(), Some(e.rowid));
                }
                IndexChange::Remove(id) => {
                    self.overlay.insert(id.clone(), None);
                }
                IndexChange::Clear => {
                    self.overlay.clear();
                    self.cleared = true;
                }
                IndexChange::ForgetEnded => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::{Origin, SessionState};

    fn ended(id: &str, request_len: usize) -> Arc<SessionRecord> {
        Arc::new(SessionRecord {
            session_id: id.into(),
            task_name: "t".into(),
            request: "r".repeat(request_len),
            origin: Origin::Http,
            requester: None,
            executor: "d".into(),
            platform: "linux".into(),
            state: SessionState::Completed,
            reason: None,
            error: None,
            result: None,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            echo_received: true,
            job_id: None,
        })
    }

    fn put(recent: &mut Recent, id: &str, request_len: usize) {
        let r = ended(id, request_len);
        let w = weight(&r, Some("{\"ok\":true}"));
        recent.put(r, w);
    }

    #[test]
    fn the_recent_records_are_bounded_in_bytes_oldest_forgotten_first() {
        let one = weight(&ended("s0", 10_000), Some("{\"ok\":true}"));
        let mut recent = Recent::new(100, 3 * one);
        for i in 0..5 {
            put(&mut recent, &format!("s{i}"), 10_000);
            assert!(recent.bytes <= 3 * one);
        }
        let kept: Vec<bool> = (0..5)
            .map(|i| recent.get(&format!("s{i}")).is_some())
            .collect();
        assert_eq!(kept, [false, false, true, true, true]);
        // One large record pushes out as many small ones as it needs.
        put(&mut recent, "big", 25_000);
        assert!(recent.get("big").is_some());
        assert!(recent.get("s2").is_none() && recent.get("s3").is_none());
        assert!(recent.bytes <= 3 * one);
        // A record over the whole budget is not kept at all.
        put(&mut recent, "huge", 40_000);
        assert!(recent.get("huge").is_none());
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn replacing_or_removing_a_record_gives_back_its_bytes() {
        let mut recent = Recent::new(100, usize::MAX);
        put(&mut recent, "a", 1000);
        let after_one = recent.bytes;
        put(&mut recent, "a", 1000);
        assert_eq!(recent.bytes, after_one, "replaced, not added");
        recent.remove("a");
        assert_eq!(recent.bytes, 0);
        put(&mut recent, "b", 10);
        recent.clear();
        assert_eq!(recent.bytes, 0);
    }
}
