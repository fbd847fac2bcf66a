//! Cluster mode (`--cluster redis://…`): many `aip serve` nodes, one fleet.
//!
//! Each node keeps its own WebSockets and runs the sessions of the devices connected to
//! it (the device's node owns the session). What the nodes share lives in Redis:
//! - the session store ([`crate::storage::redis::RedisStore`]): any node serves any
//!   result, lists, deletes; and the fleet jobs (any node lists and reads any job; the
//!   node that received a job's `POST` runs it, see [`crate::fleet`]);
//! - presence (`presence.rs`): who is connected where, and each node's heartbeat key
//!   with a TTL;
//! - one inbox stream per node (`inbox.rs`): requests to the owner of a device or a
//!   session (open, cancel, probe a duplicate id) or of a fleet job (cancel) and their
//!   replies, and the frames a session sends to a requester connected elsewhere. A
//!   reader keeps its place in its stream (`XREAD` from the last entry read): what was
//!   added while it reconnected is read after; a request is acknowledged by its reply.
//!   What one node sends another goes through an outbox (`outbox.rs`) that puts
//!   everything waiting in one entry.
//!
//! `sweep.rs` checks, every few seconds, what the store says against what this node
//! knows: live sessions stored as this node's that it does not run are ended
//! (`lost_in_flight`), and sessions its requesters opened elsewhere whose end is stored
//! but whose `task_end` never came are ended for them from the store.
//!
//! `watch.rs` beats this node's heartbeat and notices the others' ending: the sessions
//! of a lost node are failed (`node_lost`), its clients dropped from presence, and a
//! node declared lost that comes back is fenced (its writes to those sessions refused;
//! it drops its connections, which register again). `route.rs` is the side that asks:
//! an HTTP dispatch or a constellation's `task` for a device on another node, a cancel
//! of a session another node owns.
//!
//! Every key of presence and of the session store has the hash tag `{aip}` (one slot
//! of a Redis Cluster, so their scripts are atomic); each inbox has its node's tag.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::oneshot;

use crate::storage::redis::{Redis, RedisStore, RedisTarget};
use crate::IdDashMap;

mod inbox;
mod outbox;
mod presence;
mod refusal;
mod route;
mod serve;
mod sweep;
mod watch;

pub use inbox::{CancelReply, OpenReply, ProbeReply, RemoteCancel};
pub use refusal::NodeRefusal;
pub use route::{RemoteDevice, RemoteOpen};

/// How often a node renews its heartbeat key and looks for lost nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose heartbeat key is this old is lost: its key expires.
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// How long a node waits for another's answer (open, cancel, probe).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A session a local requester opened on another node.
#[derive(Debug, Clone)]
struct RemoteSession {
    task_name: String,
    client_id: String,
    conn_id: u64,
    node: String,
    /// When it was opened (the sweep reads the store for those open a while).
    since: std::time::Instant,
    /// Whether it was opened is not known yet (Redis could not say when it was asked):
    /// the sweep settles it once Redis answers.
    unsettled: bool,
}

/// Where a remote requester's stand-in came from.
#[derive(Debug, Clone)]
struct ProxyOrigin {
    node: String,
    /// The requester's connection on its node.
    conn_id: u64,
    /// The stand-in's connection id here.
    local_conn: u64,
}

/// This node's part of the cluster.
pub struct Cluster {
    node: String,
    target: RedisTarget,
    redis: Redis,
    store: Arc<RedisStore>,
    next_req: AtomicU64,
    pending: IdDashMap<u64, oneshot::Sender<serde_json::Value>>,
    remote_sessions: IdDashMap<String, RemoteSession>,
    proxies: IdDashMap<String, ProxyOrigin>,
    /// Where clients on other nodes were found lately (`route.rs`).
    located: IdDashMap<String, (RemoteDevice, std::time::Instant)>,
    /// The inbox entry this node's reader starts after (set when it joins).
    inbox_from: parking_lot::Mutex<String>,
    /// One outbox per node this one sends to (`outbox.rs`).
    outboxes: IdDashMap<String, outbox::Outbox>,
    /// The last heartbeat reached Redis.
    redis_up: AtomicBool,
    /// Live sessions the store says this node owns but it does not run, as of the last
    /// sweep (`sweep.rs`): ended if still so at the next.
    orphans: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish()
    }
}

/// A fresh node id: unique per process.
pub fn generated_node_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("node-{}", &id[..12])
}

impl Cluster {
    /// Connects to the Redis (or Redis Cluster) `spec` names, as node `node`.
    pub async fn connect(spec: &str, node: String) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        let target = RedisTarget::resolve(spec)
            .await
            .with_context(|| format!("connecting to Redis at {spec}"))?;
        let redis = target.connect().await.context("connecting to Redis")?;
        let store = Arc::new(RedisStore::new(redis.clone(), node.clone()));
        let cluster = Arc::new(Self {
            node,
            target,
            redis,
            store,
            next_req: AtomicU64::new(1),
            pending: IdDashMap::default(),
            remote_sessions: IdDashMap::default(),
            proxies: IdDashMap::default(),
            located: IdDashMap::default(),
            outboxes: IdDashMap::default(),
            inbox_from: parking_lot::Mutex::new("0-0".to_owned()),
            redis_up: AtomicBool::new(true),
            orphans: parking_lot::Mutex::default(),
        });
        cluster.join().await.context("joining the cluster")?;
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// True for a Redis Cluster (sharded), false for one Redis.
    pub fn is_sharded(&self) -> bool {
        self.target.is_sharded()
    }

    /// The shared session store.
    pub fn store(&self) -> Arc<RedisStore> {
        Arc::clone(&self.store)
    }

    /// Whether the last heartbeat reached Redis.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Acquire)
    }

    fn conn(&self) -> Redis {
        self.redis.clone()
    }

    /// Starts the heartbeat, the watch of other nodes, the sweep and the inbox reader.
    pub fn start(self: &Arc<Self>, app: Arc<crate::AppState>) {
        tokio::spawn(watch::run(Arc::clone(self), Arc::clone(&app)));
        tokio::spawn(sweep::run(Arc::clone(self), Arc::clone(&app)));
        tokio::spawn(inbox::run(Arc::clone(self), app));
    }

    /// A new request number for a call.
    fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }
}

/// Runs one command on `conn`, typed.
async fn query<T: redis::FromRedisValue>(
    conn: &mut (impl ConnectionLike + Send),
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    cmd.query_async(conn).await
}
