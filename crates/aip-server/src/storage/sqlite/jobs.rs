//! The [`JobStore`] on SQLite: tables `jobs` and `job_members` in the same file as the
//! sessions, written through the same writer thread (group commit: a job runner's batch
//! of member changes is one operation of a batch), read on the read connections.
//!
//! At start-up [`interrupt`] runs after the sessions' own interruption, so every session
//! a running member had is then in `sessions`: the member takes its session's final
//! state (a session that ended just before the stop, its change not written yet, keeps
//! its outcome); a member whose session was not written yet fails, and pending members
//! are skipped, with reason `server_restarted`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::rows::micros;
use super::writer::WriteOp;
use super::{db_err, SqliteStore};
use crate::storage::jobs::{JobReason, JobRecord, JobState, JobStore, MemberRecord, MemberState};
use crate::storage::StoreError;

/// The job tables (run at every open; `IF NOT EXISTS`).
pub(super) const JOBS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT NOT NULL PRIMARY KEY,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT NULL,
    counts      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS job_members (
    job_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    client_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT NULL,
    session_id  TEXT NULL,
    exit_code   INTEGER NULL,
    output      TEXT NULL,
    started_at  INTEGER NULL,
    finished_at INTEGER NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;";

/// One write of the job store, run on the writer thread.
pub(super) enum JobWrite {
    Create(JobRecord, Vec<MemberRecord>),
    Update(JobRecord, Vec<MemberRecord>),
    Interrupt { now: i64 },
    Purge { finished_before: i64 },
}

/// Runs `w` inside the writer's transaction; returns the rows it changed.
pub(super) fn apply(conn: &Connection, w: &JobWrite) -> rusqlite::Result<usize> {
    match w {
        JobWrite::Create(job, members) => {
            let mut n = write_job(conn, job)?;
            for m in members {
                n += write_member(conn, &job.job_id, m)?;
            }
            Ok(n)
        }
        JobWrite::Update(job, changed) => {
            let mut n = write_job(conn, job)?;
            for m in changed {
                n += write_member(conn, &job.job_id, m)?;
            }
            Ok(n)
        }
        JobWrite::Interrupt { now } => interrupt(conn, *now),
        JobWrite::Purge { finished_before } => {
            let ended = "SELECT job_id FROM jobs WHERE state != 'running' AND finished_at < ?1";
            conn.prepare_cached(&format!(
                "DELETE FROM job_members WHERE job_id IN ({ended})"
            ))?
            .execute([finished_before])?;
            conn.prepare_cached("DELETE FROM jobs WHERE state != 'running' AND finished_at < ?1")?
                .execute([finished_before])
        }
    }
}

fn write_job(conn: &Connection, j: &JobRecord) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO jobs (job_id, spec, state, reason, counts, created_at, finished_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (job_id) DO UPDATE SET \
         state = excluded.state, reason = excluded.reason, counts = excluded.counts, \
         finished_at = excluded.finished_at",
    )?
    .execute(params![
        j.job_id,
        j.spec.to_string(),
        j.state.as_str(),
        j.reason.map(JobReason::as_str),
        counts_text(&j.counts),
        j.created_at.timestamp_micros(),
        j.finished_at.map(|t| t.timestamp_micros()),
    ])
}

fn write_member(conn: &Connection, job_id: &str, m: &MemberRecord) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO job_members (job_id, seq, client_id, state, reason, \
         session_id, exit_code, output, started_at, finished_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        job_id,
        m.seq,
        m.client_id,
        m.state.as_str(),
        m.reason.map(JobReason::as_str),
        m.session_id,
        m.exit_code,
        m.output,
        m.started_at.map(|t| t.timestamp_micros()),
        m.finished_at.map(|t| t.timestamp_micros()),
    ])
}

/// `counts` as stored: the six numbers, comma-separated, in [`MemberState::ALL`] order.
fn counts_text(counts: &[u32; 6]) -> String {
    counts.map(|c| c.to_string()).join(",")
}

fn parse_counts(text: &str) -> Result<[u32; 6], StoreError> {
    let mut counts = [0u32; 6];
    let mut parts = text.split(',');
    for c in &mut counts {
        *c = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| StoreError::Database(format!("bad job counts {text:?}")))?;
    }
    Ok(counts)
}

