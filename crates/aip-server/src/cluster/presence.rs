//! Who is connected where: `{aip}:owner` (client id → node), `{aip}:clients` (client id
//! → its registration, JSON), `{aip}:seen` (client id → last frame, µs), and each node's
//! heartbeat key `{aip}:alive:<node>` with `{aip}:nodes` (node → last beat).

use std::sync::Arc;
use std::sync::LazyLock;

use aip_protocol::time::http_timestamp;
use redis::Script;
use serde_json::{json, Value};

use super::route::RemoteDevice;
use super::{query, Cluster, NODE_TTL};
use crate::registry::ClientEntry;
use crate::state::AppState;
use crate::storage::StoreError;

const OWNER: &str = "{aip}:owner";
const CLIENTS: &str = "{aip}:clients";
const SEEN: &str = "{aip}:seen";
pub(super) const NODES: &str = "{aip}:nodes";

pub(super) fn alive_key(node: &str) -> String {
    format!("{{aip}}:alive:{node}")
}

pub(super) fn lost_key(node: &str) -> String {
    format!("{{aip}}:lost:{node}")
}

pub(super) fn left_key(node: &str) -> String {
    format!("{{aip}}:left:{node}")
}

/// Claims `client_id` for this node's connection. The owner hash holds `node|conn`, so
/// that a late release of an earlier connection leaves a newer one alone. Without an
/// expected holder, the claim succeeds if nobody or this node holds the id; with one
/// (the holder found dead), only if that holder still holds it (compare-and-set: a
/// holder that changed meanwhile, another node's newer claim, is never overwritten).
/// Returns '' when claimed, else the current holder (`node|conn`). KEYS: owner.
/// ARGV: id, node, entry JSON, seen (µs), expected holder or '', conn id.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local node = string.match(cur, '^(.*)|') or cur
  if ARGV[5] ~= '' then
    if cur ~= ARGV[5] then return cur end
  elseif node ~= ARGV[2] then
    return cur
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[6])
redis.call('HSET', '{aip}:clients', ARGV[1], ARGV[3])
redis.call('HSET', '{aip}:seen', ARGV[1], ARGV[4])
return ''
"#,
    )
});

/// Removes `client_id` if this connection holds it. KEYS: owner. ARGV: id, `node|conn`.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', '{aip}:clients', ARGV[1])
  redis.call('HDEL', '{aip}:seen', ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// Removes every client `node` holds. KEYS: owner. ARGV: node. Returns how many.
static RELEASE_NODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  if string.match(all[i + 1], '^(.*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('HDEL', '{aip}:clients', all[i])
    redis.call('HDEL', '{aip}:seen', all[i])
    n = n + 1
  end
end
return n
"#,
    )
});

/// Renews this node's heartbeat. KEYS: alive key. ARGV: node, ttl (ms), now (ms).
/// Returns -1 when the cluster declared this node lost, -2 when the node has left (its
/// graceful leave; a beat still in flight must not bring it back), else whether the key
/// existed (0: Redis saw no beat of this node for a whole TTL, or lost its data).
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', '{aip}:lost:' .. ARGV[1]) == 1 then return -1 end
if redis.call('EXISTS', '{aip}:left:' .. ARGV[1]) == 1 then return -2 end
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('HSET', '{aip}:nodes', ARGV[1], ARGV[3])
return had
"#,
    )
});

/// Writes the last frame time of this node's clients that it holds in presence, and
/// returns the positions (from 0) of those missing from presence (to be claimed again).
/// KEYS: owner. ARGV: node, then (client id, conn id, last seen µs) triples.
static AUDIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local missing = {}
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur == ARGV[1] .. '|' .. ARGV[i + 1] then
    redis.call('HSET', '{aip}:seen', ARGV[i], ARGV[i + 2])
  elseif not cur then
    missing[#missing + 1] = (i - 2) / 3
  end
end
return missing
"#,
    )
});

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Database(format!("redis: {e}"))
}

