//! The embedded SQLite session store.
//!
//! Design:
//!
//! * **One database file**, `<dir>/aip.sqlite3`, in WAL mode with `synchronous=FULL`:
//!   a commit fsyncs the WAL, so a write that has returned survives `kill -9` and
//!   power loss.
//! * **Group commit on a dedicated writer thread.** A single `std::thread` owns the
//!   only write connection. Callers send their operation, with a
//!   [`tokio::sync::oneshot`] reply channel, over a bounded [`tokio::sync::mpsc`]
//!   channel. The thread blocks for the first operation, drains whatever else is
//!   already queued (up to [`MAX_BATCH`]), runs them all in one `BEGIN IMMEDIATE`
//!   transaction (if an operation fails, the batch is replayed with each operation
//!   in its own savepoint, so one failing operation does not undo the others),
//!   commits once — one fsync for the whole batch — and only then answers every
//!   waiter. If the commit fails, every waiter
//!   of the batch gets the error. When the last [`SqliteStore`] handle is dropped the
//!   channel closes and the thread exits, closing the connection.
//! * **Reads on their own connections.** A small pool of read connections, each
//!   behind a `std::sync::Mutex`, is used from [`tokio::task::spawn_blocking`]; WAL
//!   lets them run concurrently with the writer. No lock is held across an `.await`.
//! * **Live records are kept apart from ended ones.** A `created`/`running` record lives
//!   in the `live` table, which has no index: it is appended, then updated by rowid, and a
//!   small in-memory map (session id → rowid, and task name → rowids) finds it. When the
//!   session ends, the record moves, in one transaction, into `sessions`, which is indexed
//!   by session id, task name and finish time for the reads of retained results. So the
//!   commit that must happen before a dispatch is answered appends to one B-tree page
//!   instead of inserting a random UUID into an index (one more random page dirtied per
//!   row). The map holds
//!   live sessions only (bounded by the active-session limit); it is rebuilt from the
//!   table at start-up, and is updated after a commit, before its waiters are answered.
//! * **Recently ended records are also kept in memory** (the last [`RECENT_CAPACITY`], at
//!   most `--recent-cache-bytes` of them,
//!   as committed, oldest forgotten first), because a result is typically read right
//!   after its session ends: that read is answered without a query on the blocking pool.
//!   Every write that replaces, deletes or purges an ended record updates this memory in
//!   the same step as the live map, so a read never sees anything but the committed state.
//! * Schema version is kept in `PRAGMA user_version` (currently 3; version 1 had no
//!   `live` table, version 2 no `job_id` column and no job tables). Times are stored as microseconds since the Unix epoch, `result` as
//!   JSON text.
//!
//! Files: [`sql`] (schema and statements), [`memory`] (live index, recent records),
//! [`writer`] (the writer thread and each write), [`rows`] (record ⇄ row),
//! [`migrate`] (schema version, older versions), [`jobs`] (the job store), this file
//! (opening, reads, the session store trait).

mod jobs;
mod memory;
mod migrate;
mod rows;
mod sql;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use super::{SessionFilter, SessionRecord, SessionStore, StoreError};
use memory::Memory;
use migrate::init_schema;
use rows::{query_one, raw_row, to_row};
use sql::COLUMNS;
use writer::{writer_loop, WriteOp, WriteRequest, QUEUE_CAPACITY};

