//! Each node's inbox: a Redis stream its node reads with `XREAD` from the last entry
//! read, so a message added while the reader reconnects is read after it. What one node
//! asks of another, the answers, and the frames for requesters connected elsewhere; an
//! entry holds one message or an outbox's batch of them (`outbox.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aip_protocol::Command;
use futures_util::future::join_all;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::refusal::NodeRefusal;
use super::{query, serve, Cluster, CALL_TIMEOUT};
use crate::session::CancelReason;
use crate::state::AppState;
use crate::storage::redis::conn::BLOCK;
use crate::storage::StoreError;

/// How often what was read is trimmed from the inbox.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Most entries read at once.
const BATCH: usize = 512;

/// The stream of `node`'s inbox (its own hash tag: inboxes spread over a Redis Cluster).
pub(super) fn inbox_key(node: &str) -> String {
    format!("aip:inbox:{{{node}}}")
}

/// A requester connected to another node.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RemoteRequester {
    pub client_id: String,
    pub conn_id: u64,
}

/// A session another node asks this one to open on one of its devices.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct OpenAsk {
    pub req: u64,
    pub from: String,
    /// Unix ms after which the asker has given up: not opened.
    pub deadline_ms: i64,
    pub session_id: String,
    pub generated_id: bool,
    pub task_name: String,
    pub request: String,
    pub executor: String,
    pub commands: Option<Vec<Command>>,
    pub requester: Option<RemoteRequester>,
    /// The fleet job the session belongs to; absent from nodes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Why a session another node owns is cancelled, when not for `DELETE
/// /api/sessions/{id}`: the fleet job it belongs to, run by the asking node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum RemoteCancel {
    /// `DELETE /api/jobs/{id}` (or the job's node is gone).
    Job,
    /// The job's `timeout` (seconds) passed while it ran.
    JobTimeout { secs: f64 },
    /// The job's node shuts down.
    Shutdown,
}

impl RemoteCancel {
    /// The local cancel reason it stands for.
    pub(super) fn reason(self) -> CancelReason {
        match self {
            Self::Job => CancelReason::Job,
            Self::JobTimeout { secs } => CancelReason::JobTimeout(
                Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO),
            ),
            Self::Shutdown => CancelReason::Shutdown,
        }
    }

    /// The remote form of a job's cancel reason (`None`: not one a job sends).
    pub fn of(reason: CancelReason) -> Option<Self> {
        match reason {
            CancelReason::Job => Some(Self::Job),
            CancelReason::JobTimeout(t) => Some(Self::JobTimeout {
                secs: t.as_secs_f64(),
            }),
            CancelReason::Shutdown => Some(Self::Shutdown),
            _ => None,
        }
    }
}

/// A message between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Msg {
    /// Open a session on a device of the receiving node.
    Open(Box<OpenAsk>),
    /// Cancel a session the receiving node owns.
    Cancel {
        req: u64,
        from: String,
        session_id: String,
        /// Absent: `DELETE /api/sessions/{id}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<RemoteCancel>,
    },
    /// Cancel a fleet job the receiving node runs.
    CancelJob {
        req: u64,
        from: String,
        job_id: String,
    },
    /// Is the receiving node's holder of `client_id` alive? A dead one is dropped.
    Probe {
        req: u64,
        from: String,
        client_id: String,
    },
    /// The answer to request `req`, as the call's own reply type ([`OpenReply`],
    /// [`CancelReply`], [`ProbeReply`]) reads it.
    Reply {
        req: u64,
        outcome: serde_json::Value,
    },
    /// A frame for a requester connected to the receiving node.
    Frame {
        from: String,
        client_id: String,
        conn_id: u64,
        text: String,
    },
    /// A requester of the sender's disconnected: its sessions here end.
    Gone {
        from: String,
        client_id: String,
        conn_id: u64,
    },
}

/// The answer to an open (a dispatch, a constellation's `task`, a job member).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OpenReply {
    /// Stored and started.
    Ok,
    /// The device's queue is above its high-water mark: nothing was created.
    Busy,
    /// Not done, and why.
    Refused(NodeRefusal),
}

/// The answer to a cancel (of a session, or of a fleet job).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelReply {
    /// Cancelled; its end is stored.
    Ok,
    /// Not done, and why.
    Refused(NodeRefusal),
}