/// What the cluster shows of a client: the registration, nothing secret (no key).
fn entry_json(e: &ClientEntry, node: &str) -> String {
    json!({
        "client_id": e.client_id,
        "type": e.role.as_str(),
        "platform": e.platform,
        "target_id": e.scope,
        "connected_at": http_timestamp(e.connected_at),
        "metadata": e.metadata,
        "system_info": e.system_info.as_deref(),
        "node": node,
    })
    .to_string()
}

impl Cluster {
    /// Publishes `e` as this node's, unless a live client on another node holds its id
    /// (protocol.md §4.2 across nodes: the holder is probed through its node; a dead
    /// one, or one on a node that is gone, is replaced, only if it still holds the id
    /// when replaced). `Err`: the refusal text.
    pub async fn claim(
        &self,
        e: &ClientEntry,
        probe_timeout: std::time::Duration,
    ) -> Result<(), String> {
        let id = e.client_id.as_str();
        let mut expected: Option<String> = None;
        // A holder replaced meanwhile by a third claim is probed in its turn, a few times.
        for _ in 0..3 {
            let holder = match self.claim_as(e, expected.as_deref()).await {
                Ok(None) => return Ok(()),
                Ok(Some(holder)) => holder,
                Err(err) => {
                    tracing::error!(client_id = id, cause = %err, "presence: could not publish a client");
                    // Presence is republished when Redis answers again (the audit of
                    // every heartbeat claims what is missing); the client stays.
                    return Ok(());
                }
            };
            let node = holder.split('|').next().unwrap_or_default().to_owned();
            if node == self.node {
                // This node's own earlier connection: the local registry decided.
                expected = Some(holder);
                continue;
            }
            if self.node_alive(&node).await {
                // The holder's node probes for up to `probe_timeout`; its answer comes after.
                let wait = probe_timeout + std::time::Duration::from_secs(2);
                let answer = self
                    .call_within(&node, wait, |req| super::inbox::Msg::Probe {
                        req,
                        from: self.node.clone(),
                        client_id: id.to_owned(),
                    })
                    .await
                    .ok()
                    .flatten();
                match answer {
                    Some(super::ProbeReply::Alive { alive: false }) => {}
                    // No answer from a node that has stopped heartbeating meanwhile: gone.
                    None if !self.node_alive(&node).await => {}
                    _ => {
                        tracing::warn!(client_id = id, node = %node, "duplicate registration refused; the client is live on another node");
                        return Err(aip_protocol::errors::duplicate_client(id));
                    }
                }
            }
            tracing::warn!(client_id = id, node = %node, "the previous holder on another node is dead; replacing it");
            expected = Some(holder);
        }
        tracing::warn!(
            client_id = id,
            "duplicate registration refused; the id changed hands while it was claimed"
        );
        Err(aip_protocol::errors::duplicate_client(id))
    }

    /// Whether `node`'s heartbeat key is there (true when Redis cannot say).
    async fn node_alive(&self, node: &str) -> bool {
        query(&mut self.conn(), redis::cmd("EXISTS").arg(alive_key(node)))
            .await
            .unwrap_or(true)
    }

    /// [`CLAIM`]: `Ok(None)` when claimed, else the holder (`node|conn`).
    async fn claim_as(
        &self,
        e: &ClientEntry,
        expected: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let holder: String = CLAIM
            .key(OWNER)
            .arg(&e.client_id)
            .arg(&self.node)
            .arg(entry_json(e, &self.node))
            .arg(e.conn.last_seen_micros())
            .arg(expected.unwrap_or(""))
            .arg(e.conn.id())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok((!holder.is_empty()).then_some(holder))
    }

