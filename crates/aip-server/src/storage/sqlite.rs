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
//!   instead of inserting a random UUID into an index (which dirtied one more random page
//!   per row and doubled the time of a group commit; see BENCHMARKS.md). The map holds
//!   live sessions only (bounded by the active-session limit); it is rebuilt from the
//!   table at start-up, and is updated after a commit, before its waiters are answered.
//! * **Recently ended records are also kept in memory** (the last [`RECENT_CAPACITY`],
//!   as committed, oldest forgotten first), because a result is typically read right
//!   after its session ends: that read is answered without a query on the blocking pool.
//!   Every write that replaces, deletes or purges an ended record updates this memory in
//!   the same step as the live map, so a read never sees anything but the committed state.
//! * Schema version is kept in `PRAGMA user_version` (currently 2; version 1 had no
//!   `live` table). Times are stored as microseconds since the Unix epoch, `result` as
//!   JSON text.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use smallvec::{smallvec, SmallVec};
use tokio::sync::{mpsc, oneshot};

use super::{Origin, SessionFilter, SessionRecord, SessionState, SessionStore, StoreError};
use crate::IdMap;

/// File name of the database inside the store directory.
pub const DB_FILE_NAME: &str = "aip.sqlite3";
/// Current schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;
/// Capacity of the queue in front of the writer thread.
const QUEUE_CAPACITY: usize = 4096;
/// Most operations committed in one transaction.
const MAX_BATCH: usize = 513;
/// Records of recently ended sessions kept in memory for reads (see [`Recent`]).
const RECENT_CAPACITY: usize = 4096;
/// Number of read connections.
const READERS: usize = 2;
/// `list` limit used when the filter says 0.
const DEFAULT_LIST_LIMIT: usize = 100;
/// How long a connection waits on a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

// The record's columns, shared by both tables and every statement (macros, so `concat!`
// can build the statements at compile time).
macro_rules! record_columns_ddl {
    () => {
        "session_id    TEXT NOT NULL,
    task_name     TEXT NOT NULL,
    request       TEXT NOT NULL,
    origin        TEXT NOT NULL,
    owner         TEXT NULL,
    executor      TEXT NOT NULL,
    platform      TEXT NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT,
    error         TEXT,
    result        TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER NULL,
    finished_at   INTEGER NULL,
    echo_received INTEGER NOT NULL"
    };
}

macro_rules! columns {
    () => {
        "session_id, task_name, request, origin, owner, executor, platform, \
         state, reason, error, result, created_at, started_at, finished_at, echo_received"
    };
}

/// `?1` … `?15`, in [`COLUMNS`] order.
macro_rules! values {
    () => {
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    };
}

/// An insert into `sessions` replaces the record of the same session id.
macro_rules! on_conflict_replace {
    () => {
        "ON CONFLICT(session_id) DO UPDATE SET
    task_name = excluded.task_name, request = excluded.request, origin = excluded.origin,
    owner = excluded.owner, executor = excluded.executor, platform = excluded.platform,
    state = excluded.state, reason = excluded.reason, error = excluded.error,
    result = excluded.result, created_at = excluded.created_at,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    echo_received = excluded.echo_received"
    };
}

// The primary key of `sessions` is `session_id` (kept so, for existing databases); the
// session_id column of `live` is found through the in-memory map instead of an index.
const SCHEMA: &str = concat!(
    "CREATE TABLE IF NOT EXISTS sessions (",
    record_columns_ddl!(),
    ", PRIMARY KEY (session_id));
CREATE INDEX IF NOT EXISTS sessions_task_created ON sessions (task_name, created_at);
CREATE INDEX IF NOT EXISTS sessions_finished ON sessions (finished_at);
-- Every index costs every write (the dispatch path commits one row per request): listing
-- by state or client scans instead; the indexes of earlier versions are dropped.
DROP INDEX IF EXISTS sessions_state;
DROP INDEX IF EXISTS sessions_owner;
DROP INDEX IF EXISTS sessions_executor;
-- Records of live sessions (created/running), found through the in-memory map; no index.
CREATE TABLE IF NOT EXISTS live (id INTEGER PRIMARY KEY, ",
    record_columns_ddl!(),
    ");"
);

const COLUMNS: &str = columns!();

const UPSERT_SQL: &str = concat!(
    "INSERT INTO sessions (",
    columns!(),
    ") ",
    values!(),
    " ",
    on_conflict_replace!()
);

const INSERT_LIVE_SQL: &str = concat!("INSERT INTO live (", columns!(), ") ", values!());

const UPDATE_LIVE_SQL: &str = "
UPDATE live SET session_id = ?1, task_name = ?2, request = ?3, origin = ?4, owner = ?5,
                executor = ?6, platform = ?7, state = ?8, reason = ?9, error = ?10,
                result = ?11, created_at = ?12, started_at = ?13, finished_at = ?14,
                echo_received = ?15
WHERE id = ?16";

/// Start-up: every live record moves to `sessions` as failed / server_restarted.
const INTERRUPT_LIVE_SQL: &str = concat!(
    "INSERT INTO sessions (",
    columns!(),
    ")
SELECT session_id, task_name, request, origin, owner, executor, platform,
       'failed', 'server_restarted', 'Server restarted while the task was running', result,
       created_at, started_at, ?1, echo_received
FROM live WHERE true ",
    on_conflict_replace!()
);

const ENDED: &str = "('completed', 'failed', 'cancelled')";

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
    writer: mpsc::Sender<Job>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    live: Arc<parking_lot::Mutex<LiveIndex>>,
}

