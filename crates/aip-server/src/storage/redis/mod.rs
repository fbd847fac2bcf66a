//! Session records on Redis: the store every node of a cluster shares (`--cluster`).
//!
//! Layout, every key in the slot of the hash tag `{aip}` (one master of a Redis Cluster
//! holds the session store; the per-node message streams spread over the others):
//!
//! | key | what |
//! |---|---|
//! | `{aip}:s:<id>` | the record, JSON |
//! | `{aip}:m:<id>` | hash: task name, requester, executor, owner node, reason (the indexes' own data) |
//! | `{aip}:created` | zset of every id by creation time (µs) |
//! | `{aip}:t:<task_name>` / `{aip}:c:<client_id>` | zsets by creation time: by task name, by requester or executor |
//! | `{aip}:live` | hash: live session id → the node that owns it |
//! | `{aip}:finished` | zset of ended ids by end time (retention, max-results) |
//!
//!
//! Fleet jobs live beside the sessions, under the same tag (`jobs.rs`).
//!
//! A write is one Lua script (record and indexes together); a write is durable when it
//! returns as far as Redis's persistence makes it (docs/src/cluster.md).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    EndReason, Origin, Refusal, SessionFilter, SessionRecord, SessionState, SessionStore,
    StoreError,
};

pub mod conn;
mod jobs;
mod scripts;

pub use conn::{Redis, RedisTarget};
pub use jobs::NODE_LOST;

/// The key of a session's record.
fn record_key(session_id: &str) -> String {
    format!("{{aip}}:s:{session_id}")
}

/// The key of a session's index data.
fn meta_key(session_id: &str) -> String {
    format!("{{aip}}:m:{session_id}")
}

const CREATED: &str = "{aip}:created";
const LIVE: &str = "{aip}:live";

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Database(format!("redis: {e}"))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Database(format!("bad timestamp {us}")))
}

/// A record as stored (times in µs, enums as their strings).
#[derive(Serialize, Deserialize)]
struct Stored {
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
    result: Option<Box<Value>>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    echo_received: bool,
    /// The fleet job the session belongs to; absent in records stored before jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
}

fn to_json(r: &SessionRecord) -> Result<String, StoreError> {
    let stored = Stored {
        session_id: r.session_id.clone(),
        task_name: r.task_name.clone(),
        request: r.request.clone(),
        origin: r.origin.as_str().to_owned(),
        requester: r.requester.clone(),
        executor: r.executor.clone(),
        platform: r.platform.clone(),
        state: r.state.as_str().to_owned(),
        reason: r.reason.map(|x| x.as_str().to_owned()),
        error: r.error.clone(),
        result: r.result.clone(),
        created_at: micros(r.created_at),
        started_at: r.started_at.map(micros),
        finished_at: r.finished_at.map(micros),
        echo_received: r.echo_received,
        job_id: r.job_id.clone(),
    };
    serde_json::to_string(&stored).map_err(|e| StoreError::Database(e.to_string()))
}

fn from_json(text: &str) -> Result<SessionRecord, StoreError> {
    let bad = |what: &str| StoreError::Database(format!("stored record: bad {what}"));
    let s: Stored = serde_json::from_str(text).map_err(|e| StoreError::Database(e.to_string()))?;
    Ok(SessionRecord {
        origin: Origin::parse(&s.origin).ok_or_else(|| bad("origin"))?,
        state: SessionState::parse(&s.state).ok_or_else(|| bad("state"))?,
        reason: match s.reason.as_deref() {
            None => None,
            Some(r) => Some(EndReason::parse(r).ok_or_else(|| bad("reason"))?),
        },
        created_at: from_micros(s.created_at)?,
        started_at: s.started_at.map(from_micros).transpose()?,
        finished_at: s.finished_at.map(from_micros).transpose()?,
        session_id: s.session_id,
        task_name: s.task_name,
        request: s.request,
        requester: s.requester,
        executor: s.executor,
        platform: s.platform,
        error: s.error,
        result: s.result,
        echo_received: s.echo_received,
        job_id: s.job_id,
    })
}

