//! The asking side: a dispatch or a constellation's `task` for a device on another node,
//! a cancel of a session another node owns, and the frames that come back.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aip_protocol::errors as text;
use aip_protocol::{Command, ServerMessage};
use serde::Deserialize;

use super::inbox::{Msg, OpenAsk, RemoteCancel, RemoteRequester};
use super::{CancelReply, Cluster, NodeRefusal, OpenReply, RemoteSession, CALL_TIMEOUT};
use crate::registry::ClientEntry;
use crate::state::AppState;
use crate::storage::{SessionStore, StoreError};

/// A client connected to another node, as presence shows it.
#[derive(Debug, Clone)]
pub struct RemoteDevice {
    pub client_id: String,
    pub node: String,
    pub is_device: bool,
}

/// A session to open on another node's device.
#[derive(Clone)]
pub struct RemoteOpen {
    pub session_id: String,
    pub generated_id: bool,
    pub task_name: String,
    pub request: String,
    pub commands: Option<Vec<Command>>,
    /// The fleet job the session belongs to (`None`: a plain dispatch).
    pub job_id: Option<String>,
}

fn deadline_ms() -> i64 {
    let ms = i64::try_from(CALL_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    chrono::Utc::now().timestamp_millis().saturating_add(ms)
}

/// How long where a client is connected is remembered (a dispatch then skips the presence
/// read); a node that answers `404` for it makes it looked up again.
const LOCATE_TTL: Duration = Duration::from_secs(2);

impl Cluster {
    /// Where `client_id` is connected, if on another node; remembered for `LOCATE_TTL`.
    pub async fn locate(&self, client_id: &str) -> Result<Option<RemoteDevice>, StoreError> {
        if let Some(hit) = self.located.get(client_id) {
            if hit.1.elapsed() < LOCATE_TTL {
                return Ok(Some(hit.0.clone()));
            }
        }
        let found = self.lookup(client_id).await?.map(|(d, _)| d);
        match &found {
            Some(d) => {
                if self.located.len() >= 100_000 {
                    self.located.clear();
                }
                self.located
                    .insert(client_id.to_owned(), (d.clone(), Instant::now()));
            }
            None => {
                self.located.remove(client_id);
            }
        }
        Ok(found)
    }

    /// Opens a session on the device `client_id` for the HTTP API wherever it is
    /// connected now: a node that no longer holds it (`404`) makes it looked up again,
    /// once. `Ok(None)`: not connected anywhere.
    pub async fn open_located(
        &self,
        client_id: &str,
        open: RemoteOpen,
    ) -> Result<Option<(RemoteDevice, Option<OpenReply>)>, StoreError> {
        let Some(device) = self.locate(client_id).await? else {
            return Ok(None);
        };
        if !device.is_device {
            return Ok(Some((device, None)));
        }
        let outcome = self.open_remote(&device, open.clone()).await?;
        if !matches!(outcome, Some(OpenReply::Refused(NodeRefusal::NotOnline))) {
            return Ok(Some((device, outcome)));
        }
        self.located.remove(client_id);
        match self.locate(client_id).await? {
            Some(moved) if moved.node != device.node && moved.is_device => {
                let outcome = self.open_remote(&moved, open).await?;
                Ok(Some((moved, outcome)))
            }
            _ => Ok(Some((device, outcome))),
        }
    }

    /// Opens a session on `device`'s node for the HTTP API. `Ok(None)`: that node did
    /// not open it (it did not answer, and the session is not stored: see
    /// [`Cluster::settle`]).
    pub async fn open_remote(
        &self,
        device: &RemoteDevice,
        open: RemoteOpen,
    ) -> Result<Option<OpenReply>, StoreError> {
        let sid = open.session_id.clone();
        let answer = self
            .call(&device.node, |req| self.open_msg(req, device, open, None))
            .await;
        self.settle(answer, &sid, device, None).await
    }

    /// What an open asked of another node came to. An answer is taken as it is. Without
    /// one (the node did not answer in time, or the request could not be handed to Redis
    /// and may or may not have reached it), the store decides, atomically: a session
    /// stored for this executor and requester stands (the node was killed between
    /// storing and answering, or is slow; its loss, if that is why, ends the session
    /// like its others); one not stored is voided, so that the node's late write of it is
    /// refused and it never runs. So a `503` always means "not run". `requester`: the
    /// client that asked, `None` for the HTTP API. `Err`: Redis could not say (the
    /// outcome is unknown).
    async fn settle(
        &self,
        answer: Result<Option<OpenReply>, StoreError>,
        session_id: &str,
        device: &RemoteDevice,
        requester: Option<&str>,
    ) -> Result<Option<OpenReply>, StoreError> {
        let why = match answer {
            Ok(Some(outcome)) => return Ok(Some(outcome)),
            Ok(None) => "did not answer in time".to_owned(),
            Err(e) => format!("could not be asked ({e})"),
        };
        let mut wait = Duration::from_millis(100);
        let deadline = Instant::now() + CALL_TIMEOUT;
        let stored = loop {
            match self.store.stored_or_void(session_id).await {
                Ok(stored) => break stored,
                Err(e) if Instant::now() >= deadline => {
                    tracing::error!(session_id, node = %device.node, cause = %e, "could not settle whether another node opened a session");
                    return Err(e);
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        };
        if !stored {
            tracing::warn!(session_id, node = %device.node, why, "the device's node did not open the session; its id is voided (not run)");
            return Ok(None);
        }
        match self.store.get(session_id).await? {
            Some(r) if r.executor == device.client_id && r.requester.as_deref() == requester => {
                tracing::warn!(session_id, node = %device.node, why, "the device's node stored the session but did not answer; counted as accepted");
                Ok(Some(OpenReply::Ok))
            }
            // Another session of this id (a client's reused id): this open did not happen.
            _ => Ok(Some(OpenReply::Refused(NodeRefusal::SessionIdInUse))),
        }
    }

    /// The request to open `open` on `device`'s node.
    fn open_msg(
        &self,
        req: u64,
        device: &RemoteDevice,
        open: RemoteOpen,
        requester: Option<RemoteRequester>,
    ) -> Msg {
        Msg::Open(Box::new(OpenAsk {
            req,
            from: self.node.clone(),
            deadline_ms: deadline_ms(),
            session_id: open.session_id,
            generated_id: open.generated_id,
            task_name: open.task_name,
            request: open.request,
            executor: device.client_id.clone(),
            commands: open.commands,
            requester,
            job_id: open.job_id,
        }))
    }

    /// Opens a session on `device`'s node for a requester connected here: its
    /// acknowledgement, the session's frames and its `task_end` come back through this
    /// node's inbox.
    pub async fn open_remote_for(
        &self,
        requester: &ClientEntry,
        device: &RemoteDevice,
        open: RemoteOpen,
    ) -> Result<Option<OpenReply>, StoreError> {
        let sid = open.session_id.clone();
        // Known before the node answers: its first frame may come before its answer.
        self.remote_sessions.insert(
            sid.clone(),
            RemoteSession {
                task_name: open.task_name.clone(),
                client_id: requester.client_id.clone(),
                conn_id: requester.conn.id(),
                node: device.node.clone(),
                since: Instant::now(),
                unsettled: false,
            },
        );
        let asker = RemoteRequester {
            client_id: requester.client_id.clone(),
            conn_id: requester.conn.id(),
        };
        let answer = self
            .call(&device.node, |req| {
                self.open_msg(req, device, open, Some(asker))
            })
            .await;
        let outcome = match self
            .settle(answer, &sid, device, Some(&requester.client_id))
            .await
        {
            Ok(o) => o,
            Err(e) => {
                // Not known whether the device's node opened it: if it did, the requester
                // has its acknowledgement from there already, and must not be told
                // otherwise. The session stays known here; the sweep settles it once
                // Redis answers (its end, or an `error` if it was never opened).
                tracing::warn!(session_id = %sid, node = %device.node, cause = %e, "whether another node opened a session is not known yet; settled when Redis answers");
                if let Some(mut s) = self.remote_sessions.get_mut(&sid) {
                    s.unsettled = true;
                }
                return Ok(Some(OpenReply::Ok));
            }
        };
        if !matches!(outcome, Some(OpenReply::Ok)) {
            self.remote_sessions.remove(&sid);
        }
        Ok(outcome)
    }

    /// Asks the node that owns live session `session_id` to cancel it. `None`: not live
    /// anywhere (the caller reads the record); `Some(None)`: its node did not answer.
    pub async fn cancel_remote(
        &self,
        session_id: &str,
    ) -> Result<Option<Option<CancelReply>>, StoreError> {
        self.cancel_remote_as(session_id, None).await
    }

    /// [`Cluster::cancel_remote`] with the reason its node cancels it for (`None`:
    /// `DELETE /api/sessions/{id}`).
    pub async fn cancel_remote_as(
        &self,
        session_id: &str,
        why: Option<RemoteCancel>,
    ) -> Result<Option<Option<CancelReply>>, StoreError> {
        let Some(owner) = self.store.owner(session_id).await? else {
            return Ok(None);
        };
        if owner == self.node {
            return Ok(None);
        }
        Ok(Some(
            self.call(&owner, |req| Msg::Cancel {
                req,
                from: self.node.clone(),
                session_id: session_id.to_owned(),
                why,
            })
            .await?,
        ))
    }

    /// Asks `node`, which runs fleet job `job_id`, to cancel it, and waits for the job's
    /// end there (its own cancel waits up to 10 s). `None`: that node did not answer.
    pub async fn cancel_job_remote(
        &self,
        node: &str,
        job_id: &str,
    ) -> Result<Option<CancelReply>, StoreError> {
        self.call_within(node, CALL_TIMEOUT + Duration::from_secs(10), |req| {
            Msg::CancelJob {
                req,
                from: self.node.clone(),
                job_id: job_id.to_owned(),
            }
        })
        .await
    }

    /// Cancels, as `why`, live sessions wherever they run: here through `app`, on
    /// another node through its inbox. One task for them all; answers are not awaited
    /// by the caller (each session's end is written to the store by its node).
    pub fn cancel_sessions(
        self: &Arc<Self>,
        app: Option<&AppState>,
        session_ids: Vec<String>,
        why: RemoteCancel,
    ) {
        let mut remote = Vec::with_capacity(session_ids.len());
        for sid in session_ids {
            match app.and_then(|a| a.sessions.get(&sid)) {
                Some(h) => h.cancel(why.reason()),
                None => remote.push(sid),
            }
        }
        if remote.is_empty() {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let calls = remote.iter().map(|sid| me.cancel_remote_as(sid, Some(why)));
            for (sid, done) in remote
                .iter()
                .zip(futures_util::future::join_all(calls).await)
            {
                if let Err(e) = done {
                    tracing::warn!(session_id = %sid, cause = %e, "could not cancel a job's session on another node");
                }
            }
        });
    }

    /// A frame from `from` for a requester here: delivered only if that requester opened
    /// the frame's session on that node (a node is not trusted with anyone else's).
    pub(super) fn deliver_frame(
        &self,
        app: &AppState,
        from: &str,
        client_id: &str,
        conn_id: u64,
        text: String,
    ) {
        #[derive(Deserialize)]
        struct Peek<'a> {
            #[serde(borrow, default, rename = "type")]
            kind: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            session_id: Option<Cow<'a, str>>,
        }
        let Ok(peek) = serde_json::from_str::<Peek<'_>>(&text) else {
            return;
        };
        let Some(sid) = peek.session_id.as_deref() else {
            return;
        };
        let known = self
            .remote_sessions
            .get(sid)
            .is_some_and(|s| s.client_id == client_id && s.conn_id == conn_id && s.node == from);
        if !known {
            tracing::warn!(
                session_id = sid,
                node = from,
                client_id,
                "frame for a session this node did not open there; dropped"
            );
            return;
        }
        // A `task_end` is delivered once: by whoever takes the session out, this or the
        // sweep that reads ends from the store.
        if peek.kind.as_deref() == Some("task_end") && self.remote_sessions.remove(sid).is_none() {
            return;
        }
        if let Some(e) = app.registry.get_conn(client_id, conn_id) {
            let _ = e.send_text(text);
        }
    }

    /// A requester of this node disconnected: the nodes running its sessions end them.
    pub fn client_gone(self: &Arc<Self>, client_id: &str, conn_id: u64) {
        let mut nodes: Vec<String> = Vec::new();
        self.remote_sessions.retain(|_, s| {
            if s.client_id == client_id && s.conn_id == conn_id {
                if !nodes.contains(&s.node) {
                    nodes.push(s.node.clone());
                }
                false
            } else {
                true
            }
        });
        for node in nodes {
            let (me, client_id) = (Arc::clone(self), client_id.to_owned());
            tokio::spawn(async move {
                let msg = Msg::Gone {
                    from: me.node.clone(),
                    client_id,
                    conn_id,
                };
                if let Err(e) = me.send(&node, &msg).await {
                    tracing::warn!(node, cause = %e, "could not tell another node a requester left");
                }
            });
        }
    }

    /// `node` was lost: requesters here whose sessions ran there are told they failed,
    /// and stand-ins of its requesters end the sessions they requested here.
    pub(super) fn node_lost_here(&self, app: &AppState, node: &str) {
        self.drop_outbox(node);
        let mut ended = Vec::new();
        self.remote_sessions.retain(|sid, s| {
            if s.node == node {
                ended.push((sid.clone(), s.clone()));
                false
            } else {
                true
            }
        });
        for (sid, s) in ended {
            if let Some(e) = app.registry.get_conn(&s.client_id, s.conn_id) {
                let end = ServerMessage::task_end(
                    &sid,
                    &s.task_name,
                    false,
                    None,
                    Some(text::NODE_LOST.to_owned()),
                );
                let _ = e.send(&end);
            }
        }
        self.drop_proxies_of(app, node);
    }
}
