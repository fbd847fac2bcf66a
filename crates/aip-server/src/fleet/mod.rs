//! Fleet jobs: one request to many devices picked by a [`Selector`], rolled out in
//! batches with a failure budget (issue 19).
//!
//! A job is one ordinary session per matched device, opened through
//! [`SessionManager::open`] and carrying the `job_id`; what a job adds is the rollout
//! (`runner.rs`: one task per job, woken by its members' session ends), the aggregate
//! (`progress.rs`: counts by state kept in O(1) per change) and its record
//! ([`JobStore`], written in batches of changed members). Files: `selector.rs` (which
//! devices), `spec.rs` (the validated request), `outcome.rs` (what a member keeps of its
//! session), this file (the [`JobManager`]: live jobs, create, read, cancel).
//!
//! Dependencies point one way: `web` → `fleet` → `session` → {`registry`, `storage`}.
//! Cluster mode: a job drives the devices connected to this node only; with a shared
//! store the job store must be implemented by that backend too (until then
//! [`JobManager::new`] takes `None` and job routes answer 503).

mod outcome;
mod progress;
mod runner;
pub mod selector;
pub mod spec;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use selector::Selector;
pub use spec::{Batch, JobSpec};

use crate::registry::{ClientEntry, Registry};
use crate::session::SessionManager;
use crate::storage::{JobRecord, JobState, JobStore, MemberRecord, MemberState, StoreError};
use crate::IdDashMap;
use progress::Progress;

/// Why a job request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// This server's store keeps no jobs.
    #[error("jobs are not available")]
    Unavailable,
    /// No connected device matches; the selector in its query form.
    #[error("no device matches {0}")]
    NoMatch(String),
    #[error("job not found")]
    NotFound,
    #[error("job already finished")]
    AlreadyFinished,
    #[error("shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job whose rollout is running.
pub struct LiveJob {
    pub id: Arc<str>,
    pub(crate) progress: Mutex<Progress>,
    /// `DELETE /api/jobs/{id}`.
    cancel: CancellationToken,
    /// Set once its final state is written.
    done: CancellationToken,
}

/// Live jobs, and what their runners use.
pub struct JobManager {
    sessions: Arc<SessionManager>,
    registry: Arc<Registry>,
    store: Option<Arc<dyn JobStore>>,
    live: IdDashMap<Arc<str>, Arc<LiveJob>>,
    shutdown: CancellationToken,
}

/// Which members a read of a job lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    All,
    None,
    In(MemberState),
}

