//! The [`JobStore`] on Redis: fleet jobs shared by every node of a cluster, so that any
//! node lists and reads any job, whichever node runs it.
//!
//! Layout, every key with the hash tag `{aip}` (one slot of a Redis Cluster, so each
//! script below is atomic):
//!
//! | key | what |
//! |---|---|
//! | `{aip}:j:<id>` | the job, JSON (spec, state, reason, counts, times) |
//! | `{aip}:jm:<id>` | hash: member seq → the member, JSON |
//! | `{aip}:jobs` | zset of every job id by creation time (µs) |
//! | `{aip}:jobs:running` | hash: running job id → the node whose runner drives it |
//! | `{aip}:jobs:ended` | zset of ended job ids by end time (retention) |
//!
//! A job's writes are accepted only from the node `{aip}:jobs:running` names for it:
//! once its node restarted or was declared lost and its live part was failed
//! ([`RedisStore::interrupt_jobs_of`]), that node's late writes are refused, as for
//! sessions. Nothing secret is stored: a job holds its request as accepted.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use redis::Script;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{from_micros, micros, redis_err, RedisStore};
use crate::storage::jobs::{JobReason, JobRecord, JobState, JobStore, MemberRecord, MemberState};
use crate::storage::{EndReason, StoreError};

const JOBS: &str = "{aip}:jobs";
const RUNNING: &str = "{aip}:jobs:running";

/// Most jobs deleted by one run of [`PURGE`].
const PURGE_BATCH: u64 = 1000;

fn job_key(job_id: &str) -> String {
    format!("{{aip}}:j:{job_id}")
}

fn members_key(job_id: &str) -> String {
    format!("{{aip}}:jm:{job_id}")
}

/// Writes a job and some of its members. KEYS: job, members. ARGV: job id, job JSON,
/// created (µs), finished (µs, '' while running), node, mode ('create' or 'update'),
/// then seq, member JSON pairs. An update is written only while `node` runs the job;
/// returns 1 when written, 0 when refused.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = '{aip}:'
local id = ARGV[1]
if ARGV[6] == 'update' and redis.call('HGET', p..'jobs:running', id) ~= ARGV[5] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', p..'jobs', ARGV[3], id)
if ARGV[4] == '' then
  redis.call('HSET', p..'jobs:running', id, ARGV[5])
  redis.call('ZREM', p..'jobs:ended', id)
else
  redis.call('HDEL', p..'jobs:running', id)
  redis.call('ZADD', p..'jobs:ended', ARGV[4], id)
end
return 1
"#,
    )
});

/// Deletes ended jobs finished before a time. KEYS: the jobs zset (routing). ARGV:
/// cutoff (µs, exclusive), most to delete. Returns how many were deleted.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = '{aip}:'
local ids = redis.call('ZRANGEBYSCORE', p..'jobs:ended', '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('DEL', p..'j:'..id, p..'jm:'..id)
  redis.call('ZREM', p..'jobs', id)
  redis.call('ZREM', p..'jobs:ended', id)
end
return #ids
"#,
    )
});

/// A job as stored (times in µs, enums as their strings).
#[derive(Serialize, Deserialize)]
struct StoredJob {
    job_id: String,
    spec: Value,
    state: String,
    reason: Option<String>,
    counts: [u32; 6],
    created_at: i64,
    finished_at: Option<i64>,
}

/// A member as stored.
#[derive(Serialize, Deserialize)]
struct StoredMember {
    seq: u32,
    client_id: String,
    state: String,
    reason: Option<String>,
    session_id: Option<String>,
    exit_code: Option<i64>,
    output: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

fn bad(what: &str) -> StoreError {
    StoreError::Database(format!("stored job: bad {what}"))
}

fn encode<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Database(e.to_string()))
}

fn reason_of(text: Option<&str>) -> Result<Option<JobReason>, StoreError> {
    text.map(|t| JobReason::parse(t).ok_or_else(|| bad("reason")))
        .transpose()
}

fn job_json(j: &JobRecord) -> Result<String, StoreError> {
    encode(&StoredJob {
        job_id: j.job_id.clone(),
        spec: j.spec.clone(),
        state: j.state.as_str().to_owned(),
        reason: j.reason.map(|r| r.as_str().to_owned()),
        counts: j.counts,
        created_at: micros(j.created_at),
        finished_at: j.finished_at.map(micros),
    })
}

