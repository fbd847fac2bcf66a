//! Session records and the result store behind a trait (server.md §6).
//!
//! The embedded default is SQLite ([`sqlite::SqliteStore`]); a shared backend for
//! several instances (Redis) implements the same trait.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

pub mod jobs;
pub mod lock;
pub mod redis;
pub mod sqlite;

pub use jobs::{JobReason, JobRecord, JobState, JobStore, MemberRecord, MemberState};

/// Lifecycle state of a session (server.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    Created,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl SessionState {
    /// The string used in storage and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`SessionState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// `completed`, `failed` and `cancelled` are final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Why a session ended, when its state alone does not say (server.md §4): stored as
/// `reason` and shown over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The session timeout passed.
    Timeout,
    /// The device neither echoed nor reported within the accept timeout.
    NotAccepted,
    DeviceDisconnected,
    RequesterDisconnected,
    /// Graceful shutdown.
    Shutdown,
    /// `DELETE /api/sessions/{id}`.
    Cancelled,
    /// The session was live when the server last stopped.
    ServerRestarted,
    /// Cluster mode: the node that owned the session stopped heartbeating.
    NodeLost,
    /// Cluster mode: the store says a node owns the session live, but that node does not
    /// run it (its write landed while the node saw it fail, or the node forgot it).
    LostInFlight,
}

impl EndReason {
    /// The string used in storage and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::NotAccepted => "not_accepted",
            Self::DeviceDisconnected => "device_disconnected",
            Self::RequesterDisconnected => "requester_disconnected",
            Self::Shutdown => "shutdown",
            Self::Cancelled => "cancelled",
            Self::ServerRestarted => "server_restarted",
            Self::NodeLost => "node_lost",
            Self::LostInFlight => "lost_in_flight",
        }
    }

    /// Parses [`EndReason::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "timeout" => Self::Timeout,
            "not_accepted" => Self::NotAccepted,
            "device_disconnected" => Self::DeviceDisconnected,
            "requester_disconnected" => Self::RequesterDisconnected,
            "shutdown" => Self::Shutdown,
            "cancelled" => Self::Cancelled,
            "server_restarted" => Self::ServerRestarted,
            "node_lost" => Self::NodeLost,
            "lost_in_flight" => Self::LostInFlight,
            _ => return None,
        })
    }
}

impl serde::Serialize for EndReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Who asked for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Device,
    Constellation,
    Http,
}

impl Origin {
    /// The string used in storage and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Constellation => "constellation",
            Self::Http => "http",
        }
    }

    /// Parses [`Origin::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "device" => Self::Device,
            "constellation" => Self::Constellation,
            "http" => Self::Http,
            _ => return None,
        })
    }
}

/// Everything stored about one session (server.md §3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub session_id: String,
    pub task_name: String,
    pub request: String,
    pub origin: Origin,
    /// Requester's client id; `None` for the HTTP API.
    pub requester: Option<String>,
    /// Device that receives the commands.
    pub executor: String,
    pub platform: String,
    pub state: SessionState,
    pub reason: Option<EndReason>,
    pub error: Option<String>,
    /// Boxed: most records (every live one) have none, and a `Value` inline would be paid
    /// by every parked session's record.
    pub result: Option<Box<Value>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// HTTP / delegated sessions: the device's echo (or first report) arrived.
    pub echo_received: bool,
    /// The fleet job this session is a member of (`None`: not part of a job).
    pub job_id: Option<String>,
}

impl SessionRecord {
    /// The `task_end` that tells this session's end as stored (its requester's, when
    /// the frame that the session's own end sent was refused or lost).
    pub fn task_end(&self) -> aip_protocol::ServerMessage {
        aip_protocol::ServerMessage::task_end(
            &self.session_id,
            &self.task_name,
            self.state == SessionState::Completed,
            self.result.as_deref().cloned(),
            self.error.clone(),
        )
    }
}

/// Selection for [`SessionStore::list`].
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub state: Option<SessionState>,
    /// Sessions whose requester or executor is this client.
    pub client_id: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the store is closed")]
    Closed,
    /// The store refused the write by one of its own rules; retrying cannot land it.
    #[error("write refused: {0}")]
    Refused(Refusal),
}

/// Why the store refused a write ([`StoreError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The stored session has ended: an ended session is final, no write changes it.
    Ended,
    /// Cluster mode: the writing node was declared lost (fenced); its writes are refused.
    Fenced,
    /// Cluster mode: the node that asked for this session gave up on it and voided its
    /// id before the session was stored (the asker answered that it was not opened).
    Voided,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ended => "the session has ended; an ended session is final",
            Self::Fenced => "this node was declared lost by the cluster",
            Self::Voided => "the node that asked for this session gave up on it",
        })
    }
}

impl StoreError {
    /// The store's own refusal, if this is one (no retry can land the write).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Refused(r) => Some(*r),
            _ => None,
        }
    }
}

/// Durable session records.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts or replaces the record with this `session_id`; durable when it returns.
    /// A stored record that has ended is final: writing over it is refused
    /// ([`Refusal::Ended`]), whoever writes.
    async fn upsert(&self, record: SessionRecord) -> Result<(), StoreError>;
    /// Stores the first record of a new run of a session: an ended record of the same
    /// id (a retained result whose owner runs the id again, protocol.md §4.5) is
    /// replaced; a live one is updated.
    async fn insert_new(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.upsert(record).await
    }
    /// Stores a record whose `session_id` the server has just generated, so that no stored
    /// record can have it: an [`upsert`](Self::upsert) that need not look for one.
    async fn insert_generated(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.upsert(record).await
    }
    /// Commits a small write of its own, through the same path as every other write:
    /// `Ok` means the store accepts durable writes now (readiness).
    async fn probe_write(&self) -> Result<(), StoreError>;
    /// Removes a record (a dispatch that could not be queued); durable when it returns.
    async fn delete(&self, session_id: &str) -> Result<(), StoreError>;
    /// The record with this `session_id`.
    /// Shared: a recently ended record is not copied for each read.
    async fn get(&self, session_id: &str) -> Result<Option<Arc<SessionRecord>>, StoreError>;
    /// The most recently created record with this `task_name`.
    async fn latest_by_task_name(
        &self,
        task_name: &str,
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Records matching the filter, newest first.
    async fn list(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError>;
    /// At start-up: every `created`/`running` record becomes `failed` / `server_restarted`.
    async fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Deletes ended records finished before `finished_before`, then the oldest-finished
    /// ended records beyond `max_results`. Live records are never purged.
    async fn purge(
        &self,
        finished_before: DateTime<Utc>,
        max_results: u64,
    ) -> Result<u64, StoreError>;
}
