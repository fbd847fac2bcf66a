//! Who is connected (server.md §3.1): one entry per registered client, unique by
//! `client_id`, with the sessions it requests and executes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aip_protocol::{ClientType, ServerMessage};
use chrono::{DateTime, Utc};
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use serde_json::{Map, Value};

use aip_protocol::plan::platform_agent_name;

use crate::{IdDashMap, IdSet};

use crate::conn::{ConnHandle, SendError};
use crate::keys::Grant;

/// Most task assignments remembered per device while their echo is outstanding.
const MAX_PENDING_ECHOES: usize = 1024;

/// What a session keeps of its executor's registration for its driver: shared, not copied.
#[derive(Debug, Clone, Default)]
pub struct ExecutorInfo {
    /// The agent the executor's registered platform has ([`platform_agent_name`]).
    pub agent_name: Option<&'static str>,
    /// `metadata.system_info`.
    pub system_info: Option<Arc<Value>>,
    /// `metadata.tools`.
    pub tools: Option<Arc<Value>>,
}

/// A `task` the server sent to a device whose echo has not arrived (protocol.md §3.6).
#[derive(Debug, Clone)]
pub struct PendingEcho {
    pub session_id: String,
    pub task_name: String,
}

/// One registered client.
#[derive(Debug)]
pub struct ClientEntry {
    pub client_id: String,
    pub role: ClientType,
    pub conn: ConnHandle,
    /// The registration `metadata` but for `system_info` and `tools`, kept below.
    pub metadata: Option<Map<String, Value>>,
    pub platform: Option<String>,
    /// The reference agent for `platform`, worked out once at registration.
    pub agent_name: Option<&'static str>,
    /// Devices: `metadata.system_info`, shared (not copied) with every session it runs.
    pub system_info: Option<Arc<Value>>,
    /// `metadata.tools`, shared likewise (an MCP device may advertise large schemas).
    pub tools: Option<Arc<Value>>,
    /// Constellations: the device named by `target_id` at registration.
    pub scope: Option<String>,
    /// What the credential it registered with allows (who may replace it, what it may address).
    pub grant: Grant,
    pub connected_at: DateTime<Utc>,
    seq: u64,
    /// Live sessions this client requested.
    pub as_requester: Mutex<IdSet<Arc<str>>>,
    /// Live sessions this client executes.
    pub as_executor: Mutex<IdSet<Arc<str>>>,
    pending_echo: Mutex<VecDeque<PendingEcho>>,
    /// Its registration was acknowledged: only then is it listed and routable (a WebSocket
    /// registration is held, not ready, while its id is claimed across the cluster).
    ready: std::sync::atomic::AtomicBool,
}

