//! The answering side of the inbox: what another node asks of this one (open a session
//! on a device here, cancel a session or a job this node runs, probe a client's holder),
//! and the stand-ins for requesters connected to other nodes, whose frames go back
//! through their node's inbox.

use std::sync::Arc;
use std::time::Duration;

use aip_protocol::ClientType;

use super::inbox::{
    CancelReply, Msg, OpenAsk, OpenReply, ProbeReply, RemoteCancel, RemoteRequester,
};
use super::refusal::NodeRefusal;
use super::{Cluster, ProxyOrigin};
use crate::conn::{ConnHandle, Outgoing};
use crate::registry::ClientEntry;
use crate::session::{CancelReason, CreateError, OpenRequest};
use crate::state::AppState;
use crate::storage::{Refusal, StoreError};

/// Runs a request of another node and replies.
pub(super) async fn answer(cluster: &Arc<Cluster>, app: &Arc<AppState>, msg: Msg) {
    match msg {
        Msg::Open(ask) => {
            if chrono::Utc::now().timestamp_millis() > ask.deadline_ms {
                tracing::warn!(session_id = %ask.session_id, node = %ask.from, "a remote dispatch arrived after its caller gave up; not opened");
                return;
            }
            let (from, req) = (ask.from.clone(), ask.req);
            let outcome = open_here(cluster, app, *ask).await;
            cluster.reply(&from, req, &outcome).await;
        }
        Msg::Cancel {
            req,
            from,
            session_id,
            why,
        } => {
            // Only a session this node owns (runs) is cancelled here.
            let outcome = match app.sessions.get(&session_id) {
                Some(h) => {
                    h.cancel(why.map_or(CancelReason::Api, RemoteCancel::reason));
                    let _ = tokio::time::timeout(Duration::from_secs(10), h.finished()).await;
                    CancelReply::Ok
                }
                None => CancelReply::Refused(NodeRefusal::AlreadyFinished),
            };
            cluster.reply(&from, req, &outcome).await;
        }
        Msg::CancelJob { req, from, job_id } => {
            let outcome = app.jobs.cancel_here(&job_id).await;
            cluster.reply(&from, req, &outcome).await;
        }
        Msg::Probe {
            req,
            from,
            client_id,
        } => {
            let alive = match app.registry.get_held(&client_id) {
                // A registration in progress here holds the id: the asker refuses its own.
                Some(holder) if !holder.is_ready() => true,
                Some(holder) => {
                    let alive = crate::link::probe_alive(app, &holder).await;
                    if !alive {
                        tracing::warn!(client_id, node = %from, "a holder another node asked about is dead; dropping it");
                        crate::link::disconnect(app, &client_id, holder.conn.id());
                        holder.conn.kill(crate::conn::close::GOING_AWAY);
                    }
                    alive
                }
                None => false,
            };
            cluster
                .reply(&from, req, &ProbeReply::Alive { alive })
                .await;
        }
        Msg::Reply { .. } | Msg::Frame { .. } | Msg::Gone { .. } => {}
    }
}

/// Opens a session another node asked for on a device of this node.
async fn open_here(cluster: &Arc<Cluster>, app: &Arc<AppState>, ask: OpenAsk) -> OpenReply {
    let OpenAsk {
        from,
        session_id,
        generated_id,
        task_name,
        request,
        executor,
        commands,
        requester,
        job_id,
        ..
    } = ask;
    let from = from.as_str();
    let Some(device) = app.registry.device(&executor) else {
        return OpenReply::Refused(NodeRefusal::NotOnline);
    };
    if app.is_shutting_down() {
        return OpenReply::Refused(NodeRefusal::ShuttingDown);
    }
    if device.conn.is_busy() {
        crate::metrics::dispatch_busy();
        return OpenReply::Busy;
    }
    let is_remote_requester = requester.is_some();
    let requester = requester.map(|r| cluster.proxy(app, from, r));
    let sid = session_id.clone();
    match app
        .sessions
        .open(OpenRequest {
            session_id,
            generated_id,
            task_name,
            request,
            requester,
            executor: device,
            commands,
            job_id,
        })
        .await
    {
        Ok(h) => {
            tracing::info!(session_id = %h.session_id, node = %from, executor = %h.executor, "task dispatched from another node");
            OpenReply::Ok
        }
        Err(e) => OpenReply::Refused(match e {
            CreateError::TooMany => NodeRefusal::TooManySessions,
            CreateError::Live { .. } if is_remote_requester => NodeRefusal::SessionActive(sid),
            CreateError::Live { .. } => NodeRefusal::SessionIdInUse,
            CreateError::ExecutorGone => NodeRefusal::NotOnline,
            CreateError::Store(StoreError::Refused(Refusal::Ended)) => NodeRefusal::SessionIdInUse,
            CreateError::Store(e) => {
                tracing::error!(cause = %e, "could not store a session another node asked for");
                NodeRefusal::StorageUnavailable
            }
        }),
    }
}

