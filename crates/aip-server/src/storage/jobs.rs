//! Fleet jobs as stored: the job ([`JobRecord`]), one [`MemberRecord`] per selected
//! device, their closed sets of states and reasons, and the [`JobStore`] trait.
//!
//! Kept apart from [`super::SessionStore`] so that a backend implements jobs when it is
//! ready to (the embedded SQLite store does, `sqlite/jobs.rs`; the shared Redis store of
//! cluster mode too, `redis/jobs.rs`). A member's session is an
//! ordinary session record carrying the `job_id`; the job store keeps only what the
//! aggregate needs (state, reason, exit code, a line of output), so reading a job never
//! reads its sessions.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{EndReason, StoreError};

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Devices are still being started or are still running.
    Running,
    /// Every member completed.
    Completed,
    /// At least one member failed, was cancelled or was skipped.
    Failed,
    /// `DELETE /api/jobs/{id}`.
    Cancelled,
}

impl JobState {
    /// The string used in storage and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Every state, in the order they are listed.
    pub const ALL: [JobState; 4] = [
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];
}

/// Where one device of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Waiting for its turn.
    Pending,
    /// Its session is live.
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Never started (offline at its turn, `max_failures` reached, the job cancelled).
    Skipped,
}

impl MemberState {
    /// Every state, in the order the counts are shown.
    pub const ALL: [MemberState; 6] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Skipped,
    ];

    /// The string used in storage and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    /// Parses [`MemberState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Position in [`MemberState::ALL`] (the index of its counter).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Pending and running members are live.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// Counts against `max_failures`: failed or cancelled (not skipped).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }
}

/// Why a member or a job ended the way it did, when its state alone does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobReason {
    /// The member's device was not connected at its turn.
    DeviceOffline,
    /// `max_failures` members had failed: the rest were not started.
    MaxFailures,
    /// `DELETE /api/jobs/{id}`.
    Cancelled,
    /// The member's session did not end within the job's `timeout`.
    Timeout,
    /// Live when the server last stopped.
    ServerRestarted,
    /// Graceful shutdown.
    Shutdown,
    /// The session could not be opened (too many sessions, the device busy, …).
    NotStarted,
    /// The member's session ended for this reason.
    Session(EndReason),
}

impl JobReason {
    /// The string used in storage and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeviceOffline => "device_offline",
            Self::MaxFailures => "max_failures",
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::ServerRestarted => "server_restarted",
            Self::Shutdown => "shutdown",
            Self::NotStarted => "not_started",
            Self::Session(r) => r.as_str(),
        }
    }

    /// Parses [`JobReason::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "device_offline" => Self::DeviceOffline,
            "max_failures" => Self::MaxFailures,
            "cancelled" => Self::Cancelled,
            "timeout" => Self::Timeout,
            "server_restarted" => Self::ServerRestarted,
            "shutdown" => Self::Shutdown,
            "not_started" => Self::NotStarted,
            other => Self::Session(EndReason::parse(other)?),
        })
    }
}

/// A job as stored: what was asked, and how far it got.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub job_id: String,
    /// The request as accepted (selector, request or commands, batch, max_failures,
    /// timeout), shown back over HTTP.
    pub spec: Value,
    pub state: JobState,
    pub reason: Option<JobReason>,
    /// Members by state, in [`MemberState::ALL`] order.
    pub counts: [u32; 6],
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// Number of members.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }
}

/// One device of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRecord {
    /// Its place in the rollout order (0-based).
    pub seq: u32,
    pub client_id: String,
    pub state: MemberState,
    pub reason: Option<JobReason>,
    /// The session it ran, once started.
    pub session_id: Option<String>,
    /// The last command's exit code, when it ran one.
    pub exit_code: Option<i64>,
    /// The first line of its output (or of its error), at most 200 characters.
    pub output: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl MemberRecord {
    /// Device `client_id` at place `seq`, waiting for its turn.
    pub fn pending(seq: u32, client_id: String) -> Self {
        Self {
            seq,
            client_id,
            state: MemberState::Pending,
            reason: None,
            session_id: None,
            exit_code: None,
            output: None,
            started_at: None,
            finished_at: None,
        }
    }
}

/// Durable jobs.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job and its members; durable when it returns.
    async fn create_job(
        &self,
        job: JobRecord,
        members: Vec<MemberRecord>,
    ) -> Result<(), StoreError>;
    /// Stores the job's new state and counts with the members that changed, in one write.
    async fn update_job(
        &self,
        job: JobRecord,
        changed: Vec<MemberRecord>,
    ) -> Result<(), StoreError>;
    /// The job and its members (in rollout order).
    async fn get_job(
        &self,
        job_id: &str,
    ) -> Result<Option<(JobRecord, Vec<MemberRecord>)>, StoreError>;
    /// At most `limit` jobs, newest first, without their members.
    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError>;
    /// At start-up: every running job becomes failed / `server_restarted`, its pending
    /// members skipped and its running ones failed, with that reason (a running member
    /// whose session is stored ended takes that end). On a store shared by several
    /// nodes, only the jobs this node ran. Returns how many jobs were running.
    async fn interrupt_jobs(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Deletes ended jobs (and their members) finished before `finished_before`.
    async fn purge_jobs(&self, finished_before: DateTime<Utc>) -> Result<u64, StoreError>;
}