impl JobManager {
    /// Jobs over `sessions`, finding devices in `registry`, stored in `store` (`None`:
    /// jobs are refused as unavailable).
    pub fn new(
        sessions: Arc<SessionManager>,
        registry: Arc<Registry>,
        store: Option<Arc<dyn JobStore>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sessions,
            registry,
            store,
            live: IdDashMap::default(),
            shutdown: CancellationToken::new(),
        })
    }

    fn store(&self) -> Result<&Arc<dyn JobStore>, JobError> {
        self.store.as_ref().ok_or(JobError::Unavailable)
    }

    /// The connected devices `selector` picks, by client id.
    pub fn select(&self, selector: &Selector) -> Vec<Arc<ClientEntry>> {
        let mut devices: Vec<_> = self
            .registry
            .list()
            .into_iter()
            .filter(|e| selector.matches(e))
            .collect();
        devices.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        devices
    }

    /// Creates a job over the devices `spec` selects (stored before it returns) and
    /// starts its rollout. Returns its id.
    pub async fn create(self: &Arc<Self>, spec: JobSpec) -> Result<Arc<str>, JobError> {
        let store = Arc::clone(self.store()?);
        if self.shutdown.is_cancelled() {
            return Err(JobError::ShuttingDown);
        }
        let devices = self.select(&spec.selector);
        if devices.is_empty() {
            return Err(JobError::NoMatch(spec.selector.to_string()));
        }
        let members: Vec<MemberRecord> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| MemberRecord {
                seq: u32::try_from(i).unwrap_or(u32::MAX),
                client_id: d.client_id.clone(),
                state: MemberState::Pending,
                reason: None,
                session_id: None,
                exit_code: None,
                output: None,
                started_at: None,
                finished_at: None,
            })
            .collect();
        drop(devices);
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let progress = Progress::new(id.to_string(), spec.to_json(), Utc::now(), members);
        store
            .create_job(progress.record(), progress.members.clone())
            .await?;
        let job = Arc::new(LiveJob {
            id: Arc::clone(&id),
            progress: Mutex::new(progress),
            cancel: CancellationToken::new(),
            done: CancellationToken::new(),
        });
        self.live.insert(Arc::clone(&id), Arc::clone(&job));
        tracing::info!(job_id = %id, members = job.progress.lock().members.len(), "job created");
        let runner = runner::Runner {
            job,
            spec,
            sessions: Arc::clone(&self.sessions),
            registry: Arc::clone(&self.registry),
            store,
            shutdown: self.shutdown.child_token(),
        };
        let manager = Arc::clone(self);
        let job_id = Arc::clone(&id);
        tokio::spawn(async move {
            runner.run().await;
            manager.live.remove(&job_id);
        });
        Ok(id)
    }

    /// The job `job_id` and the members `members` asks for: live from memory, else stored.
    pub async fn get(
        &self,
        job_id: &str,
        members: Members,
    ) -> Result<(JobRecord, Vec<MemberRecord>), JobError> {
        let store = self.store()?;
        if let Some(job) = self.live.get(job_id).map(|j| Arc::clone(&j)) {
            let p = job.progress.lock();
            let listed = p
                .members
                .iter()
                .filter(|m| match members {
                    Members::All => true,
                    Members::None => false,
                    Members::In(s) => m.state == s,
                })
                .cloned()
                .collect();
            return Ok((p.record(), listed));
        }
        let (job, mut all) = store.get_job(job_id).await?.ok_or(JobError::NotFound)?;
        match members {
            Members::All => {}
            Members::None => all.clear(),
            Members::In(s) => all.retain(|m| m.state == s),
        }
        Ok((job, all))
    }

    /// At most `limit` jobs, newest first (live ones as they are now).
    pub async fn list(&self, limit: usize) -> Result<Vec<JobRecord>, JobError> {
        let mut jobs = self.store()?.list_jobs(limit).await?;
        for j in &mut jobs {
            if let Some(live) = self.live.get(j.job_id.as_str()) {
                *j = live.progress.lock().record();
            }
        }
        Ok(jobs)
    }

    /// Cancels what of the job has not finished, and waits (at most 10 s) for its end.
    pub async fn cancel(&self, job_id: &str) -> Result<(), JobError> {
        let store = self.store()?;
        let Some(job) = self.live.get(job_id).map(|j| Arc::clone(&j)) else {
            return match store.get_job(job_id).await? {
                Some(_) => Err(JobError::AlreadyFinished),
                None => Err(JobError::NotFound),
            };
        };
        if job.progress.lock().state != JobState::Running {
            return Err(JobError::AlreadyFinished);
        }
        job.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), job.done.cancelled()).await;
        tracing::info!(job_id = %job_id, "job cancelled over HTTP");
        Ok(())
    }

    /// Deletes the ended jobs finished before `cutoff` (`--retention`); how many.
    pub async fn purge(&self, cutoff: chrono::DateTime<Utc>) -> Result<u64, JobError> {
        Ok(self.store()?.purge_jobs(cutoff).await?)
    }

    /// Graceful shutdown: no new job; running ones stop starting members, and end once
    /// their running sessions have (waits at most `limit`).
    pub async fn shutdown(&self, limit: Duration) {
        self.shutdown.cancel();
        let jobs: Vec<_> = self.live.iter().map(|j| Arc::clone(j.value())).collect();
        let _ = tokio::time::timeout(limit, async {
            for j in jobs {
                j.done.cancelled().await;
            }
        })
        .await;
    }
}
