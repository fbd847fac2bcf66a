//! What the store says, checked against what this node knows, every few seconds:
//! - a session stored live as this node's that this node does not run (its first write
//!   landed while the node saw it fail and dropped it, or anything else that left it
//!   behind) is ended `failed` / `lost_in_flight` once seen so twice in a row; nothing
//!   stays `created` or `running` forever under a healthy node;
//! - a session a requester here asked another node to open, when Redis could not say
//!   whether it was opened, is settled once Redis answers: stored, it runs (and ends as
//!   below); not stored, its id is voided and the requester gets an `error`;
//! - a session a requester here opened on another node whose end is stored, but whose
//!   `task_end` never arrived (forwarding gave up in a Redis outage), is ended for the
//!   requester from the stored record: every acknowledged task gets its `task_end`
//!   while its connection lives.

use std::collections::HashSet;
use std::time::Duration;

use aip_protocol::ServerMessage;

use super::Cluster;
use crate::state::AppState;
use crate::storage::EndReason;

/// How often the sweep runs.
pub(super) const EVERY: Duration = Duration::from_secs(5);
/// A session opened elsewhere is looked up in the store only after this long.
const REMOTE_GRACE: Duration = Duration::from_secs(3);

impl Cluster {
    /// One sweep (see the module docs).
    pub(super) async fn sweep(&self, app: &AppState) {
        self.end_orphans(app).await;
        self.settle_unknown(app).await;
        self.end_remote_from_store(app).await;
    }

    async fn end_orphans(&self, app: &AppState) {
        let live = match self.store.live_ids_of(&self.node).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(cause = %e, "sweep: live sessions not read");
                return;
            }
        };
        let now: HashSet<String> = live
            .into_iter()
            .filter(|sid| app.sessions.get(sid).is_none() && !app.sessions.is_unsaved(sid))
            .collect();
        let before = std::mem::replace(&mut *self.orphans.lock(), now.clone());
        for sid in now.intersection(&before) {
            match self
                .store
                .fail_one_if_live(
                    sid,
                    &self.node,
                    EndReason::LostInFlight,
                    aip_protocol::errors::LOST_IN_FLIGHT,
                    chrono::Utc::now(),
                )
                .await
            {
                Ok(Some(_)) => {
                    tracing::warn!(session_id = %sid, "a session stored as this node's but not run here was ended (lost_in_flight)");
                    self.orphans.lock().remove(sid);
                }
                Ok(None) => {
                    self.orphans.lock().remove(sid);
                }
                Err(e) => {
                    tracing::warn!(session_id = %sid, cause = %e, "sweep: could not end a session lost in flight")
                }
            }
        }
    }

    /// Opens whose outcome Redis could not tell when they were made: stored (they run;
    /// their end comes as any other), or voided now (never run: the requester is told).
    async fn settle_unknown(&self, app: &AppState) {
        let unknown: Vec<String> = self
            .remote_sessions
            .iter()
            .filter(|s| s.unsettled)
            .map(|s| s.key().clone())
            .collect();
        for sid in unknown {
            match self.store.stored_or_void(&sid).await {
                Ok(true) => {
                    if let Some(mut s) = self.remote_sessions.get_mut(&sid) {
                        s.unsettled = false;
                    }
                }
                Ok(false) => {
                    let Some((sid, s)) = self.remote_sessions.remove(&sid) else {
                        continue;
                    };
                    tracing::warn!(session_id = %sid, node = %s.node, "a session whose opening was not known was never opened; its requester is told");
                    if let Some(e) = app.registry.get_conn(&s.client_id, s.conn_id) {
                        let _ = e.send(&ServerMessage::error(
                            aip_protocol::errors::NODE_UNAVAILABLE.to_owned(),
                        ));
                    }
                }
                Err(e) => {
                    tracing::debug!(session_id = %sid, cause = %e, "sweep: an unknown open not settled yet");
                    return;
                }
            }
        }
    }

    async fn end_remote_from_store(&self, app: &AppState) {
        let waiting: Vec<String> = self
            .remote_sessions
            .iter()
            .filter(|s| s.since.elapsed() >= REMOTE_GRACE)
            .map(|s| s.key().clone())
            .collect();
        for chunk in waiting.chunks(500) {
            let records = match self.store.get_many(chunk).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(cause = %e, "sweep: remote sessions not read");
                    return;
                }
            };
            for r in records.iter().filter(|r| r.state.is_terminal()) {
                let Some((sid, s)) = self.remote_sessions.remove(&r.session_id) else {
                    continue;
                };
                tracing::warn!(session_id = %sid, node = %s.node, "the end of a session opened on another node never arrived; sent from the store");
                if let Some(e) = app.registry.get_conn(&s.client_id, s.conn_id) {
                    let _ = e.send(&r.task_end());
                }
            }
        }
    }
}

/// Sweeps every [`EVERY`] while Redis answers, until shutdown.
pub(super) async fn run(cluster: std::sync::Arc<Cluster>, app: std::sync::Arc<AppState>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        if cluster.redis_up() {
            cluster.sweep(&app).await;
        }
    }
}