/// The answer to a probe of a client's holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ProbeReply {
    Alive { alive: bool },
}

impl Cluster {
    /// Adds `msg` to `node`'s inbox (through its outbox); returns once Redis took it.
    pub(super) async fn send(&self, node: &str, msg: &Msg) -> redis::RedisResult<()> {
        let json = serde_json::to_string(msg).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "encode", e.to_string()))
        })?;
        self.post(node, json).await
    }

    /// Sends the message `make` builds (given a request number) to `node` and waits for
    /// its answer, of the call's reply type `R`. `Ok(None)`: not answered within
    /// `CALL_TIMEOUT` (or answered with something `R` cannot read); `Err`: Redis did not
    /// take the message.
    pub(super) async fn call<R: DeserializeOwned>(
        &self,
        node: &str,
        make: impl FnOnce(u64) -> Msg,
    ) -> Result<Option<R>, StoreError> {
        self.call_within(node, CALL_TIMEOUT, make).await
    }

    /// [`Cluster::call`] waiting up to `wait`.
    pub(super) async fn call_within<R: DeserializeOwned>(
        &self,
        node: &str,
        wait: Duration,
        make: impl FnOnce(u64) -> Msg,
    ) -> Result<Option<R>, StoreError> {
        let req = self.next_req();
        let (tx, rx) = oneshot::channel();
        self.pending.insert(req, tx);
        let sent = self.send(node, &make(req)).await;
        let answer = match sent {
            Ok(()) => Ok(tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(Result::ok)),
            Err(e) => {
                tracing::warn!(node, cause = %e, "could not reach another node through Redis");
                Err(StoreError::Database(format!("redis: {e}")))
            }
        };
        self.pending.remove(&req);
        Ok(answer?.and_then(|v| match serde_json::from_value(v) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(node, cause = %e, "unreadable answer of another node");
                None
            }
        }))
    }

    pub(super) async fn reply(&self, node: &str, req: u64, outcome: &impl Serialize) {
        let outcome = match serde_json::to_value(outcome) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(cause = %e, "could not encode an answer to another node");
                return;
            }
        };
        if let Err(e) = self.send(node, &Msg::Reply { req, outcome }).await {
            tracing::warn!(node, cause = %e, "could not answer another node");
        }
    }
}

/// Reads this node's inbox until the process ends, reconnecting as needed.
///
/// Plain `XREAD` from the last entry read, kept here: a read writes nothing to Redis (a
/// consumer group's would be logged and fsynced like any write), and entries added
/// while the reader reconnects are read after it. What was read is trimmed away about
/// once a second (`XTRIM … MINID`).
pub(super) async fn run(cluster: Arc<Cluster>, app: Arc<AppState>) {
    let key = inbox_key(&cluster.node);
    let mut last = cluster.inbox_from.lock().clone();
    let mut trimmed = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        let mut conn = match cluster.target.connect_blocking().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(cause = %e, "inbox: cannot connect to Redis; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        wait = Duration::from_millis(100);
        loop {
            if app.shutdown.is_cancelled() {
                return;
            }
            let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> = query(
                &mut conn,
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last),
            )
            .await;
            let reply = match read {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(cause = %e, "inbox: read failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            let mut asks = Vec::new();
            for stream in reply.keys {
                for entry in stream.ids {
                    if let Some(redis::Value::BulkString(bytes)) = entry.map.get("m") {
                        match parse(bytes) {
                            Ok(msgs) => msgs
                                .into_iter()
                                .filter_map(|m| handle(&cluster, &app, m))
                                .for_each(|ask| asks.push(ask)),
                            Err(e) => {
                                tracing::warn!(cause = %e, "inbox: unreadable entry dropped")
                            }
                        }
                    }
                    last = entry.id;
                }
            }
            if !asks.is_empty() {
                // One task answers everything this read asked, side by side: their store
                // writes and replies go out together.
                let (cluster, app) = (Arc::clone(&cluster), Arc::clone(&app));
                tokio::spawn(async move {
                    join_all(asks.into_iter().map(|m| serve::answer(&cluster, &app, m))).await;
                });
            }
            if trimmed.elapsed() >= TRIM_EVERY {
                trimmed = Instant::now();
                // Not awaited: the next read need not wait for this write.
                let trim = redis::cmd("XTRIM")
                    .arg(&key)
                    .arg("MINID")
                    .arg(&last)
                    .clone();
                let mut conn = cluster.conn();
                tokio::spawn(async move {
                    if let Err(e) = query::<redis::Value>(&mut conn, &trim).await {
                        tracing::debug!(cause = %e, "inbox: trimming failed");
                    }
                });
            }
        }
    }
}

/// The messages of one inbox entry: one message, or a JSON array of them (an outbox's
/// batch, `outbox.rs`).
fn parse(bytes: &[u8]) -> serde_json::Result<Vec<Msg>> {
    if bytes.first() == Some(&b'[') {
        serde_json::from_slice(bytes)
    } else {
        serde_json::from_slice(bytes).map(|m| vec![m])
    }
}

/// Where this node's inbox is to be read from: after its last entry now (what an
/// earlier run under this id left is not for this one).
pub(super) async fn inbox_start(cluster: &Cluster) -> redis::RedisResult<String> {
    let last: Vec<redis::streams::StreamId> = query::<redis::streams::StreamRangeReply>(
        &mut cluster.conn(),
        redis::cmd("XREVRANGE")
            .arg(inbox_key(&cluster.node))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1),
    )
    .await?
    .ids;
    Ok(last
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |e| e.id))
}