/// Start-up: running jobs end as failed / `server_restarted` (see the module comment).
fn interrupt(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    let running = "job_id IN (SELECT job_id FROM jobs WHERE state = 'running')";
    conn.execute(
        &format!(
            "UPDATE job_members SET state = s.state, reason = s.reason, \
             finished_at = s.finished_at FROM sessions AS s \
             WHERE job_members.session_id = s.session_id AND job_members.state = 'running' \
             AND s.state IN ('completed', 'failed', 'cancelled') AND job_members.{running}"
        ),
        [],
    )?;
    conn.execute(
        &format!(
            "UPDATE job_members SET state = 'failed', reason = 'server_restarted', \
             finished_at = ?1 WHERE state = 'running' AND {running}"
        ),
        [now],
    )?;
    conn.execute(
        &format!(
            "UPDATE job_members SET state = 'skipped', reason = 'server_restarted' \
             WHERE state = 'pending' AND {running}"
        ),
        [],
    )?;
    let ids: Vec<String> = conn
        .prepare("SELECT job_id FROM jobs WHERE state = 'running'")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &ids {
        let mut counts = [0u32; 6];
        let mut stmt = conn.prepare_cached(
            "SELECT state, COUNT(*) FROM job_members WHERE job_id = ?1 GROUP BY state",
        )?;
        let rows = stmt.query_map([id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?))
        })?;
        for row in rows {
            let (state, n) = row?;
            if let Some(s) = MemberState::parse(&state) {
                counts[s.index()] = n;
            }
        }
        conn.prepare_cached(
            "UPDATE jobs SET state = 'failed', reason = 'server_restarted', counts = ?2, \
             finished_at = ?3 WHERE job_id = ?1",
        )?
        .execute(params![id, counts_text(&counts), now])?;
    }
    Ok(ids.len())
}

fn job_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        job_id: row.get(0)?,
        spec: row.get(1)?,
        state: row.get(2)?,
        reason: row.get(3)?,
        counts: row.get(4)?,
        created_at: row.get(5)?,
        finished_at: row.get(6)?,
    })
}

/// A `jobs` row as read, before validation.
struct RawJob {
    job_id: String,
    spec: String,
    state: String,
    reason: Option<String>,
    counts: String,
    created_at: i64,
    finished_at: Option<i64>,
}

fn reason_of(text: Option<String>) -> Result<Option<JobReason>, StoreError> {
    text.map(|t| {
        JobReason::parse(&t)
            .ok_or_else(|| StoreError::Database(format!("unknown job reason {t:?}")))
    })
    .transpose()
}

impl TryFrom<RawJob> for JobRecord {
    type Error = StoreError;

    fn try_from(r: RawJob) -> Result<Self, StoreError> {
        Ok(JobRecord {
            spec: serde_json::from_str(&r.spec).map_err(db_err)?,
            state: JobState::parse(&r.state)
                .ok_or_else(|| StoreError::Database(format!("unknown job state {:?}", r.state)))?,
            reason: reason_of(r.reason)?,
            counts: parse_counts(&r.counts)?,
            created_at: micros(r.created_at)?,
            finished_at: r.finished_at.map(micros).transpose()?,
            job_id: r.job_id,
        })
    }
}

type RawMember = (
    u32,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn member_of(raw: RawMember) -> Result<MemberRecord, StoreError> {
    let (seq, client_id, state, reason, session_id, exit_code, output, started, finished) = raw;
    Ok(MemberRecord {
        seq,
        client_id,
        state: MemberState::parse(&state)
            .ok_or_else(|| StoreError::Database(format!("unknown member state {state:?}")))?,
        reason: reason_of(reason)?,
        session_id,
        exit_code,
        output,
        started_at: started.map(micros).transpose()?,
        finished_at: finished.map(micros).transpose()?,
    })
}

const JOB_COLUMNS: &str = "job_id, spec, state, reason, counts, created_at, finished_at";

fn read_job(
    conn: &Connection,
    id: &str,
) -> Result<Option<(JobRecord, Vec<MemberRecord>)>, StoreError> {
    let raw = conn
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"))
        .map_err(db_err)?
        .query_row([id], job_of)
        .optional()
        .map_err(db_err)?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    let job = JobRecord::try_from(raw)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, client_id, state, reason, session_id, exit_code, output, started_at, \
             finished_at FROM job_members WHERE job_id = ?1 ORDER BY seq",
        )
        .map_err(db_err)?;
    let raws = stmt
        .query_map([id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<RawMember>>>()
        .map_err(db_err)?;
    let members = raws.into_iter().map(member_of).collect::<Result<_, _>>()?;
    Ok(Some((job, members)))
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_job(
        &self,
        job: JobRecord,
        members: Vec<MemberRecord>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::Job(Box::new(JobWrite::Create(job, members))))
            .await
            .map(|_| ())
    }

    async fn update_job(
        &self,
        job: JobRecord,
        changed: Vec<MemberRecord>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::Job(Box::new(JobWrite::Update(job, changed))))
            .await
            .map(|_| ())
    }

    async fn get_job(
        &self,
        job_id: &str,
    ) -> Result<Option<(JobRecord, Vec<MemberRecord>)>, StoreError> {
        let id = job_id.to_owned();
        self.read(move |conn| read_job(conn, &id)).await
    }

    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1"
                ))
                .map_err(db_err)?;
            let raws = stmt
                .query_map([limit], job_of)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            raws.into_iter().map(JobRecord::try_from).collect()
        })
        .await
    }

    async fn interrupt_jobs(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(WriteOp::Job(Box::new(JobWrite::Interrupt {
            now: now.timestamp_micros(),
        })))
        .await
    }

    async fn purge_jobs(&self, finished_before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(WriteOp::Job(Box::new(JobWrite::Purge {
            finished_before: finished_before.timestamp_micros(),
        })))
        .await
    }
}