fn job_of(text: &str) -> Result<JobRecord, StoreError> {
    let s: StoredJob =
        serde_json::from_str(text).map_err(|e| StoreError::Database(e.to_string()))?;
    Ok(JobRecord {
        state: JobState::parse(&s.state).ok_or_else(|| bad("state"))?,
        reason: reason_of(s.reason.as_deref())?,
        created_at: from_micros(s.created_at)?,
        finished_at: s.finished_at.map(from_micros).transpose()?,
        job_id: s.job_id,
        spec: s.spec,
        counts: s.counts,
    })
}

fn member_json(m: &MemberRecord) -> Result<String, StoreError> {
    encode(&StoredMember {
        seq: m.seq,
        client_id: m.client_id.clone(),
        state: m.state.as_str().to_owned(),
        reason: m.reason.map(|r| r.as_str().to_owned()),
        session_id: m.session_id.clone(),
        exit_code: m.exit_code,
        output: m.output.clone(),
        started_at: m.started_at.map(micros),
        finished_at: m.finished_at.map(micros),
    })
}

fn member_of(text: &str) -> Result<MemberRecord, StoreError> {
    let s: StoredMember =
        serde_json::from_str(text).map_err(|e| StoreError::Database(e.to_string()))?;
    Ok(MemberRecord {
        state: MemberState::parse(&s.state).ok_or_else(|| bad("member state"))?,
        reason: reason_of(s.reason.as_deref())?,
        started_at: s.started_at.map(from_micros).transpose()?,
        finished_at: s.finished_at.map(from_micros).transpose()?,
        seq: s.seq,
        client_id: s.client_id,
        session_id: s.session_id,
        exit_code: s.exit_code,
        output: s.output,
    })
}

/// The members' counts by state, in [`MemberState::ALL`] order.
fn counts_of(members: &[MemberRecord]) -> [u32; 6] {
    let mut counts = [0u32; 6];
    for m in members {
        counts[m.state.index()] += 1;
    }
    counts
}

impl RedisStore {
    /// Runs [`WRITE`] for `job` and `members` as `node`; false when refused.
    async fn write_job(
        &self,
        job: &JobRecord,
        members: &[MemberRecord],
        node: &str,
        mode: &str,
    ) -> Result<bool, StoreError> {
        let mut invocation = WRITE.key(job_key(&job.job_id));
        invocation
            .key(members_key(&job.job_id))
            .arg(&job.job_id)
            .arg(job_json(job)?)
            .arg(micros(job.created_at))
            .arg(match job.finished_at {
                Some(t) if job.state != JobState::Running => micros(t).to_string(),
                _ => String::new(),
            })
            .arg(node)
            .arg(mode);
        for m in members {
            invocation.arg(m.seq).arg(member_json(m)?);
        }
        let written: i64 = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(written == 1)
    }