/// Handles one message at once, or returns it when answering it waits on something
/// (the read's requests are then answered together, [`serve::answer`]).
fn handle(cluster: &Arc<Cluster>, app: &Arc<AppState>, msg: Msg) -> Option<Msg> {
    match msg {
        Msg::Reply { req, outcome } => {
            if let Some((_, tx)) = cluster.pending.remove(&req) {
                let _ = tx.send(outcome);
            }
        }
        Msg::Frame {
            from,
            client_id,
            conn_id,
            text,
        } => cluster.deliver_frame(app, &from, &client_id, conn_id, text),
        Msg::Gone {
            from,
            client_id,
            conn_id,
        } => cluster.drop_proxy(app, &client_id, |o| o.node == from && o.conn_id == conn_id),
        msg => return Some(msg),
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_of_a_node_that_predates_jobs_still_parse() {
        // An open without `job_id`, a cancel without `why`: a plain dispatch and cancel.
        let open = json!({"type": "open", "req": 1, "from": "old", "deadline_ms": 0,
            "session_id": "s", "generated_id": true, "task_name": "t", "request": "r",
            "executor": "dev", "commands": null, "requester": null});
        let Msg::Open(ask) = serde_json::from_value(open).unwrap() else {
            panic!("not an open");
        };
        assert_eq!(ask.job_id, None);
        let cancel = json!({"type": "cancel", "req": 2, "from": "old", "session_id": "s"});
        let Msg::Cancel { why, .. } = serde_json::from_value(cancel).unwrap() else {
            panic!("not a cancel");
        };
        assert!(why.is_none());
    }

    #[test]
    fn an_entry_holds_one_message_or_an_outbox_s_batch_in_order() {
        let reply = |req: u64| json!({"type": "reply", "req": req, "outcome": {"outcome": "ok"}});
        let one = parse(reply(1).to_string().as_bytes()).unwrap();
        assert!(matches!(one[..], [Msg::Reply { req: 1, .. }]));
        let batch = json!([reply(2), {"type": "frame", "from": "b", "client_id": "k",
            "conn_id": 7, "text": "{}"}, reply(3)]);
        let many = parse(batch.to_string().as_bytes()).unwrap();
        assert!(matches!(
            many[..],
            [
                Msg::Reply { req: 2, .. },
                Msg::Frame { conn_id: 7, .. },
                Msg::Reply { req: 3, .. }
            ]
        ));
        assert!(parse(b"[{\"type\": \"nonsense\"}]").is_err());
    }

    #[test]
    fn a_job_s_cancel_reasons_cross_nodes_as_themselves() {
        let limit = Duration::from_millis(1500);
        for reason in [
            CancelReason::Job,
            CancelReason::JobTimeout(limit),
            CancelReason::Shutdown,
        ] {
            let why = RemoteCancel::of(reason).unwrap();
            let text = serde_json::to_string(&why).unwrap();
            let back: RemoteCancel = serde_json::from_str(&text).unwrap();
            assert_eq!(format!("{:?}", back.reason()), format!("{reason:?}"));
        }
        assert!(RemoteCancel::of(CancelReason::Api).is_none());
    }
}
