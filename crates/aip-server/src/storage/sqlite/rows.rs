//! Mapping between [`SessionRecord`] and table rows.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::{Connection, OptionalExtension};

use super::db_err;
use crate::storage::{EndReason, Origin, SessionRecord, SessionState, StoreError};

/// A record to write, with its result already serialised (by the caller, off the writer
/// thread). An ended record is then kept as it is among the recent ones.
pub(super) struct Row {
    pub(super) record: Arc<SessionRecord>,
    /// `result` as JSON text.
    pub(super) result: Option<String>,
    /// The session id was generated for this record: no stored record can have it, so
    /// neither table is searched for an older one.
    pub(super) generated_id: bool,
    /// The first record of a new run of its session ([`crate::storage::SessionStore::insert_new`]): it
    /// replaces an ended record of the same id. Any other write over an ended record is
    /// refused.
    pub(super) new_run: bool,
}

impl Row {
    /// `created` or `running`: kept in the `live` table.
    pub(super) fn live(&self) -> bool {
        !self.record.state.is_terminal()
    }
}

pub(super) fn to_row(
    mut r: SessionRecord,
    generated_id: bool,
    new_run: bool,
) -> Result<Row, StoreError> {
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
        generated_id,
        new_run,
    })
}

/// Column values as read, before validation.
pub(super) struct RawRow {
    session_id: String,
    task_name: String,
    request: String,
    origin: String,
    requester: Option<String>,
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
    job_id: Option<String>,
}

pub(super) fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        session_id: row.get(0)?,
        task_name: row.get(1)?,
        request: row.get(2)?,
        origin: row.get(3)?,
        requester: row.get(4)?,
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
        job_id: row.get(15)?,
    })
}

pub(super) fn micros(v: i64) -> Result<DateTime<Utc>, StoreError> {
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
        let reason = match r.reason {
            Some(text) => Some(
                EndReason::parse(&text)
                    .ok_or_else(|| StoreError::Database(format!("unknown end reason {text:?}")))?,
            ),
            None => None,
        };
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
            requester: r.requester,
            executor: r.executor,
            platform: r.platform,
            state,
            reason,
            error: r.error,
            result,
            created_at: micros(r.created_at)?,
            started_at: r.started_at.map(micros).transpose()?,
            finished_at: r.finished_at.map(micros).transpose()?,
            echo_received: r.echo_received,
            job_id: r.job_id,
        })
    }
}

pub(super) fn query_one(
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
