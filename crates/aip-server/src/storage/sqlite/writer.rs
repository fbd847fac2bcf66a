//! The writer thread: group commit of every queued write in one transaction.

use std::sync::Arc;

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::db_err;
use super::memory::{IndexChange, LiveEntry, LiveView, Memory};
use super::migrate;
use super::rows::Row;
use super::sql::{ENDED, INSERT_LIVE_SQL, INTERRUPT_LIVE_SQL, UPDATE_LIVE_SQL, UPSERT_SQL};
use crate::storage::{EndReason, Refusal, SessionState, StoreError};

/// Capacity of the queue in front of the writer thread.
pub(super) const QUEUE_CAPACITY: usize = 4096;
/// Most operations committed in one transaction.
const MAX_BATCH: usize = 513;

pub(super) enum WriteOp {
    Upsert(Box<Row>),
    Delete(String),
    MarkInterrupted {
        now: i64,
    },
    Purge {
        finished_before: i64,
        max_results: u64,
    },
    /// Rewrites the probe row (readiness).
    Probe {
        now: i64,
    },
    /// A write of the job store (`jobs.rs`).
    Job(Box<super::jobs::JobWrite>),
}

pub(super) struct WriteRequest {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<u64, StoreError>>,
}

pub(super) fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteRequest>,
    live: &parking_lot::Mutex<Memory>,
) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
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
fn run_batch(
    conn: &mut Connection,
    batch: &mut Vec<WriteRequest>,
    live: &parking_lot::Mutex<Memory>,
) {
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
            for (WriteRequest { op, reply }, result) in batch.drain(..).zip(results) {
                let result = match (&op, result) {
                    (WriteOp::Upsert(_), Ok(0)) => Err(StoreError::Refused(Refusal::Ended)),
                    (_, r) => r,
                };
                if let (Ok(_), WriteOp::Upsert(row)) = (&result, op) {
                    if !row.live() {
                        let weight = super::memory::weight(&row.record, row.result.as_deref());
                        ended.push((row.record, weight));
                    }
                }
                replies.push((reply, result));
            }
            if !changes.is_empty() || !ended.is_empty() {
                let mut index = live.lock();
                for change in changes {
                    index.apply(change);
                }
                for (record, weight) in ended {
                    index.recent.put(record, weight);
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
    batch: &[WriteRequest],
    live: &parking_lot::Mutex<Memory>,
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
    batch: &[WriteRequest],
    live: &parking_lot::Mutex<Memory>,
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

/// What one operation did: rows changed, and the changes to the live index once committed.
type Applied = (u64, Vec<IndexChange>);

fn apply(conn: &Connection, op: &WriteOp, live: &LiveView<'_>) -> rusqlite::Result<Applied> {
    let mut changes = Vec::new();
    let n = match op {
        WriteOp::Upsert(row) => upsert(conn, row, live, &mut changes)?,
        WriteOp::Delete(id) => delete(conn, id, live, &mut changes)?,
        WriteOp::MarkInterrupted { now } => mark_interrupted(conn, *now, &mut changes)?,
        WriteOp::Purge {
            finished_before,
            max_results,
        } => purge(conn, *finished_before, *max_results, &mut changes)?,
        WriteOp::Probe { now } => conn.execute(
            "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            [now],
        )?,
        WriteOp::Job(w) => super::jobs::apply(conn, w)?,
    };
    Ok((u64::try_from(n).unwrap_or(u64::MAX), changes))
}

/// An ended record goes into `sessions` (and out of `live`); a live one is appended to
/// `live`, or updated where it is. An ended record already stored is final: nothing is
/// written over it (0 rows, which `run_batch` reports as [`Refusal::Ended`]).
fn upsert(
    conn: &Connection,
    r: &Row,
    live: &LiveView<'_>,
    changes: &mut Vec<IndexChange>,
) -> rusqlite::Result<usize> {
    let rec = &*r.record;
    let rowid = if r.generated_id {
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
        rec.requester,
        rec.executor,
        rec.platform,
        rec.state.as_str(),
        rec.reason.map(EndReason::as_str),
        rec.error,
        r.result,
        created_at,
        rec.started_at.map(|t| t.timestamp_micros()),
        rec.finished_at.map(|t| t.timestamp_micros()),
        rec.echo_received,
        rec.job_id,
    ];
    if !r.live() {
        let n = conn.prepare_cached(UPSERT_SQL)?.execute(values)?;
        if n == 0 {
            return Ok(0);
        }
        if let Some(id) = rowid {
            conn.prepare_cached("DELETE FROM live WHERE id = ?1")?
                .execute([id])?;
            changes.push(IndexChange::Remove(rec.session_id.clone()));
        }
        return Ok(n);
    }
    let id = match rowid {
        Some(id) => {
            let mut all = values.to_vec();
            all.push(&id);
            conn.prepare_cached(UPDATE_LIVE_SQL)?
                .execute(all.as_slice())?;
            id
        }
        None => {
            // Not live yet. A new run of its id replaces an ended record of that id;
            // any other write over an ended record is refused (an ended session is final).
            if r.new_run && !r.generated_id {
                conn.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
                    .execute([&rec.session_id])?;
            } else if !r.generated_id
                && conn
                    .prepare_cached("SELECT 1 FROM sessions WHERE session_id = ?1")?
                    .exists([&rec.session_id])?
            {
                return Ok(0);
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
    Ok(1)
}

fn delete(
    conn: &Connection,
    id: &str,
    live: &LiveView<'_>,
    changes: &mut Vec<IndexChange>,
) -> rusqlite::Result<usize> {
    let mut n = conn
        .prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
        .execute([id])?;
    if let Some(rowid) = live.rowid(id) {
        n += conn
            .prepare_cached("DELETE FROM live WHERE id = ?1")?
            .execute([rowid])?;
    }
    changes.push(IndexChange::Remove(id.to_owned()));
    Ok(n)
}

/// Start-up: every live record ends as failed / server_restarted.
fn mark_interrupted(
    conn: &Connection,
    now: i64,
    changes: &mut Vec<IndexChange>,
) -> rusqlite::Result<usize> {
    let in_place = migrate::interrupt_v1_live_rows(conn, now)?;
    conn.prepare_cached(INTERRUPT_LIVE_SQL)?
        .execute(interrupted_params(now))?;
    let moved = conn.prepare_cached("DELETE FROM live")?.execute([])?;
    changes.push(IndexChange::Clear);
    Ok(in_place + moved)
}

/// Ended records finished before `finished_before`, then the oldest beyond `max_results`.
fn purge(
    conn: &Connection,
    finished_before: i64,
    max_results: u64,
    changes: &mut Vec<IndexChange>,
) -> rusqlite::Result<usize> {
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
    let max = i64::try_from(max_results).unwrap_or(i64::MAX);
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
    Ok(by_age + by_count)
}

/// The values [`INTERRUPT_LIVE_SQL`] (and version 1's update) bind: `?1` the time, then
/// the state, reason and error of a session the server's stop interrupted.
pub(super) fn interrupted_params(now: i64) -> (i64, &'static str, &'static str, &'static str) {
    (
        now,
        SessionState::Failed.as_str(),
        EndReason::ServerRestarted.as_str(),
        aip_protocol::errors::SERVER_RESTARTED,
    )
}