/// Where the records of live sessions are in the `live` table, and the records of the
/// sessions that ended last. Written only by the writer thread, after a commit; read by
/// every read.
#[derive(Default)]
struct LiveIndex {
    by_id: IdMap<String, LiveEntry>,
    /// Task name (shared with the entries of `by_id`) → (created_at, rowid) of its live
    /// records; usually one, kept inline.
    by_task: IdMap<Arc<str>, SmallVec<[(i64, i64); 1]>>,
    recent: Recent,
}

/// The committed records of the sessions that ended last, at most `capacity`, oldest
/// forgotten first. A result is typically read right after its session ends (the
/// requester polls or is told); such a read is then answered from memory instead of a
/// query on the blocking pool. Kept exact: every write that changes or removes an ended
/// record updates or drops its entry in the same step as the live map.
#[derive(Default)]
struct Recent {
    capacity: usize,
    rows: IdMap<String, (u64, Arc<SessionRecord>)>,
    /// Insertion order; an entry whose generation no longer matches `rows` is stale.
    order: VecDeque<(u64, String)>,
    generation: u64,
}

impl Recent {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    fn put(&mut self, record: Arc<SessionRecord>) {
        if self.capacity == 0 {
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        self.order
            .push_back((generation, record.session_id.clone()));
        self.rows
            .insert(record.session_id.clone(), (generation, record));
        while self.order.len() > self.capacity {
            if let Some((g, id)) = self.order.pop_front() {
                if self.rows.get(&id).is_some_and(|(current, _)| *current == g) {
                    self.rows.remove(&id);
                }
            }
        }
    }

    fn get(&self, session_id: &str) -> Option<Arc<SessionRecord>> {
        self.rows
            .get(session_id)
            .map(|(_, record)| Arc::clone(record))
    }