    /// The node running job `job_id`, while it runs.
    pub async fn job_runner(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        redis::cmd("HGET")
            .arg(RUNNING)
            .arg(job_id)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// For each session id, the node that owns it while it is live (`None`: ended, or
    /// never stored), in one read.
    pub async fn live_owners(&self, ids: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("HMGET")
            .arg(super::LIVE)
            .arg(ids)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// Records by id, in the order given (`None` where there is none), in one read.
    pub async fn records(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<crate::storage::SessionRecord>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| super::record_key(id)).collect();
        let texts: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        texts
            .into_iter()
            .map(|t| t.map(|t| super::from_json(&t)).transpose())
            .collect()
    }

    /// Ends every job `node` runs as failed with `reason` (`server_restarted` at its
    /// restart, `node_lost` when the cluster lost it): a running member takes its
    /// session's final state if the session ended, else fails with `reason`; pending
    /// members are skipped with it. Returns, per job ended, the session ids of the
    /// members failed while their session was still live (on other nodes: the caller
    /// cancels them).
    pub async fn interrupt_jobs_of(
        &self,
        node: &str,
        reason: JobReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let now = now.trunc_subsecs(6);
        let running: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(RUNNING)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let mut ended = Vec::new();
        for (job_id, owner) in running {
            if owner != node {
                continue;
            }
            let Some((mut job, mut members)) = self.get_job(&job_id).await? else {
                continue;
            };
            let orphans = self.interrupt_members(&mut members, reason, now).await?;
            job.counts = counts_of(&members);
            job.state = JobState::Failed;
            job.reason = Some(reason);
            job.finished_at = Some(now);
            if self.write_job(&job, &members, node, "update").await? {
                tracing::warn!(job_id = %job_id, node, reason = reason.as_str(), "a job's live part was failed");
                ended.push((job_id, orphans));
            }
        }
        Ok(ended)
    }

    /// Ends the live members of an interrupted job (see
    /// [`RedisStore::interrupt_jobs_of`]); the session ids still live.
    async fn interrupt_members(
        &self,
        members: &mut [MemberRecord],
        reason: JobReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let running: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].state == MemberState::Running)
            .collect();
        let ids: Vec<String> = running
            .iter()
            .map(|&i| members[i].session_id.clone().unwrap_or_default())
            .collect();
        let records = self.records(&ids).await?;
        let mut orphans = Vec::new();
        for (&i, record) in running.iter().zip(records) {
            let m = &mut members[i];
            match record {
                Some(r) if r.state.is_terminal() => {
                    m.state = MemberState::parse(r.state.as_str()).unwrap_or(MemberState::Failed);
                    m.reason = r.reason.map(JobReason::Session);
                    m.finished_at = r.finished_at;
                }
                live => {
                    if let (Some(_), Some(sid)) = (live, &m.session_id) {
                        orphans.push(sid.clone());
                    }
                    m.state = MemberState::Failed;
                    m.reason = Some(reason);
                    m.finished_at = Some(now);
                }
            }
        }
        for m in members.iter_mut() {
            if m.state == MemberState::Pending {
                m.state = MemberState::Skipped;
                m.reason = Some(reason);
            }
        }
        Ok(orphans)
    }
}

#[async_trait]
impl JobStore for RedisStore {
    async fn create_job(
        &self,
        job: JobRecord,
        members: Vec<MemberRecord>,
    ) -> Result<(), StoreError> {
        self.write_job(&job, &members, &self.node, "create")
            .await
            .map(drop)
    }

    async fn update_job(
        &self,
        job: JobRecord,
        changed: Vec<MemberRecord>,
    ) -> Result<(), StoreError> {
        if !self.write_job(&job, &changed, &self.node, "update").await? {
            tracing::warn!(job_id = %job.job_id, "job progress not stored: the cluster ended this job when this node restarted or was declared lost");
        }
        Ok(())
    }

    async fn get_job(
        &self,
        job_id: &str,
    ) -> Result<Option<(JobRecord, Vec<MemberRecord>)>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(job_key(job_id))
            .cmd("HVALS")
            .arg(members_key(job_id));
        let (job, members): (Option<String>, Vec<String>) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let Some(job) = job else {
            return Ok(None);
        };
        let mut members = members
            .iter()
            .map(|m| member_of(m))
            .collect::<Result<Vec<_>, _>>()?;
        members.sort_by_key(|m| m.seq);
        Ok(Some((job_of(&job)?, members)))
    }

    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(JOBS)
            .arg(0)
            .arg(last)
            .arg("REV")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| job_key(id)).collect();
        let texts: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        texts.into_iter().flatten().map(|t| job_of(&t)).collect()
    }

    async fn interrupt_jobs(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        // Only this node's jobs: the others' are theirs (or failed `node_lost`).
        let reason = JobReason::ServerRestarted;
        let ended = self.interrupt_jobs_of(&self.node, reason, now).await?;
        Ok(ended.len() as u64)
    }

    async fn purge_jobs(&self, finished_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n: u64 = PURGE
                .key(JOBS)
                .arg(micros(finished_before))
                .arg(PURGE_BATCH)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
            total += n;
            if n < PURGE_BATCH {
                return Ok(total);
            }
        }
    }
}

/// The reason a job's live part fails with when its runner's node was lost.
pub const NODE_LOST: JobReason = JobReason::Session(EndReason::NodeLost);
