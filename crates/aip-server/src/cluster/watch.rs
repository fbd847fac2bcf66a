//! This node's heartbeat, and the watch of the others: a node whose heartbeat key
//! expired (`NODE_TTL` after its last beat; looked for every `HEARTBEAT`) is lost. One
//! node (whoever claims `{aip}:reap:<node>` first) fails its live sessions (`node_lost`),
//! ends the fleet jobs it ran (failed, `node_lost`; their members' sessions still live on
//! other nodes are cancelled), drops its clients from presence, deletes its inbox and
//! marks it `{aip}:lost:<node>`;
//! every node tells its own requesters whose sessions ran there. A node that finds itself
//! marked lost (a partition that healed) is fenced: it ends its sessions without writing
//! them (the store keeps them failed) and drops its connections, which register again.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use aip_protocol::errors as text;

use super::inbox::{inbox_key, inbox_start, RemoteCancel};
use redis::Script;

use super::presence::{left_key, lost_key, NODES};
use super::{query, Cluster, HEARTBEAT, NODE_TTL};
use crate::session::CancelReason;
use crate::state::AppState;
use crate::storage::redis::NODE_LOST;
use crate::storage::{EndReason, JobReason};

/// The other nodes in `{aip}:nodes`, read in one step with their heartbeat keys: those
/// alive, and those lost, each lost one followed by its last beat (ms), which names the
/// incarnation lost. A node that left gracefully is in neither. ARGV: this node.
static OTHERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local all = redis.call('HGETALL', '{aip}:nodes')
local up, lost = {}, {}
for i = 1, #all, 2 do
  local n = all[i]
  if n ~= ARGV[1] then
    if redis.call('EXISTS', '{aip}:alive:' .. n) == 1 then
      up[#up + 1] = n
    elseif redis.call('EXISTS', '{aip}:left:' .. n) == 0 then
      lost[#lost + 1] = n
      lost[#lost + 1] = all[i + 1]
    end
  end
end
return {up, lost}
"#,
    )
});

/// Marks `node` lost, only if it still is: no heartbeat key, not left, and its last beat
/// still the one judged (a restart beats anew). Returns 1 when marked. ARGV: node, last
/// beat, the reaping node.
static MARK_LOST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', '{aip}:alive:' .. ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', '{aip}:left:' .. ARGV[1]) == 1 then return 0 end
if redis.call('HGET', '{aip}:nodes', ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('SET', '{aip}:lost:' .. ARGV[1], ARGV[3], 'EX', 86400)
return 1
"#,
    )
});

/// A graceful leave, in one step: the node is marked left (a beat still in flight does
/// not bring it back, and no node reaps it) and its heartbeat and entry go. ARGV: node.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', '{aip}:left:' .. ARGV[1], '1', 'PX', 60000)
redis.call('DEL', '{aip}:alive:' .. ARGV[1])
redis.call('HDEL', '{aip}:nodes', ARGV[1])
return 1
"#,
    )
});

/// How long this node must have reached Redis without a break, its own heartbeat never
/// missing, before it may judge another node lost: a full liveness period in which
/// every live node has beaten too. A Redis outage or restart (every heartbeat key
/// expired at once) is no evidence that anyone died.
const JUDGE_AFTER: Duration = Duration::from_millis(NODE_TTL.as_millis() as u64 + 1_000);