    /// Removes `client_id` from presence if this node's connection `conn_id` holds it.
    pub fn release(self: &Arc<Self>, client_id: &str, conn_id: u64) {
        let (me, id) = (Arc::clone(self), client_id.to_owned());
        tokio::spawn(async move {
            let done: redis::RedisResult<i64> = RELEASE
                .key(OWNER)
                .arg(&id)
                .arg(format!("{}|{conn_id}", me.node))
                .invoke_async(&mut me.conn())
                .await;
            if let Err(e) = done {
                tracing::warn!(client_id = %id, cause = %e, "presence: could not remove a client");
            }
        });
    }

    /// Removes every client of `node` from presence.
    pub(super) async fn release_node(&self, node: &str) -> Result<u64, StoreError> {
        RELEASE_NODE
            .key(OWNER)
            .arg(node)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err)
    }

    /// Writes every local client's last frame time, and claims again those missing from
    /// presence (Redis lost them, or a stale release removed them): a client connected
    /// here is never absent from the fleet view for longer than this audit's period. One
    /// held by another node is left to it.
    pub(super) async fn audit_presence(&self, app: &AppState) -> Result<(), StoreError> {
        let all = app.registry.list();
        let mut reclaimed = 0usize;
        for chunk in all.chunks(1000) {
            let mut call = AUDIT.key(OWNER);
            call.arg(&self.node);
            for e in chunk {
                call.arg(&e.client_id)
                    .arg(e.conn.id())
                    .arg(e.conn.last_seen_micros());
            }
            let missing: Vec<usize> = call
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_err)?;
            for e in missing.into_iter().filter_map(|i| chunk.get(i)) {
                if app.registry.get_conn(&e.client_id, e.conn.id()).is_none() {
                    continue;
                }
                if self.claim_as(e, None).await?.is_none() {
                    reclaimed += 1;
                }
            }
        }
        if reclaimed > 0 {
            tracing::warn!(
                clients = reclaimed,
                "presence: clients connected here were missing and are published again"
            );
        }
        Ok(())
    }

    /// Beats this node's heartbeat: -1 when fenced, else whether the key existed.
    pub(super) async fn beat(&self) -> redis::RedisResult<i64> {
        let ttl = u64::try_from(NODE_TTL.as_millis()).unwrap_or(u64::MAX);
        HEARTBEAT
            .key(alive_key(&self.node))
            .arg(&self.node)
            .arg(ttl)
            .arg(chrono::Utc::now().timestamp_millis())
            .invoke_async(&mut self.conn())
            .await
    }

    /// Every client of the fleet, each with its node, oldest connection first.
    pub async fn fleet(&self) -> Result<Vec<Value>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(CLIENTS).cmd("HGETALL").arg(SEEN);
        let (clients, seen): (
            Vec<(String, String)>,
            std::collections::HashMap<String, i64>,
        ) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        let mut out: Vec<Value> = clients
            .into_iter()
            .filter_map(|(id, text)| {
                let mut v: Value = serde_json::from_str(&text).ok()?;
                let last = seen
                    .get(&id)
                    .and_then(|us| chrono::DateTime::from_timestamp_micros(*us))
                    .map(http_timestamp);
                v["last_seen"] = json!(last);
                Some(v)
            })
            .collect();
        out.sort_by(|a, b| a["connected_at"].as_str().cmp(&b["connected_at"].as_str()));
        Ok(out)
    }

    /// A client on another node, by id.
    pub async fn lookup(
        &self,
        client_id: &str,
    ) -> Result<Option<(RemoteDevice, Value)>, StoreError> {
        let text: Option<String> = query(
            &mut self.conn(),
            redis::cmd("HGET").arg(CLIENTS).arg(client_id),
        )
        .await
        .map_err(redis_err)?;
        let Some(v) = text.and_then(|t| serde_json::from_str::<Value>(&t).ok()) else {
            return Ok(None);
        };
        let node = v["node"].as_str().unwrap_or_default().to_owned();
        if node == self.node || node.is_empty() {
            return Ok(None);
        }
        let device = RemoteDevice {
            client_id: client_id.to_owned(),
            node,
            is_device: v["type"] == "device",
        };
        Ok(Some((device, v)))
    }
}