impl ClientEntry {
    /// A new entry; `seq` orders listings.
    pub fn new(
        client_id: String,
        role: ClientType,
        conn: ConnHandle,
        metadata: Option<Map<String, Value>>,
        scope: Option<String>,
    ) -> Self {
        // Kept once: `system_info` and `tools` are moved out of the map into the `Arc`s
        // every session shares, not copied.
        let mut metadata = metadata;
        let platform = metadata
            .as_ref()
            .and_then(|m| m.get("platform"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let system_info = metadata
            .as_mut()
            .and_then(|m| m.remove("system_info"))
            .filter(|v| role == ClientType::Device && v.is_object())
            .map(Arc::new);
        let tools = metadata
            .as_mut()
            .and_then(|m| m.remove("tools"))
            .map(Arc::new);
        Self {
            client_id,
            role,
            conn,
            metadata,
            agent_name: platform.as_deref().and_then(platform_agent_name),
            platform,
            system_info,
            tools,
            scope,
            grant: Grant::Full,
            connected_at: Utc::now(),
            seq: 0,
            as_requester: Mutex::new(IdSet::default()),
            as_executor: Mutex::new(IdSet::default()),
            pending_echo: Mutex::new(VecDeque::new()),
            ready: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The same entry, held (not listed, not routable) until [`ClientEntry::set_ready`]:
    /// a registration whose acknowledgement has not been sent yet.
    pub fn held(self) -> Self {
        self.ready.store(false, Ordering::Release);
        self
    }

    /// Its registration was acknowledged: from now on it is listed and routable.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether its registration was acknowledged.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The same entry, registered under `grant`.
    pub fn with_grant(mut self, grant: Grant) -> Self {
        self.grant = grant;
        self
    }

    /// Queues a message on this client's connection.
    pub fn send(&self, msg: &ServerMessage) -> Result<(), SendError> {
        self.conn.send(msg)
    }

    /// What a session this device executes keeps of its registration (shared, not copied).
    pub fn executor_info(&self) -> ExecutorInfo {
        ExecutorInfo {
            agent_name: self.agent_name,
            system_info: self.system_info.clone(),
            tools: self.tools.clone(),
        }
    }

    /// Queues a message already serialised (one message for several recipients).
    pub fn send_text(&self, json: String) -> Result<(), SendError> {
        self.conn.send_raw(crate::conn::Outgoing::Text(json))
    }

    /// Remembers a task assignment awaiting its echo.
    pub fn push_pending_echo(&self, pending: PendingEcho) {
        let mut q = self.pending_echo.lock();
        if q.len() >= MAX_PENDING_ECHOES {
            q.pop_front();
        }
        q.push_back(pending);
    }

    /// Forgets a task assignment (dispatch aborted).
    pub fn remove_pending_echo(&self, session_id: &str) {
        self.pending_echo
            .lock()
            .retain(|p| p.session_id != session_id);
    }

    /// Takes the assignment a device `task` echoes: by `session_id`, else by `task_name`
    /// (oldest first).
    pub fn take_pending_echo(
        &self,
        session_id: Option<&str>,
        task_name: Option<&str>,
    ) -> Option<PendingEcho> {
        let mut q = self.pending_echo.lock();
        let pos = match session_id.filter(|s| !s.is_empty()) {
            Some(sid) => q.iter().position(|p| p.session_id == sid)?,
            None => {
                let name = task_name?;
                q.iter().position(|p| p.task_name == name)?
            }
        };
        q.remove(pos)
    }
}

/// All registered clients.
#[derive(Debug, Default)]
pub struct Registry {
    clients: IdDashMap<String, Arc<ClientEntry>>,
    /// Cluster mode: requesters connected to another node whose sessions run here. Their
    /// frames go back to their node; they are not listed and cannot be addressed.
    remote: IdDashMap<String, Arc<ClientEntry>>,
    seq: AtomicU64,
}

impl Registry {
    /// Registers `entry` unless its `client_id` is taken; returns the holder otherwise.
    pub fn try_insert(&self, mut entry: ClientEntry) -> Result<Arc<ClientEntry>, Arc<ClientEntry>> {
        match self.clients.entry(entry.client_id.clone()) {
            Entry::Occupied(o) => Err(o.get().clone()),
            Entry::Vacant(v) => {
                entry.seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let entry = Arc::new(entry);
                v.insert(entry.clone());
                Ok(entry)
            }
        }
    }

    /// Removes `client_id` if it is still held by connection `conn_id`.
    pub fn remove_if_conn(&self, client_id: &str, conn_id: u64) -> Option<Arc<ClientEntry>> {
        self.clients
            .remove_if(client_id, |_, e| e.conn.id() == conn_id)
            .map(|(_, e)| e)
    }

    /// The entry for `client_id`, once its registration is acknowledged.
    pub fn get(&self, client_id: &str) -> Option<Arc<ClientEntry>> {
        self.get_held(client_id).filter(|e| e.is_ready())
    }

    /// The entry holding `client_id`, acknowledged or not yet (a registration in progress
    /// holds its id).
    pub fn get_held(&self, client_id: &str) -> Option<Arc<ClientEntry>> {
        self.clients.get(client_id).map(|e| e.clone())
    }

    /// The entry for `client_id` if it is still connection `conn_id` (a remote requester's
    /// stand-in included).
    pub fn get_conn(&self, client_id: &str, conn_id: u64) -> Option<Arc<ClientEntry>> {
        self.get_held(client_id)
            .filter(|e| e.conn.id() == conn_id)
            .or_else(|| {
                self.remote
                    .get(client_id)
                    .map(|e| e.clone())
                    .filter(|e| e.conn.id() == conn_id)
            })
    }

    /// The stand-in of a requester connected to another node, made by `make` if there is
    /// none yet.
    pub fn remote_or_insert(
        &self,
        client_id: &str,
        make: impl FnOnce() -> ClientEntry,
    ) -> Arc<ClientEntry> {
        self.remote
            .entry(client_id.to_owned())
            .or_insert_with(|| Arc::new(make()))
            .clone()
    }

    /// Removes the stand-in of a remote requester if `keep` says so.
    pub fn remove_remote_if(
        &self,
        client_id: &str,
        keep: impl FnOnce(&ClientEntry) -> bool,
    ) -> Option<Arc<ClientEntry>> {
        self.remote
            .remove_if(client_id, |_, e| keep(e))
            .map(|(_, e)| e)
    }

    /// Every remote requester's stand-in.
    pub fn remotes(&self) -> Vec<Arc<ClientEntry>> {
        self.remote.iter().map(|e| e.value().clone()).collect()
    }

    /// A registered device named `client_id`.
    pub fn device(&self, client_id: &str) -> Option<Arc<ClientEntry>> {
        self.get(client_id).filter(|e| e.role == ClientType::Device)
    }

    /// Every client whose registration is acknowledged, oldest registration first.
    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        let mut all = self.list_held();
        all.retain(|e| e.is_ready());
        all
    }

    /// Every client, registrations in progress included, oldest first.
    pub fn list_held(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self.clients.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|e| e.seq);
        all
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when nobody is registered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn device() -> ClientEntry {
        ClientEntry::new(
            "dev".into(),
            ClientType::Device,
            ConnHandle::new(1, tokio::sync::mpsc::channel(1).0),
            None,
            None,
        )
    }

    fn pending(session_id: &str, task_name: &str) -> PendingEcho {
        PendingEcho {
            session_id: session_id.into(),
            task_name: task_name.into(),
        }
    }

    fn taken(e: &ClientEntry, sid: Option<&str>, name: Option<&str>) -> Option<String> {
        e.take_pending_echo(sid, name).map(|p| p.session_id)
    }

    #[test]
    fn registration_metadata_is_kept_once() {
        let metadata = serde_json::json!({
            "platform": "linux",
            "system_info": {"hostname": "h"},
            "tools": [{"name": "t"}],
            "tags": {"rack": "4"},
        });
        let Value::Object(map) = metadata else {
            unreachable!()
        };
        let e = ClientEntry::new(
            "dev".into(),
            ClientType::Device,
            ConnHandle::new(1, tokio::sync::mpsc::channel(1).0),
            Some(map),
            None,
        );
        let rest = e.metadata.as_ref().unwrap();
        assert!(!rest.contains_key("system_info") && !rest.contains_key("tools"));
        assert_eq!(rest["tags"]["rack"], "4");
        assert_eq!(e.platform.as_deref(), Some("linux"));
        let info = e.executor_info();
        assert!(Arc::ptr_eq(
            info.system_info.as_ref().unwrap(),
            e.system_info.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            info.tools.as_ref().unwrap(),
            e.tools.as_ref().unwrap()
        ));
    }

    #[test]
    fn an_echo_is_matched_by_session_id_else_by_task_name_oldest_first() {
        let e = device();
        e.push_pending_echo(pending("s1", "disk"));
        e.push_pending_echo(pending("s2", "disk"));
        e.push_pending_echo(pending("s3", "cpu"));
        assert_eq!(taken(&e, Some("s2"), Some("cpu")).as_deref(), Some("s2"));
        // No (or an empty) session id: by name, the oldest first.
        e.push_pending_echo(pending("s4", "disk"));
        assert_eq!(taken(&e, Some(""), Some("disk")).as_deref(), Some("s1"));
        assert_eq!(taken(&e, None, Some("disk")).as_deref(), Some("s4"));
        // A session id that is not pending matches nothing, whatever the name.
        assert_eq!(taken(&e, Some("s9"), Some("cpu")), None);
        assert_eq!(taken(&e, None, None), None);
        assert_eq!(taken(&e, None, Some("cpu")).as_deref(), Some("s3"));
        assert_eq!(taken(&e, None, Some("cpu")), None, "taken once");
    }

    #[test]
    fn a_removed_echo_is_forgotten_and_the_oldest_go_first_beyond_the_cap() {
        let e = device();
        for i in 0..=MAX_PENDING_ECHOES {
            e.push_pending_echo(pending(&format!("s{i}"), "t"));
        }
        assert_eq!(taken(&e, Some("s0"), None), None, "pushed out by the cap");
        assert_eq!(taken(&e, Some("s1"), None).as_deref(), Some("s1"));
        e.remove_pending_echo("s2");
        assert_eq!(taken(&e, Some("s2"), None), None);
        assert_eq!(taken(&e, None, Some("t")).as_deref(), Some("s3"));
    }
}