impl Cluster {
    /// Joins the cluster: clears the marks an earlier run under this id may have left (a
    /// new process has nothing to resurrect), starts a new incarnation (an earlier
    /// process under this id, if still running somewhere, has its writes refused), makes
    /// the inbox, beats once.
    pub(super) async fn join(&self) -> redis::RedisResult<()> {
        query::<()>(
            &mut self.conn(),
            redis::cmd("DEL")
                .arg(lost_key(&self.node))
                .arg(left_key(&self.node)),
        )
        .await?;
        *self.inbox_from.lock() = inbox_start(self).await?;
        if let Err(e) = self.store.new_incarnation().await {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "starting this node's incarnation",
                e.to_string(),
            )));
        }
        self.beat().await.map(drop)
    }

    /// Leaves the cluster at shutdown: the others see the node gone, not lost, and none
    /// of its clients stays listed.
    pub async fn leave(&self) {
        let _ = LEAVE
            .arg(&self.node)
            .invoke_async::<i64>(&mut self.conn())
            .await;
        let _ = self.release_node(&self.node).await;
        let _ = query::<()>(
            &mut self.conn(),
            redis::cmd("DEL").arg(inbox_key(&self.node)),
        )
        .await;
    }

    /// The other nodes: those alive, and those lost, each with its last beat.
    async fn others(&self) -> redis::RedisResult<(Vec<String>, Vec<(String, String)>)> {
        let (up, lost): (Vec<String>, Vec<String>) = OTHERS
            .arg(&self.node)
            .invoke_async(&mut self.conn())
            .await?;
        let lost = lost
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        Ok((up, lost))
    }

    /// Cleans up after `node`, lost since its beat `last_beat`, if no other node is doing
    /// it. The clean-up's lock names that incarnation (node and last beat): a node lost
    /// again after a restart is reaped as promptly as the first time.
    async fn reap(
        self: &Arc<Self>,
        app: &AppState,
        node: &str,
        last_beat: &str,
    ) -> redis::RedisResult<()> {
        let claimed: Option<String> = query(
            &mut self.conn(),
            redis::cmd("SET")
                .arg(format!("{{aip}}:reap:{node}:{last_beat}"))
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(60_000),
        )
        .await?;
        if claimed.is_none() {
            return Ok(());
        }
        // Marked first, if still lost: from now on its writes are refused by the store.
        let marked: i64 = MARK_LOST
            .arg(node)
            .arg(last_beat)
            .arg(&self.node)
            .invoke_async(&mut self.conn())
            .await?;
        if marked == 0 {
            return Ok(());
        }
        let failed = match self
            .store
            .fail_live_of(
                node,
                EndReason::NodeLost,
                text::NODE_LOST,
                chrono::Utc::now(),
            )
            .await
        {
            Ok(f) => f.len(),
            Err(e) => {
                tracing::error!(node, cause = %e, "could not fail a lost node's sessions");
                0
            }
        };
        let jobs = self.end_jobs_of(app, node, NODE_LOST).await;
        let clients = self.release_node(node).await.unwrap_or(0);
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(NODES).arg(node).ignore();
        pipe.cmd("DEL").arg(inbox_key(node)).ignore();
        pipe.query_async::<()>(&mut self.conn()).await?;
        tracing::warn!(
            node,
            sessions_failed = failed,
            jobs_failed = jobs,
            clients_dropped = clients,
            "node lost: no heartbeat within the node TTL"
        );
        crate::metrics::node_lost();
        Ok(())
    }

    /// Ends the jobs `node` ran (its restart: `server_restarted`; its loss: `node_lost`)
    /// and cancels their members' sessions that were still live (on other nodes, or on
    /// this one). Returns how many jobs were ended.
    pub async fn end_jobs_of(
        self: &Arc<Self>,
        app: &AppState,
        node: &str,
        reason: JobReason,
    ) -> usize {
        let ended = match self
            .store
            .interrupt_jobs_of(node, reason, chrono::Utc::now())
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(node, cause = %e, "could not end a node's jobs");
                return 0;
            }
        };
        let orphans: Vec<String> = ended.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
        if !orphans.is_empty() {
            tracing::warn!(
                node,
                sessions = orphans.len(),
                "cancelling the live sessions of jobs whose node is gone"
            );
            self.cancel_sessions(Some(app), orphans, RemoteCancel::Job);
        }
        ended.len()
    }

    /// This node was declared lost while it could not reach Redis: what it was running
    /// is failed already. It ends its sessions (their writes are refused) and drops its
    /// connections; clients register again and are published anew.
    async fn fenced(&self, app: &AppState) {
        tracing::error!(node = %self.node, "this node was declared lost by the cluster; ending its sessions and connections");
        app.jobs.fenced();
        for h in app.sessions.all() {
            h.cancel(CancelReason::NodeLost);
        }
        for e in app.registry.list_held() {
            e.conn.kill(crate::conn::close::GOING_AWAY);
        }
        // A new incarnation: whatever the old one still writes is refused by the store.
        if let Err(e) = self.store.new_incarnation().await {
            tracing::warn!(cause = %e, "could not start a new incarnation after fencing");
        }
        let _ = query::<()>(
            &mut self.conn(),
            redis::cmd("DEL").arg(lost_key(&self.node)),
        )
        .await;
    }
}

/// Beats and watches until shutdown.
pub(super) async fn run(cluster: Arc<Cluster>, app: Arc<AppState>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: HashSet<String> = HashSet::new();
    let mut ticks: u64 = 0;
    // Since when this node has reached Redis without a break (`None`: not now).
    let mut steady_since: Option<Instant> = Some(Instant::now());
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Graceful shutdown leaves the cluster itself (`begin_shutdown`).
            _ = app.shutdown.cancelled() => return,
        }
        ticks += 1;
        let was_up = cluster.redis_up.load(Ordering::Acquire);
        let mut audit = ticks.is_multiple_of(2);
        match cluster.beat().await {
            Ok(-1) => {
                cluster.fenced(&app).await;
                steady_since = None;
                continue;
            }
            // Left (shutting down): nothing more to watch.
            Ok(-2) => return,
            Ok(had) => {
                cluster.redis_up.store(true, Ordering::Release);
                // Its own key gone (Redis saw no beat for a TTL, or lost its data), Redis
                // unreachable before, or beats far apart (this process or Redis paused):
                // every node's key may have expired alike; judge no one for a while.
                let gap = last_ok.elapsed() > HEARTBEAT * 2;
                if !was_up || had == 0 || gap {
                    steady_since = Some(Instant::now());
                    audit = true;
                } else if steady_since.is_none() {
                    steady_since = Some(Instant::now());
                }
                last_ok = Instant::now();
            }
            Err(e) => {
                if was_up {
                    tracing::error!(cause = %e, "cluster: Redis unreachable; connections stay up, dispatches that need it fail");
                }
                cluster.redis_up.store(false, Ordering::Release);
                steady_since = None;
                continue;
            }
        }
        if audit {
            if let Err(e) = cluster.audit_presence(&app).await {
                tracing::debug!(cause = %e, "presence: audit not done");
            }
        }
        let (up, lost) = match cluster.others().await {
            Ok(others) => others,
            Err(_) => continue,
        };
        let may_judge = steady_since.is_some_and(|t| t.elapsed() >= JUDGE_AFTER);
        if may_judge {
            for (node, last_beat) in &lost {
                if let Err(e) = cluster.reap(&app, node, last_beat).await {
                    tracing::warn!(node, cause = %e, "could not clean up after a lost node");
                }
            }
        }
        // Requesters here hear about sessions that ran on a node now gone (lost, or
        // left at shutdown): only once the cluster has judged it (a node that merely
        // missed beats in a Redis outage is still running them).
        let up: HashSet<String> = up.into_iter().collect();
        if may_judge {
            for node in known.difference(&up) {
                cluster.node_lost_here(&app, node);
            }
            known = up;
        } else {
            known.extend(up);
        }
    }
}