impl Cluster {
    /// The stand-in for a requester connected to `node`: its frames go to that node's
    /// inbox, in order, through one task.
    fn proxy(
        self: &Arc<Self>,
        app: &Arc<AppState>,
        node: &str,
        r: RemoteRequester,
    ) -> Arc<ClientEntry> {
        // A stand-in for an earlier connection of this requester (it reconnected, or moved
        // to another node) goes first, with whatever it still had running here.
        let stale = |o: &ProxyOrigin| o.node != node || o.conn_id != r.conn_id;
        if self.proxies.get(&r.client_id).is_some_and(|o| stale(&o)) {
            self.drop_proxy(app, &r.client_id, stale);
        }
        let mut made = None;
        let entry = app.registry.remote_or_insert(&r.client_id, || {
            let (tx, rx) = tokio::sync::mpsc::channel(app.config.outgoing_queue);
            let conn = ConnHandle::new(app.next_conn_id(), tx);
            made = Some((rx, conn.id()));
            ClientEntry::new(
                r.client_id.clone(),
                ClientType::Constellation,
                conn,
                None,
                None,
            )
        });
        if let Some((rx, local_conn)) = made {
            self.proxies.insert(
                r.client_id.clone(),
                ProxyOrigin {
                    node: node.to_owned(),
                    conn_id: r.conn_id,
                    local_conn,
                },
            );
            tokio::spawn(forward(
                Arc::clone(self),
                node.to_owned(),
                r.client_id,
                r.conn_id,
                rx,
            ));
        }
        entry
    }

    /// Removes a remote requester's stand-in (`which` says whether this origin is the
    /// one meant) and ends the sessions it requested here.
    pub(super) fn drop_proxy(
        &self,
        app: &AppState,
        client_id: &str,
        which: impl Fn(&ProxyOrigin) -> bool,
    ) {
        let Some((_, origin)) = self.proxies.remove_if(client_id, |_, o| which(o)) else {
            return;
        };
        let Some(entry) = app
            .registry
            .remove_remote_if(client_id, |e| e.conn.id() == origin.local_conn)
        else {
            return;
        };
        let sessions = std::mem::take(&mut *entry.as_requester.lock());
        tracing::info!(client_id, node = %origin.node, sessions = sessions.len(), "a remote requester went away");
        for sid in sessions {
            if let Some(h) = app.sessions.get(&sid) {
                h.cancel(CancelReason::RequesterDisconnected);
            }
        }
        entry.conn.kill(crate::conn::close::GOING_AWAY);
    }

    /// Drops every stand-in of requesters on `node`.
    pub(super) fn drop_proxies_of(&self, app: &AppState, node: &str) {
        let ids: Vec<String> = self
            .proxies
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.key().clone())
            .collect();
        for id in ids {
            self.drop_proxy(app, &id, |o| o.node == node);
        }
    }
}

/// Sends a stand-in's frames to its requester's node until the stand-in goes.
async fn forward(
    cluster: Arc<Cluster>,
    node: String,
    client_id: String,
    conn_id: u64,
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
) {
    while let Some(out) = rx.recv().await {
        let Outgoing::Text(text) = out else {
            continue;
        };
        let msg = Msg::Frame {
            from: cluster.node.clone(),
            client_id: client_id.clone(),
            conn_id,
            text,
        };
        // Retried briefly: a frame lost here is a requester that never hears its end.
        let mut wait = Duration::from_millis(50);
        for _ in 0..6 {
            match cluster.send(&node, &msg).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(node, cause = %e, "could not forward a frame; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
}