    fn remove(&mut self, session_id: &str) {
        self.rows.remove(session_id);
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.order.clear();
    }
}

struct LiveEntry {
    rowid: i64,
    task_name: Arc<str>,
    created_at: i64,
}

impl LiveIndex {
    fn load(conn: &Connection, recent_capacity: usize) -> Result<LiveIndex, StoreError> {
        let mut index = LiveIndex {
            recent: Recent::new(recent_capacity),
            ..LiveIndex::default()
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

    fn rowid(&self, session_id: &str) -> Option<i64> {
        self.by_id.get(session_id).map(|e| e.rowid)
    }

    /// The newest live record with this task name.
    fn newest_for_task(&self, task_name: &str) -> Option<i64> {
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

    fn apply(&mut self, change: IndexChange) {
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

/// A change to [`LiveIndex`] made by a write, applied once its transaction committed.
/// (An ended record that was stored is added to the recent records afterwards.)
enum IndexChange {
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
struct LiveView<'a> {
    committed: &'a parking_lot::Mutex<LiveIndex>,
    /// Session id → its rowid now (`None`: removed) for ids the batch touched.
    overlay: IdMap<String, Option<i64>>,
    /// The batch emptied the live table.
    cleared: bool,
}

impl<'a> LiveView<'a> {
    fn new(committed: &'a parking_lot::Mutex<LiveIndex>) -> Self {
        Self {
            committed,
            overlay: IdMap::default(),
            cleared: false,
        }
    }

    fn rowid(&self, session_id: &str) -> Option<i64> {
        match self.overlay.get(session_id) {
            Some(v) => *v,
            None if self.cleared => None,
            None => self.committed.lock().rowid(session_id),
        }
    }

    /// Takes in the changes of an operation that succeeded.
    fn note(&mut self, changes: &[IndexChange]) {
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

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// A record to write, with its result already serialised (by the caller, off the writer
/// thread). An ended record is then kept as it is among the recent ones.
struct Row {
    record: Arc<SessionRecord>,
    /// `result` as JSON text.
    result: Option<String>,
    /// The session id was generated for this record: no stored record can have it, so
    /// neither table is searched for an older one.
    fresh: bool,
}

impl Row {
    /// `created` or `running`: kept in the `live` table.
    fn live(&self) -> bool {
        !self.record.state.is_terminal()
    }
}

enum WriteOp {
    Upsert(Box<Row>),
    Delete(String),
    MarkInterrupted {
        now: i64,
    },
    Purge {
        finished_before: i64,
        max_results: u64,
    },
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`: the directory, the database file
    /// `dir/aip.sqlite3` and its schema. Starts the writer thread.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(dir, RECENT_CAPACITY)
    }

    /// [`SqliteStore::open`] keeping at most `recent_capacity` ended records in memory.
    fn open_with(dir: &Path, recent_capacity: usize) -> Result<SqliteStore, StoreError> {
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
        let live = Arc::new(parking_lot::Mutex::new(LiveIndex::load(
            &writer,
            recent_capacity,
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
            .send(Job { op, reply })
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

fn init_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "database schema version {version} is newer than supported ({SCHEMA_VERSION})"
        )));
    }
    tx.execute_batch(SCHEMA).map_err(db_err)?;
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

// ---------------------------------------------------------------------------
// Writer thread

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    live: &parking_lot::Mutex<LiveIndex>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (writes, started) = (batch.len(), std::time::Instant::now());
        run_batch(&mut conn, &mut batch, live);
        crate::metrics::store_commit(writes, started.elapsed());
    }
}

type BatchOutcome = (Vec<Result<u64, StoreError>>, Vec<IndexChange>);

/// Runs every job of `batch` in one transaction, commits, updates the live index, then
/// answers the waiters.
fn run_batch(conn: &mut Connection, batch: &mut Vec<Job>, live: &parking_lot::Mutex<LiveIndex>) {
    // Fast path: every operation straight in one transaction. Operations rarely fail; when
    // one does, the batch is rolled back and replayed with a savepoint per operation, so a
    // failing write never undoes the others.
    let outcome = match run_plain(conn, batch, live) {
        Ok(Some(done)) => Ok(done),
        Ok(None) => run_isolated(conn, batch, live),
        Err(e) => Err(e),
    };
    match outcome {
        Ok((results, changes)) => {
            let mut replies = Vec::with_capacity(batch.len());
            let mut ended = Vec::new();
            for (Job { op, reply }, result) in batch.drain(..).zip(results) {
                if let (Ok(_), WriteOp::Upsert(row)) = (&result, op) {
                    if !row.live() {
                        ended.push(row.record);
                    }
                }
                replies.push((reply, result));
            }
            if !changes.is_empty() || !ended.is_empty() {
                let mut index = live.lock();
                for change in changes {
                    index.apply(change);
                }
                for row in ended {
                    index.recent.put(row);
                }
            }
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(StoreError::Database(msg.clone())));
            }
        }
    }
}

/// All operations in one transaction; `None` (rolled back) if any of them fails.
fn run_plain(
    conn: &mut Connection,
    batch: &[Job],
    live: &parking_lot::Mutex<LiveIndex>,
) -> rusqlite::Result<Option<BatchOutcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut view = LiveView::new(live);
    let mut results = Vec::with_capacity(batch.len());
    let mut changes = Vec::with_capacity(batch.len());
    for job in batch {
        match apply(&tx, &job.op, &view) {
            Ok((n, mut c)) => {
                view.note(&c);
                changes.append(&mut c);
                results.push(Ok(n));
            }
            Err(_) => return Ok(None), // dropping `tx` rolls back
        }
    }
    tx.commit()?;
    Ok(Some((results, changes)))
}

/// Each operation in its own savepoint inside one transaction.
fn run_isolated(
    conn: &mut Connection,
    batch: &[Job],
    live: &parking_lot::Mutex<LiveIndex>,
) -> rusqlite::Result<BatchOutcome> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut view = LiveView::new(live);
    let mut results = Vec::with_capacity(batch.len());
    let mut changes = Vec::with_capacity(batch.len());
    for job in batch {
        let sp = tx.savepoint()?;
        match apply(&sp, &job.op, &view) {
            Ok((n, mut c)) => {
                sp.commit()?;
                view.note(&c);
                changes.append(&mut c);
                results.push(Ok(n));
            }
            // Dropping the savepoint rolls this job back; the others stay.
            Err(e) => {
                drop(sp);
                results.push(Err(db_err(e)));
            }
        }
    }
    tx.commit()?;
    Ok((results, changes))
}

fn apply(
    conn: &Connection,
    op: &WriteOp,
    live: &LiveView<'_>,
) -> rusqlite::Result<(u64, Vec<IndexChange>)> {
    let mut changes = Vec::new();
    let n = match op {
        WriteOp::Upsert(r) => {
            let rec = &*r.record;
            let rowid = if r.fresh {
                None
            } else {
                live.rowid(&rec.session_id)
            };
            let created_at = rec.created_at.timestamp_micros();
            let values = params![
                rec.session_id,
                rec.task_name,
                rec.request,
                rec.origin.as_str(),
                rec.owner,
                rec.executor,
                rec.platform,
                rec.state.as_str(),
                rec.reason,
                rec.error,
                r.result,
                created_at,
                rec.started_at.map(|t| t.timestamp_micros()),
                rec.finished_at.map(|t| t.timestamp_micros()),
                rec.echo_received,
            ];
            if !r.live() {
                // Ended: into `sessions`, out of `live`.
                let n = conn.prepare_cached(UPSERT_SQL)?.execute(values)?;
                if let Some(id) = rowid {
                    conn.prepare_cached("DELETE FROM live WHERE id = ?1")?
                        .execute([id])?;
                    changes.push(IndexChange::Remove(rec.session_id.clone()));
                }
                n
            } else {
                let id = match rowid {
                    Some(id) => {
                        let mut all = values.to_vec();
                        all.push(&id);
                        conn.prepare_cached(UPDATE_LIVE_SQL)?
                            .execute(all.as_slice())?;
                        id
                    }
                    None => {
                        // New (an ended record of the same id, if any, is replaced).
                        if !r.fresh {
                            conn.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
                                .execute([&rec.session_id])?;
                        }
                        conn.prepare_cached(INSERT_LIVE_SQL)?.execute(values)?;
                        conn.last_insert_rowid()
                    }
                };
                changes.push(IndexChange::Insert(
                    rec.session_id.clone(),
                    LiveEntry {
                        rowid: id,
                        task_name: Arc::from(rec.task_name.as_str()),
                        created_at,
                    },
                ));
                1
            }
        }
        WriteOp::Delete(id) => {
            let mut n = conn
                .prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
                .execute([id])?;
            if let Some(rowid) = live.rowid(id) {
                n += conn
                    .prepare_cached("DELETE FROM live WHERE id = ?1")?
                    .execute([rowid])?;
            }
            changes.push(IndexChange::Remove(id.clone()));
            n
        }
        WriteOp::MarkInterrupted { now } => {
            // Records of version 1 were live in `sessions` itself.
            let in_place = conn
                .prepare_cached(
                    "UPDATE sessions SET state = 'failed', reason = 'server_restarted', \
                     error = 'Server restarted while the task was running', finished_at = ?1 \
                     WHERE state IN ('created', 'running')",
                )?
                .execute([now])?;
            conn.prepare_cached(INTERRUPT_LIVE_SQL)?.execute([now])?;
            let moved = conn.prepare_cached("DELETE FROM live")?.execute([])?;
            changes.push(IndexChange::Clear);
            in_place + moved
        }
        WriteOp::Purge {
            finished_before,
            max_results,
        } => {
            let by_age = conn
                .prepare_cached(&format!(
                    "DELETE FROM sessions WHERE state IN {ENDED} AND finished_at < ?1"
                ))?
                .execute([finished_before])?;
            let ended: i64 = conn
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM sessions WHERE state IN {ENDED}"
                ))?
                .query_row([], |row| row.get(0))?;
            let max = i64::try_from(*max_results).unwrap_or(i64::MAX);
            let by_count = if ended > max {
                // NULL finished_at sorts first, i.e. counts as oldest.
                conn.prepare_cached(&format!(
                    "DELETE FROM sessions WHERE rowid IN (
                         SELECT rowid FROM sessions WHERE state IN {ENDED}
                         ORDER BY finished_at ASC, rowid ASC LIMIT ?1)"
                ))?
                .execute([ended - max])?
            } else {
                0
            };
            changes.push(IndexChange::ForgetEnded);
            by_age + by_count
        }
    };
    Ok((u64::try_from(n).unwrap_or(u64::MAX), changes))
}

// ---------------------------------------------------------------------------
// Rows

fn to_row(mut r: SessionRecord, fresh: bool) -> Result<Row, StoreError> {
    // Times are stored to the microsecond; the record kept in memory says what a read from
    // the file would.
    r.created_at = r.created_at.trunc_subsecs(6);
    r.started_at = r.started_at.map(|t| t.trunc_subsecs(6));
    r.finished_at = r.finished_at.map(|t| t.trunc_subsecs(6));
    let result = match &r.result {
        Some(v) => Some(serde_json::to_string(v).map_err(db_err)?),
        None => None,
    };
    Ok(Row {
        result,
        record: Arc::new(r),
        fresh,
    })
}

/// Column values as read, before validation.
struct RawRow {
    session_id: String,
    task_name: String,
    request: String,
    origin: String,
    owner: Option<String>,
    executor: String,
    platform: String,
    state: String,
    reason: Option<String>,
    error: Option<String>,
    result: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    echo_received: bool,
}

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        session_id: row.get(0)?,
        task_name: row.get(1)?,
        request: row.get(2)?,
        origin: row.get(3)?,
        owner: row.get(4)?,
        executor: row.get(5)?,
        platform: row.get(6)?,
        state: row.get(7)?,
        reason: row.get(8)?,
        error: row.get(9)?,
        result: row.get(10)?,
        created_at: row.get(11)?,
        started_at: row.get(12)?,
        finished_at: row.get(13)?,
        echo_received: row.get(14)?,
    })
}

fn micros(v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| StoreError::Database(format!("timestamp out of range: {v}")))
}

impl TryFrom<RawRow> for SessionRecord {
    type Error = StoreError;

    fn try_from(r: RawRow) -> Result<Self, StoreError> {
        let origin = Origin::parse(&r.origin)
            .ok_or_else(|| StoreError::Database(format!("unknown origin {:?}", r.origin)))?;
        let state = SessionState::parse(&r.state)
            .ok_or_else(|| StoreError::Database(format!("unknown state {:?}", r.state)))?;
        let result = match r.result {
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                StoreError::Database(format!("bad result JSON for {}: {e}", r.session_id))
            })?),
            None => None,
        };
        Ok(SessionRecord {
            session_id: r.session_id,
            task_name: r.task_name,
            request: r.request,
            origin,
            owner: r.owner,
            executor: r.executor,
            platform: r.platform,
            state,
            reason: r.reason,
            error: r.error,
            result,
            created_at: micros(r.created_at)?,
            started_at: r.started_at.map(micros).transpose()?,
            finished_at: r.finished_at.map(micros).transpose()?,
            echo_received: r.echo_received,
        })
    }
}

fn query_one(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<SessionRecord>, StoreError> {
    let raw = conn
        .prepare_cached(sql)
        .map_err(db_err)?
        .query_row(params, raw_row)
        .optional()
        .map_err(db_err)?;
    raw.map(SessionRecord::try_from).transpose()
}

// ---------------------------------------------------------------------------
// The trait

#[async_trait]
impl SessionStore for SqliteStore {
    async fn upsert(&self, record: SessionRecord) -> Result<(), StoreError> {
        let row = to_row(record, false)?;
        self.write(WriteOp::Upsert(Box::new(row))).await.map(|_| ())
    }

    async fn insert_new(&self, record: SessionRecord) -> Result<(), StoreError> {
        let row = to_row(record, true)?;
        self.write(WriteOp::Upsert(Box::new(row))).await.map(|_| ())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).unwrap()
    }

    fn rec(id: &str, task: &str, state: SessionState, created: i64) -> SessionRecord {
        SessionRecord {
            session_id: id.into(),
            task_name: task.into(),
            request: format!("request {id}"),
            origin: Origin::Device,
            owner: Some("owner-1".into()),
            executor: "exec-1".into(),
            platform: "linux".into(),
            state,
            reason: None,
            error: None,
            result: None,
            created_at: t(created),
            started_at: None,
            finished_at: if state.is_terminal() {
                Some(t(created + 10))
            } else {
                None
            },
            echo_received: false,
        }
    }

    /// Stores `r`, which must succeed.
    async fn put(store: &SqliteStore, r: SessionRecord) {
        store.upsert(r).await.unwrap();
    }

    #[tokio::test]
    async fn upsert_get_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(dir.path().join(DB_FILE_NAME).exists());

        let full = SessionRecord {
            session_id: "s1".into(),
            task_name: "task".into(),
            request: "do it — ünïcode".into(),
            origin: Origin::Constellation,
            owner: Some("alice".into()),
            executor: "dev".into(),
            platform: "windows".into(),
            state: SessionState::Completed,
            reason: Some("done".into()),
            error: Some("none really".into()),
            result: Some(Box::new(json!({
                "zeta": 1,
                "alpha": {"y": [1, 2, {"b": null, "a": true}], "x": "s"},
                "mid": 2.5
            }))),
            created_at: Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
                + chrono::Duration::microseconds(123_456),
            started_at: Some(t(1_700_000_000_000_001)),
            finished_at: Some(t(1_700_000_000_999_999)),
            echo_received: true,
        };
        store.upsert(full.clone()).await.unwrap();
        let got = store.get("s1").await.unwrap().unwrap();
        assert_eq!(*got, full);
        assert_eq!(
            serde_json::to_string(got.result.as_ref().unwrap()).unwrap(),
            serde_json::to_string(full.result.as_ref().unwrap()).unwrap(),
            "key order preserved"
        );

        let sparse = SessionRecord {
            origin: Origin::Http,
            owner: None,
            ..rec("s2", "task", SessionState::Created, 5)
        };
        store.upsert(sparse.clone()).await.unwrap();
        assert_eq!(*store.get("s2").await.unwrap().unwrap(), sparse);
        assert!(store.get("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn upsert_replaces_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut r = rec("s", "task", SessionState::Running, 100);
        r.started_at = Some(t(101));
        store.upsert(r.clone()).await.unwrap();
        r.state = SessionState::Completed;
        r.finished_at = Some(t(200));
        r.result = Some(Box::new(json!({"ok": true})));
        r.owner = None;
        store.upsert(r.clone()).await.unwrap();
        assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
        assert_eq!(
            store.list(&SessionFilter::default()).await.unwrap().len(),
            1
        );

        store.delete("s").await.unwrap();
        assert!(store.get("s").await.unwrap().is_none());
        // Deleting something absent is fine.
        store.delete("s").await.unwrap();
    }

    #[tokio::test]
    async fn latest_by_task_name_picks_newest_created() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        put(&store, rec("b", "t", SessionState::Completed, 300)).await;
        put(&store, rec("a", "t", SessionState::Completed, 100)).await;
        put(&store, rec("c", "other", SessionState::Completed, 900)).await;
        put(&store, rec("d", "t", SessionState::Running, 200)).await;
        let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
        assert_eq!(latest.session_id, "b");
        assert!(store.latest_by_task_name("zzz").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn list_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut a = rec("a", "t", SessionState::Running, 1);
        a.owner = Some("x".into());
        a.executor = "y".into();
        let mut b = rec("b", "t", SessionState::Completed, 2);
        b.owner = None;
        b.executor = "x".into();
        let mut c = rec("c", "t", SessionState::Running, 3);
        c.owner = Some("z".into());
        c.executor = "z".into();
        for r in [a, b, c] {
            store.upsert(r).await.unwrap();
        }
        let ids = |v: Vec<SessionRecord>| v.into_iter().map(|r| r.session_id).collect::<Vec<_>>();

        let all = store.list(&SessionFilter::default()).await.unwrap();
        assert_eq!(ids(all), ["c", "b", "a"]);

        let running = SessionFilter {
            state: Some(SessionState::Running),
            ..Default::default()
        };
        assert_eq!(ids(store.list(&running).await.unwrap()), ["c", "a"]);

        let client_x = SessionFilter {
            client_id: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(ids(store.list(&client_x).await.unwrap()), ["b", "a"]);

        let both = SessionFilter {
            state: Some(SessionState::Running),
            client_id: Some("x".into()),
            limit: 0,
        };
        assert_eq!(ids(store.list(&both).await.unwrap()), ["a"]);

        let limited = SessionFilter {
            limit: 2,
            ..Default::default()
        };
        assert_eq!(ids(store.list(&limited).await.unwrap()), ["c", "b"]);

        for i in 0..150 {
            put(
                &store,
                rec(&format!("m{i}"), "many", SessionState::Created, 1000 + i),
            )
            .await;
        }
        assert_eq!(
            store.list(&SessionFilter::default()).await.unwrap().len(),
            DEFAULT_LIST_LIMIT
        );
    }

    #[tokio::test]
    async fn mark_interrupted_fails_live_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        put(&store, rec("c", "t", SessionState::Created, 1)).await;
        put(&store, rec("r", "t", SessionState::Running, 2)).await;
        let mut done = rec("d", "t", SessionState::Completed, 3);
        done.result = Some(Box::new(json!(42)));
        store.upsert(done.clone()).await.unwrap();
        let cancelled = rec("x", "t", SessionState::Cancelled, 4);
        store.upsert(cancelled.clone()).await.unwrap();

        let now = t(1_000_000);
        assert_eq!(store.mark_interrupted(now).await.unwrap(), 2);
        for id in ["c", "r"] {
            let r = store.get(id).await.unwrap().unwrap();
            assert_eq!(r.state, SessionState::Failed);
            assert_eq!(r.reason.as_deref(), Some("server_restarted"));
            assert_eq!(
                r.error.as_deref(),
                Some("Server restarted while the task was running")
            );
            assert_eq!(r.finished_at, Some(now));
        }
        assert_eq!(*store.get("d").await.unwrap().unwrap(), done);
        assert_eq!(*store.get("x").await.unwrap().unwrap(), cancelled);
        assert_eq!(store.mark_interrupted(now).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn purge_by_age_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // Ended records finishing at 10, 20, ..., 100.
        for i in 1..=10 {
            let mut r = rec(&format!("e{i}"), "t", SessionState::Completed, i);
            r.finished_at = Some(t(i * 10));
            store.upsert(r).await.unwrap();
        }
        // Live records, old.
        put(&store, rec("live1", "t", SessionState::Running, 0)).await;
        put(&store, rec("live2", "t", SessionState::Created, 0)).await;

        // By age: finished before 35 -> e1, e2, e3.
        assert_eq!(store.purge(t(35), 1000).await.unwrap(), 3);
        assert!(store.get("e3").await.unwrap().is_none());
        assert!(store.get("e4").await.unwrap().is_some());

        // By count: keep 4 newest-finished of the 7 remaining ended.
        assert_eq!(store.purge(t(0), 4).await.unwrap(), 3);
        let left: Vec<String> = store
            .list(&SessionFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.session_id)
            .collect();
        let mut left_sorted = left.clone();
        left_sorted.sort();
        assert_eq!(left_sorted, ["e10", "e7", "e8", "e9", "live1", "live2"]);

        // Both at once; live records are never purged.
        assert_eq!(store.purge(t(85), 1).await.unwrap(), 3);
        assert!(store.get("e10").await.unwrap().is_some());
        assert_eq!(store.purge(t(i64::MAX / 2), 0).await.unwrap(), 1);
        assert_eq!(
            store.list(&SessionFilter::default()).await.unwrap().len(),
            2
        );
        assert_eq!(store.purge(t(i64::MAX / 2), 0).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rec("s", "t", SessionState::Completed, 77);
        r.result = Some(Box::new(json!({"b": 1, "a": [1, 2]})));
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            let clone = store.clone();
            clone.upsert(r.clone()).await.unwrap();
            let shared: Arc<dyn SessionStore> = Arc::new(store);
            assert!(shared.get("s").await.unwrap().is_some());
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
        // Schema version recorded.
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn open_creates_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        let store = SqliteStore::open(&nested).unwrap();
        put(&store, rec("s", "t", SessionState::Created, 1)).await;
        assert!(nested.join(DB_FILE_NAME).exists());
    }

    /// Makes every insert of `session_id` into `table` fail, behind the store's back.
    fn refuse_inserts(dir: &Path, table: &str, session_id: &str) {
        let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
        conn.execute_batch(&format!(
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
             WHEN NEW.session_id = '{session_id}' \
             BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END;"
        ))
        .unwrap();
    }

    #[tokio::test]
    async fn a_failing_write_fails_alone_and_the_rest_of_its_batch_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // A trigger refusing one id stands in for any failing statement.
        refuse_inserts(dir.path(), "live", "bad");
        let (a, bad, b) = tokio::join!(
            store.upsert(rec("a", "t", SessionState::Running, 1)),
            store.upsert(rec("bad", "t", SessionState::Running, 2)),
            store.upsert(rec("b", "t", SessionState::Running, 3)),
        );
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        assert!(
            matches!(&bad, Err(StoreError::Database(m)) if m.contains("refused by trigger")),
            "{bad:?}"
        );
        assert!(store.get("a").await.unwrap().is_some());
        assert!(store.get("b").await.unwrap().is_some());
        assert!(store.get("bad").await.unwrap().is_none());
    }

    fn count(dir: &Path, table: &str) -> i64 {
        let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Changes a stored record behind the store's back, so a read shows where it came from.
    fn tamper(dir: &Path, session_id: &str) {
        let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
        conn.execute(
            "UPDATE sessions SET error = 'changed on disk' WHERE session_id = ?1",
            [session_id],
        )
        .unwrap();
    }

    #[tokio::test]
    async fn recently_ended_records_are_read_from_memory_and_the_oldest_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(dir.path(), 2).unwrap();
        for id in ["a", "b", "c"] {
            put(&store, rec(id, "t", SessionState::Completed, 1)).await;
            tamper(dir.path(), id);
        }
        let error = |r: Option<Arc<SessionRecord>>| r.unwrap().error.clone();
        // "a" was forgotten (capacity 2): read from the file; "b" and "c" from memory.
        assert_eq!(
            error(store.get("a").await.unwrap()).as_deref(),
            Some("changed on disk")
        );
        assert_eq!(error(store.get("b").await.unwrap()), None);
        assert_eq!(
            *store.get("c").await.unwrap().unwrap(),
            rec("c", "t", SessionState::Completed, 1)
        );
    }

    #[tokio::test]
    async fn every_write_keeps_the_recent_records_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let ended = rec("s", "t", SessionState::Completed, 1);
        store.upsert(ended.clone()).await.unwrap();
        assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&ended));

        // Replaced by an ended record of the same id.
        let mut failed = rec("s", "t", SessionState::Failed, 1);
        failed.error = Some("boom".into());
        store.upsert(failed.clone()).await.unwrap();
        assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&failed));

        // Reused by a live session: the ended record is gone from memory and disk.
        let running = rec("s", "t", SessionState::Running, 2);
        store.upsert(running.clone()).await.unwrap();
        assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&running));

        // Deleted after it ended.
        store.upsert(ended.clone()).await.unwrap();
        store.delete("s").await.unwrap();
        assert_eq!(store.get("s").await.unwrap(), None);

        // Purged.
        store.upsert(ended).await.unwrap();
        assert_eq!(store.purge(t(0), 0).await.unwrap(), 1);
        assert_eq!(store.get("s").await.unwrap(), None);

        // A write that fails is not remembered: the record is unchanged.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = SqliteStore::open(dir2.path()).unwrap();
        refuse_inserts(dir2.path(), "sessions", "bad");
        assert!(store2
            .upsert(rec("bad", "t", SessionState::Completed, 1))
            .await
            .is_err());
        assert_eq!(store2.get("bad").await.unwrap(), None);
    }

    #[tokio::test]
    async fn live_records_stay_out_of_the_indexed_table_until_they_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut r = rec("s", "t", SessionState::Created, 1);
        store.upsert(r.clone()).await.unwrap();
        assert_eq!(
            (count(dir.path(), "live"), count(dir.path(), "sessions")),
            (1, 0)
        );
        r.state = SessionState::Running;
        r.started_at = Some(t(2));
        store.upsert(r.clone()).await.unwrap();
        assert_eq!(count(dir.path(), "live"), 1, "updated in place");
        assert_eq!(*store.get("s").await.unwrap().unwrap(), r);

        r.state = SessionState::Completed;
        r.finished_at = Some(t(3));
        r.result = Some(Box::new(json!({"done": true})));
        store.upsert(r.clone()).await.unwrap();
        assert_eq!(
            (count(dir.path(), "live"), count(dir.path(), "sessions")),
            (0, 1)
        );
        assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
        assert_eq!(store.latest_by_task_name("t").await.unwrap().unwrap(), r);

        // Created and ended within one batch: the end finds the row the batch appended.
        let (a, b) = tokio::join!(
            store.upsert(rec("x", "t2", SessionState::Created, 5)),
            store.upsert(rec("x", "t2", SessionState::Failed, 5)),
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(
            (count(dir.path(), "live"), count(dir.path(), "sessions")),
            (0, 2)
        );
        assert_eq!(
            store.get("x").await.unwrap().unwrap().state,
            SessionState::Failed
        );
        // And a live record created, deleted (a dispatch that could not be queued).
        put(&store, rec("gone", "t3", SessionState::Created, 6)).await;
        store.delete("gone").await.unwrap();
        assert!(store.get("gone").await.unwrap().is_none());
        assert!(store.latest_by_task_name("t3").await.unwrap().is_none());
        assert_eq!(count(dir.path(), "live"), 0);
    }

    #[tokio::test]
    async fn fresh_records_live_and_end_like_upserted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // Two live sessions of one task (they share its name in the index), one ended.
        store
            .insert_new(rec("f1", "shared", SessionState::Created, 1))
            .await
            .unwrap();
        store
            .insert_new(rec("f2", "shared", SessionState::Created, 2))
            .await
            .unwrap();
        put(&store, rec("f1", "shared", SessionState::Running, 1)).await;
        assert_eq!(count(dir.path(), "live"), 2);
        let newest = store.latest_by_task_name("shared").await.unwrap().unwrap();
        assert_eq!(newest.session_id, "f2");
        put(&store, rec("f2", "shared", SessionState::Completed, 2)).await;
        assert_eq!(
            (count(dir.path(), "live"), count(dir.path(), "sessions")),
            (1, 1)
        );
        // The ended record is the newest; the other stays live and found.
        let newest = store.latest_by_task_name("shared").await.unwrap().unwrap();
        assert_eq!(newest.session_id, "f2");
        put(&store, rec("f1", "shared", SessionState::Failed, 1)).await;
        assert_eq!(
            store.get("f1").await.unwrap().unwrap().state,
            SessionState::Failed
        );
        assert_eq!(count(dir.path(), "live"), 0);
        // A fresh record that is already ended goes straight to the indexed table.
        store
            .insert_new(rec("f3", "other", SessionState::Cancelled, 3))
            .await
            .unwrap();
        assert_eq!(count(dir.path(), "sessions"), 3);
        // After a restart the live index is rebuilt from the file, names shared again.
        store
            .insert_new(rec("f4", "shared", SessionState::Created, 4))
            .await
            .unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        let newest = store.latest_by_task_name("shared").await.unwrap().unwrap();
        assert_eq!(newest.session_id, "f4");
    }

    #[tokio::test]
    async fn latest_by_task_name_looks_at_live_and_ended_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        put(&store, rec("old", "t", SessionState::Completed, 100)).await;
        put(&store, rec("live-a", "t", SessionState::Running, 200)).await;
        put(&store, rec("live-b", "t", SessionState::Created, 150)).await;
        let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
        assert_eq!(latest.session_id, "live-a");
        put(&store, rec("live-a", "t", SessionState::Cancelled, 200)).await;
        let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
        assert_eq!(
            (latest.session_id.as_str(), latest.state),
            ("live-a", SessionState::Cancelled)
        );
        put(&store, rec("new", "t", SessionState::Completed, 300)).await;
        let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
        assert_eq!(latest.session_id, "new");
    }

    #[tokio::test]
    async fn live_records_are_found_after_a_restart_and_then_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let r = rec("s", "t", SessionState::Running, 1);
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.upsert(r.clone()).await.unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
        assert_eq!(store.latest_by_task_name("t").await.unwrap().unwrap(), r);
        assert_eq!(store.mark_interrupted(t(9)).await.unwrap(), 1);
        let failed = store.get("s").await.unwrap().unwrap();
        assert_eq!(failed.state, SessionState::Failed);
        assert_eq!(failed.finished_at, Some(t(9)));
        assert_eq!(
            (count(dir.path(), "live"), count(dir.path(), "sessions")),
            (0, 1)
        );
        // A new live record after the restart is live again.
        put(&store, rec("n", "t", SessionState::Created, 10)).await;
        assert_eq!(
            store
                .latest_by_task_name("t")
                .await
                .unwrap()
                .unwrap()
                .session_id,
            "n"
        );
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
            conn.execute_batch(
                "CREATE TABLE sessions (
                    session_id TEXT PRIMARY KEY, task_name TEXT NOT NULL,
                    request TEXT NOT NULL, origin TEXT NOT NULL, owner TEXT NULL,
                    executor TEXT NOT NULL, platform TEXT NOT NULL, state TEXT NOT NULL,
                    reason TEXT, error TEXT, result TEXT, created_at INTEGER NOT NULL,
                    started_at INTEGER NULL, finished_at INTEGER NULL,
                    echo_received INTEGER NOT NULL);
                 INSERT INTO sessions VALUES ('v1', 't', 'r', 'http', NULL, 'd', 'linux',
                    'running', NULL, NULL, NULL, 1, 2, NULL, 1);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get("v1").await.unwrap().unwrap().state,
            SessionState::Running
        );
        assert_eq!(store.mark_interrupted(t(5)).await.unwrap(), 1);
        assert_eq!(
            store.get("v1").await.unwrap().unwrap().reason.as_deref(),
            Some("server_restarted")
        );
    }

    #[tokio::test]
    async fn bad_stored_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        // Without recent records in memory: every read goes to the file.
        let store = SqliteStore::open_with(dir.path(), 0).unwrap();
        put(&store, rec("s", "t", SessionState::Created, 1)).await;
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
        // "s" is live; "e" has ended: both tables' rows are checked on the way out.
        conn.execute("UPDATE live SET state = 'weird'", []).unwrap();
        assert!(matches!(store.get("s").await, Err(StoreError::Database(_))));
        conn.execute("UPDATE live SET state = 'created'", [])
            .unwrap();
        put(&store, rec("e", "t", SessionState::Completed, 2)).await;
        conn.execute("UPDATE sessions SET result = '{not json'", [])
            .unwrap();
        assert!(matches!(store.get("e").await, Err(StoreError::Database(_))));
        conn.execute("UPDATE sessions SET result = NULL, origin = 'mars'", [])
            .unwrap();
        assert!(matches!(
            store.list(&SessionFilter::default()).await,
            Err(StoreError::Database(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_upserts_are_batched() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut handles = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut r = rec(&format!("s{i:03}"), "t", SessionState::Completed, i);
                r.result = Some(Box::new(json!({ "i": i })));
                store.upsert(r).await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        for i in 0..200 {
            let r = store.get(&format!("s{i:03}")).await.unwrap().unwrap();
            assert_eq!(r.result, Some(Box::new(json!({ "i": i }))));
        }
        let all = store
            .list(&SessionFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 200);
    }
}
