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
use std::sync::Arc;

use aip_protocol::errors as text;

use super::inbox::{inbox_key, inbox_start, RemoteCancel};
use super::presence::{alive_key, lost_key, NODES};
use super::{query, Cluster, HEARTBEAT};
use crate::session::CancelReason;
use crate::state::AppState;
use crate::storage::redis::NODE_LOST;
use crate::storage::{EndReason, JobReason};

impl Cluster {
    /// Joins the cluster: clears a mark an earlier run under this id may have left (a new
    /// process has nothing to resurrect), makes the inbox, beats once.
    pub(super) async fn join(&self) -> redis::RedisResult<()> {
        query::<()>(
            &mut self.conn(),
            redis::cmd("DEL").arg(lost_key(&self.node)),
        )
        .await?;
        *self.inbox_from.lock() = inbox_start(self).await?;
        self.beat().await.map(drop)
    }

    /// Leaves the cluster at shutdown: the others see the node gone, not lost, and none
    /// of its clients stays listed.
    pub async fn leave(&self) {
        let _ = self.release_node(&self.node).await;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(alive_key(&self.node)).ignore();
        pipe.cmd("HDEL").arg(NODES).arg(&self.node).ignore();
        pipe.cmd("DEL").arg(inbox_key(&self.node)).ignore();
        let _ = pipe.query_async::<()>(&mut self.conn()).await;
    }

    /// The other nodes in `{aip}:nodes`, split into alive and lost.
    async fn others(&self) -> redis::RedisResult<(Vec<String>, Vec<String>)> {
        let nodes: Vec<String> = query(&mut self.conn(), redis::cmd("HKEYS").arg(NODES)).await?;
        let nodes: Vec<String> = nodes.into_iter().filter(|n| *n != self.node).collect();
        if nodes.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("EXISTS").arg(alive_key(n));
        }
        let alive: Vec<bool> = pipe.query_async(&mut self.conn()).await?;
        let (mut up, mut lost) = (Vec::new(), Vec::new());
        for (n, a) in nodes.into_iter().zip(alive) {
            if a {
                up.push(n);
            } else {
                lost.push(n);
            }
        }
        Ok((up, lost))
    }

    /// Cleans up after lost `node` if no other node is doing it.
    async fn reap(self: &Arc<Self>, app: &AppState, node: &str) -> redis::RedisResult<()> {
        let claimed: Option<String> = query(
            &mut self.conn(),
            redis::cmd("SET")
                .arg(format!("{{aip}}:reap:{node}"))
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(30_000),
        )
        .await?;
        if claimed.is_none() {
            return Ok(());
        }
        // Marked first: from now on its writes to these sessions are refused.
        query::<()>(
            &mut self.conn(),
            redis::cmd("SET")
                .arg(lost_key(node))
                .arg(&self.node)
                .arg("EX")
                .arg(86_400),
        )
        .await?;
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
        for e in app.registry.list() {
            e.conn.kill(crate::conn::close::GOING_AWAY);
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
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Graceful shutdown leaves the cluster itself (`begin_shutdown`).
            _ = app.shutdown.cancelled() => return,
        }
        ticks += 1;
        let was_up = cluster.redis_up.load(Ordering::Acquire);
        match cluster.beat().await {
            Ok(-1) => cluster.fenced(&app).await,
            Ok(had) => {
                cluster.redis_up.store(true, Ordering::Release);
                if !was_up || had == 0 {
                    // Redis came back (perhaps empty): presence is published again.
                    cluster.republish(&app).await;
                }
            }
            Err(e) => {
                if was_up {
                    tracing::error!(cause = %e, "cluster: Redis unreachable; connections stay up, dispatches that need it fail");
                }
                cluster.redis_up.store(false, Ordering::Release);
                continue;
            }
        }
        if ticks.is_multiple_of(2) {
            if let Err(e) = cluster.flush_seen(&app).await {
                tracing::debug!(cause = %e, "presence: last_seen not written");
            }
        }
        let (up, lost) = match cluster.others().await {
            Ok(x) => x,
            Err(_) => continue,
        };
        for node in &lost {
            if let Err(e) = cluster.reap(&app, node).await {
                tracing::warn!(node, cause = %e, "could not clean up after a lost node");
            }
        }
        // Requesters here hear about sessions that ran on a node now gone (lost, or
        // left at shutdown).
        let up: HashSet<String> = up.into_iter().collect();
        for node in known.difference(&up) {
            cluster.node_lost_here(&app, node);
        }
        known = up;
    }
}
