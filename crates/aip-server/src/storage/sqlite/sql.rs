//! The SQL of the store: the schema, the record's columns and every fixed statement.
//!
//! The columns are macros so that `concat!` builds each statement at compile time. The
//! `owner` column holds the record's `requester` (the name predates the glossary; it is
//! kept for existing databases).

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
    echo_received INTEGER NOT NULL,
    job_id        TEXT NULL"
    };
}

macro_rules! columns {
    () => {
        "session_id, task_name, request, origin, owner, executor, platform, \
         state, reason, error, result, created_at, started_at, finished_at, echo_received, job_id"
    };
}

/// `?1` … `?16`, in [`COLUMNS`] order.
macro_rules! values {
    () => {
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
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
    echo_received = excluded.echo_received, job_id = excluded.job_id"
    };
}

// The primary key of `sessions` is `session_id` (kept so, for existing databases); the
// session_id column of `live` is found through the in-memory map instead of an index.
pub(super) const SCHEMA: &str = concat!(
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
    ");
-- One row, rewritten by the readiness probe: proof that a write commits.
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);"
);

pub(super) const COLUMNS: &str = columns!();

/// An ended record is final: writing one over it changes nothing (0 rows; the writer
/// reports the refusal).
pub(super) const UPSERT_SQL: &str = concat!(
    "INSERT INTO sessions (",
    columns!(),
    ") ",
    values!(),
    " ON CONFLICT(session_id) DO NOTHING"
);

pub(super) const INSERT_LIVE_SQL: &str = concat!("INSERT INTO live (", columns!(), ") ", values!());

pub(super) const UPDATE_LIVE_SQL: &str = "
UPDATE live SET session_id = ?1, task_name = ?2, request = ?3, origin = ?4, owner = ?5,
                executor = ?6, platform = ?7, state = ?8, reason = ?9, error = ?10,
                result = ?11, created_at = ?12, started_at = ?13, finished_at = ?14,
                echo_received = ?15, job_id = ?16
WHERE id = ?17";

/// Start-up: every live record moves to `sessions` as failed / server_restarted (`?1` the
/// time, `?2`–`?4` state, reason and error: `writer::interrupted_params`).
pub(super) const INTERRUPT_LIVE_SQL: &str = concat!(
    "INSERT INTO sessions (",
    columns!(),
    ")
SELECT session_id, task_name, request, origin, owner, executor, platform,
       ?2, ?3, ?4, result,
       created_at, started_at, ?1, echo_received, job_id
FROM live WHERE true ",
    on_conflict_replace!()
);

/// The ended states, for `state IN …` clauses.
pub(super) const ENDED: &str = "('completed', 'failed', 'cancelled')";