/// File name of the database inside the store directory.
pub const DB_FILE_NAME: &str = "aip.sqlite3";
/// Records of recently ended sessions kept in memory for reads (see [`Recent`]).
const RECENT_CAPACITY: usize = 4096;
/// Number of read connections.
const READERS: usize = 2;
/// `list` limit used when the filter says 0.
const DEFAULT_LIST_LIMIT: usize = 100;
/// How long a connection waits on a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// The SQLite-backed [`SessionStore`]. Cheap to clone; all clones share the writer
/// thread and the read connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: mpsc::Sender<WriteRequest>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    live: Arc<parking_lot::Mutex<Memory>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`: the directory, the database file
    /// `dir/aip.sqlite3` and its schema. Starts the writer thread.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with_limits(dir, RECENT_CAPACITY, usize::MAX)
    }

    /// [`SqliteStore::open`] keeping at most `recent_bytes` of ended records in memory
    /// (`--recent-cache-bytes`).
    pub fn open_with_cache(dir: &Path, recent_bytes: usize) -> Result<SqliteStore, StoreError> {
        Self::open_with_limits(dir, RECENT_CAPACITY, recent_bytes)
    }

    /// [`SqliteStore::open`] keeping at most `recent_capacity` ended records in memory.
    #[cfg(test)]
    fn open_with(dir: &Path, recent_capacity: usize) -> Result<SqliteStore, StoreError> {
        Self::open_with_limits(dir, recent_capacity, usize::MAX)
    }

    fn open_with_limits(
        dir: &Path,
        recent_capacity: usize,
        recent_bytes: usize,
    ) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Database(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE_NAME);

        let mut writer = Connection::open(&path).map_err(db_err)?;
        writer.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!(
                "could not enable WAL journal mode (got {mode})"
            )));
        }
        writer
            .pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;

        init_schema(&mut writer)?;
        let live = Arc::new(parking_lot::Mutex::new(Memory::load(
            &writer,
            recent_capacity,
            recent_bytes,
        )?));

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open(&path).map_err(db_err)?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
            conn.pragma_update(None, "query_only", true)
                .map_err(db_err)?;
            readers.push(Mutex::new(conn));
        }

        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer_live = Arc::clone(&live);
        std::thread::Builder::new()
            .name("aip-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, &writer_live))
            .map_err(|e| StoreError::Database(format!("spawning the writer thread: {e}")))?;

        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: tx,
                readers,
                next_reader: AtomicUsize::new(0),
                live,
            }),
        })
    }

    /// Sends one write to the writer thread and waits until it is committed.
    async fn write(&self, op: WriteOp) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` with a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.reader()?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

impl Inner {
    /// A free read connection, or else waits for one (round-robin).
    fn reader(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        for conn in &self.readers {
            match conn.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        match self.readers.get(i) {
            Some(conn) => conn.lock().map_err(|_| poisoned()),
            None => Err(StoreError::Database("no read connection".into())),
        }
    }
}

fn poisoned() -> StoreError {
    StoreError::Database("read connection lock poisoned".into())
}

// ---------------------------------------------------------------------------
// The trait

#[async_trait]
impl SessionStore for SqliteStore {
    async fn upsert(&self, record: SessionRecord) -> Result<(), StoreError> {
        let row = to_row(record, false, false)?;
        self.write(WriteOp::Upsert(Box::new(row))).await.map(|_| ())
    }

    async fn insert_new(&self, record: SessionRecord) -> Result<(), StoreError> {
        let row = to_row(record, false, true)?;
        self.write(WriteOp::Upsert(Box::new(row))).await.map(|_| ())
    }

    async fn insert_generated(&self, record: SessionRecord) -> Result<(), StoreError> {
        let row = to_row(record, true, true)?;
        self.write(WriteOp::Upsert(Box::new(row))).await.map(|_| ())
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        self.write(WriteOp::Probe { now }).await.map(|_| ())
    }

    async fn delete(&self, session_id: &str) -> Result<(), StoreError> {
        self.write(WriteOp::Delete(session_id.to_owned()))
            .await
            .map(|_| ())
    }

    async fn get(&self, session_id: &str) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let recent = self.inner.live.lock().recent.get(session_id);
        if let Some(record) = recent {
            return Ok(Some(record));
        }
        let id = session_id.to_owned();
        let live = Arc::clone(&self.inner.live);
        self.read(move |conn| {
            // One statement, so one snapshot: a record moving from `live` to `sessions`
            // meanwhile is found on one side or the other.
            let rowid = live.lock().rowid(&id);
            query_one(
                conn,
                &format!(
                    "SELECT {COLUMNS} FROM live WHERE id = ?1 AND session_id = ?2 \
                     UNION ALL SELECT {COLUMNS} FROM sessions WHERE session_id = ?2 LIMIT 1"
                ),
                params![rowid, id],
            )
        })
        .await
        .map(|r| r.map(Arc::new))
    }

    async fn latest_by_task_name(
        &self,
        task_name: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let name = task_name.to_owned();
        let live = Arc::clone(&self.inner.live);
        self.read(move |conn| {
            let rowid = live.lock().newest_for_task(&name);
            query_one(
                conn,
                &format!(
                    "SELECT {COLUMNS} FROM (\
                       SELECT {COLUMNS}, 1 AS pri, id AS rid FROM live \
                         WHERE id = ?1 AND task_name = ?2 \
                       UNION ALL SELECT * FROM (\
                         SELECT {COLUMNS}, 0 AS pri, rowid AS rid FROM sessions \
                         WHERE task_name = ?2 ORDER BY created_at DESC, rowid DESC LIMIT 1)) \
                     ORDER BY created_at DESC, pri DESC, rid DESC LIMIT 1"
                ),
                params![rowid, name],
            )
        })
        .await
    }

    async fn list(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| {
            use rusqlite::types::Value;
            let mut clauses = Vec::new();
            let mut args: Vec<Value> = Vec::new();
            if let Some(state) = filter.state {
                args.push(Value::Text(state.as_str().to_owned()));
                clauses.push(format!("state = ?{}", args.len()));
            }
            if let Some(client) = filter.client_id {
                args.push(Value::Text(client));
                let n = args.len();
                clauses.push(format!("(owner = ?{n} OR executor = ?{n})"));
            }
            let limit = if filter.limit == 0 {
                DEFAULT_LIST_LIMIT
            } else {
                filter.limit
            };
            args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
            let where_sql = if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            };
            let sql = format!(
                "SELECT {COLUMNS} FROM (\
                   SELECT {COLUMNS}, 1 AS pri, id AS rid FROM live {where_sql} \
                   UNION ALL \
                   SELECT {COLUMNS}, 0 AS pri, rowid AS rid FROM sessions {where_sql}) \
                 ORDER BY created_at DESC, pri DESC, rid DESC LIMIT ?{}",
                args.len()
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let raws = stmt
                .query_map(rusqlite::params_from_iter(args), raw_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            raws.into_iter().map(SessionRecord::try_from).collect()
        })
        .await
    }

    async fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(WriteOp::MarkInterrupted {
            now: now.timestamp_micros(),
        })
        .await
    }

    async fn purge(
        &self,
        finished_before: DateTime<Utc>,
        max_results: u64,
    ) -> Result<u64, StoreError> {
        self.write(WriteOp::Purge {
            finished_before: finished_before.timestamp_micros(),
            max_results,
        })
        .await
    }
}