/// The session store on Redis, for the node `node`.
pub struct RedisStore {
    redis: Redis,
    node: String,
    /// This node's incarnation (`{aip}:epoch:<node>`, bumped when the node joins or is
    /// fenced): writes of an older incarnation are refused. 0: not checked (a store used
    /// outside a cluster node, in tests).
    epoch: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &self.node)
            .finish()
    }
}

impl RedisStore {
    /// The store on `redis`, writing as node `node` (the owner of the sessions it starts).
    pub fn new(redis: Redis, node: String) -> Self {
        Self {
            redis,
            node,
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts a new incarnation of this node: from now on, writes carrying an earlier
    /// one (a process that was replaced, or this one before it was fenced) are refused.
    pub async fn new_incarnation(&self) -> Result<u64, StoreError> {
        let epoch: u64 = redis::cmd("INCR")
            .arg(format!("{{aip}}:epoch:{}", self.node))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
        Ok(epoch)
    }

    fn conn(&self) -> Redis {
        self.redis.clone()
    }

    /// The node that owns live session `session_id`, if it is live.
    pub async fn owner(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        redis::cmd("HGET")
            .arg(LIVE)
            .arg(session_id)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// Gives up on session `session_id`, asked of another node: `true` if it is stored
    /// (it stands), else its id is voided so that no late write stores it
    /// ([`scripts::VOID`]).
    pub async fn stored_or_void(&self, session_id: &str) -> Result<bool, StoreError> {
        let stored: i64 = scripts::VOID
            .key(record_key(session_id))
            .arg(session_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(stored == 1)
    }

    /// Lifts the void of `session_id` (a client retries a dispatch with its own id).
    pub async fn unvoid(&self, session_id: &str) -> Result<(), StoreError> {
        redis::cmd("DEL")
            .arg(format!("{{aip}}:void:{session_id}"))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// Live session ids the store says `node` owns.
    pub async fn live_ids_of(&self, node: &str) -> Result<Vec<String>, StoreError> {
        let live: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(LIVE)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(live
            .into_iter()
            .filter(|(_, owner)| owner == node)
            .map(|(sid, _)| sid)
            .collect())
    }

    /// Fails live session `session_id` with `reason`, only if `node` still owns it live
    /// (an end stored meanwhile stays). Returns the record failed.
    pub async fn fail_one_if_live(
        &self,
        session_id: &str,
        node: &str,
        reason: EndReason,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(r) = self.get(session_id).await? else {
            return Ok(None);
        };
        self.fail_if_live(SessionRecord::clone(&r), node, reason, error, now)
            .await
    }

    async fn fail_if_live(
        &self,
        mut r: SessionRecord,
        node: &str,
        reason: EndReason,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let now = now.trunc_subsecs(6);
        r.state = SessionState::Failed;
        r.reason = Some(reason);
        r.error = Some(error.to_owned());
        r.finished_at = Some(now);
        let done: i64 = scripts::FAIL_IF_LIVE
            .key(record_key(&r.session_id))
            .key(meta_key(&r.session_id))
            .arg(&r.session_id)
            .arg(node)
            .arg(to_json(&r)?)
            .arg(micros(now))
            .arg(reason.as_str())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok((done == 1).then_some(r))
    }

    /// Every live session of `node`, with its record.
    pub async fn live_of(&self, node: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let ids = self.live_ids_of(node).await?;
        self.get_many(&ids).await
    }

    /// Fails every live session of `node` with `reason`, each only if it is still live
    /// and `node`'s when its failed state is written (a result stored meanwhile stays).
    /// Returns the records failed.
    pub async fn fail_live_of(
        &self,
        node: &str,
        reason: EndReason,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut failed = Vec::new();
        for r in self.live_of(node).await? {
            if let Some(r) = self.fail_if_live(r, node, reason, error, now).await? {
                failed.push(r);
            }
        }
        Ok(failed)
    }

    async fn delete_by(&self, args: &[String]) -> Result<u64, StoreError> {
        let mut invocation = scripts::DELETE.key(CREATED);
        for a in args {
            invocation.arg(a);
        }
        invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// Records by id, in the order given, skipping ids with no record.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<SessionRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| record_key(id)).collect();
        let texts: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        texts.into_iter().flatten().map(|t| from_json(&t)).collect()
    }
}

impl RedisStore {
    /// Writes `r` ([`scripts::UPSERT`]); `new_run`: its first record (an ended record of
    /// its id is replaced, not refused).
    async fn write(&self, r: &SessionRecord, new_run: bool) -> Result<(), StoreError> {
        let written: i64 = scripts::UPSERT
            .key(record_key(&r.session_id))
            .key(meta_key(&r.session_id))
            .arg(&r.session_id)
            .arg(to_json(r)?)
            .arg(micros(r.created_at))
            .arg(&r.task_name)
            .arg(r.requester.as_deref().unwrap_or(""))
            .arg(&r.executor)
            .arg(match r.finished_at {
                Some(t) if r.state.is_terminal() => micros(t).to_string(),
                _ if r.state.is_terminal() => micros(Utc::now()).to_string(),
                _ => String::new(),
            })
            .arg(&self.node)
            .arg(r.reason.map_or("", EndReason::as_str))
            .arg(if new_run { "1" } else { "" })
            .arg(self.epoch.load(std::sync::atomic::Ordering::Acquire))
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        match written {
            1 => Ok(()),
            -1 => Err(StoreError::Refused(Refusal::Ended)),
            -2 => Err(StoreError::Refused(Refusal::Fenced)),
            _ => Err(StoreError::Refused(Refusal::Voided)),
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn upsert(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.write(&record, false).await
    }

    async fn insert_new(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.write(&record, true).await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(format!("{{aip}}:probe:{}", self.node))
            .arg(micros(Utc::now()))
            .arg("PX")
            .arg(60_000)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    async fn delete(&self, session_id: &str) -> Result<(), StoreError> {
        self.delete_by(&["ids".to_owned(), session_id.to_owned()])
            .await
            .map(drop)
    }

    async fn get(&self, session_id: &str) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let text: Option<String> = redis::cmd("GET")
            .arg(record_key(session_id))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        text.map(|t| from_json(&t).map(Arc::new)).transpose()
    }

    async fn latest_by_task_name(
        &self,
        task_name: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{{aip}}:t:{task_name}"))
            .arg(0)
            .arg(0)
            .arg("REV")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(self.get_many(&ids).await?.into_iter().next())
    }

    async fn list(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let index = match &filter.client_id {
            Some(c) => format!("{{aip}}:c:{c}"),
            None => CREATED.to_owned(),
        };
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        let page = limit.clamp(50, 1000);
        let mut out = Vec::new();
        let mut start = 0usize;
        // Newest first, a page at a time, until enough match or the index ends.
        while out.len() < limit {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(&index)
                .arg(start)
                .arg(start + page - 1)
                .arg("REV")
                .query_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
            let exhausted = ids.len() < page;
            start += page;
            for r in self.get_many(&ids).await? {
                if filter.state.is_none_or(|s| s == r.state) && out.len() < limit {
                    out.push(r);
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    async fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        // Only this node's: the others' sessions are theirs (or failed `node_lost`).
        let failed = self
            .fail_live_of(
                &self.node,
                EndReason::ServerRestarted,
                aip_protocol::errors::SERVER_RESTARTED,
                now,
            )
            .await?;
        Ok(failed.len() as u64)
    }

    async fn purge(
        &self,
        finished_before: DateTime<Utc>,
        max_results: u64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .delete_by(&["older".to_owned(), micros(finished_before).to_string()])
                .await?;
            total += n;
            if n < 1000 {
                break;
            }
        }
        loop {
            let n = self
                .delete_by(&["beyond".to_owned(), max_results.to_string()])
                .await?;
            total += n;
            if n < 1000 {
                break;
            }
        }
        Ok(total)
    }
}
