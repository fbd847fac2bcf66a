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
//!
//! Cluster mode: jobs are stored in Redis beside the sessions (any node lists and reads
//! any job); the selector picks from the whole fleet's presence; the node that received
//! the `POST` runs the job, opening a remote member's session on its device's node
//! through that node's inbox ([`Cluster::open_located`], the session carrying the
//! `job_id`) and learning its end from the shared session store on the flush tick (one
//! batched read per tick). A cancel on another node is routed to the job's node.

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

use crate::cluster::{CancelReply, Cluster, NodeRefusal};
use crate::registry::Registry;
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
    /// Cluster mode: the node running the job did not answer.
    #[error("the job's node did not answer")]
    NodeUnavailable,
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
    /// Cluster mode: the fleet across nodes.
    cluster: Option<Arc<Cluster>>,
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
    /// Jobs over `sessions`, finding devices in `registry` (and in cluster mode in
    /// `cluster`'s presence), stored in `store` (`None`: jobs are refused as unavailable).
    pub fn new(
        sessions: Arc<SessionManager>,
        registry: Arc<Registry>,
        store: Option<Arc<dyn JobStore>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sessions,
            registry,
            store,
            cluster,
            live: IdDashMap::default(),
            shutdown: CancellationToken::new(),
        })
    }

    fn store(&self) -> Result<&Arc<dyn JobStore>, JobError> {
        self.store.as_ref().ok_or(JobError::Unavailable)
    }

    /// The client ids of the connected devices `selector` picks, in order: this
    /// server's, or in cluster mode the whole fleet's (from presence).
    pub async fn select(&self, selector: &Selector) -> Result<Vec<String>, JobError> {
        let mut ids: Vec<String> = match &self.cluster {
            Some(cluster) => cluster
                .fleet()
                .await?
                .into_iter()
                .filter(|c| selector.matches_presence(c))
                .filter_map(|c| c["client_id"].as_str().map(str::to_owned))
                .collect(),
            None => self
                .registry
                .list()
                .into_iter()
                .filter(|e| selector.matches(e))
                .map(|e| e.client_id.clone())
                .collect(),
        };
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Creates a job over the devices `spec` selects (stored before it returns) and
    /// starts its rollout. Returns its id.
    pub async fn create(self: &Arc<Self>, spec: JobSpec) -> Result<Arc<str>, JobError> {
        let store = Arc::clone(self.store()?);
        if self.shutdown.is_cancelled() {
            return Err(JobError::ShuttingDown);
        }
        let devices = self.select(&spec.selector).await?;
        if devices.is_empty() {
            return Err(JobError::NoMatch(spec.selector.to_string()));
        }
        let members: Vec<MemberRecord> = devices
            .into_iter()
            .enumerate()
            .map(|(i, client_id)| {
                MemberRecord::pending(u32::try_from(i).unwrap_or(u32::MAX), client_id)
            })
            .collect();
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
            cluster: self.cluster.clone(),
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
    /// In cluster mode a job another node runs is cancelled by that node.
    pub async fn cancel(&self, job_id: &str) -> Result<(), JobError> {
        let store = self.store()?;
        let Some(job) = self.live.get(job_id).map(|j| Arc::clone(&j)) else {
            return match store.get_job(job_id).await? {
                Some((j, _)) if j.state == JobState::Running => self.cancel_elsewhere(job_id).await,
                Some(_) => Err(JobError::AlreadyFinished),
                None => Err(JobError::NotFound),
            };
        };
        self.cancel_live(&job).await
    }

    /// Cluster mode: cancels a running job this node does not run, through its node.
    async fn cancel_elsewhere(&self, job_id: &str) -> Result<(), JobError> {
        let Some(cluster) = &self.cluster else {
            return Err(JobError::AlreadyFinished);
        };
        let runner = cluster.store().job_runner(job_id).await?;
        let Some(node) = runner.filter(|n| n != cluster.node()) else {
            // Ended meanwhile (or a leftover of this node's earlier run, ended at start).
            return Err(JobError::AlreadyFinished);
        };
        match cluster.cancel_job_remote(&node, job_id).await? {
            Some(CancelReply::Ok) => {
                tracing::info!(job_id, node = %node, "job cancelled over HTTP on its node");
                Ok(())
            }
            Some(CancelReply::Refused(NodeRefusal::JobAlreadyFinished)) => {
                Err(JobError::AlreadyFinished)
            }
            Some(CancelReply::Refused(r)) if r.status() == 404 => Err(JobError::NotFound),
            Some(_) | None => Err(JobError::NodeUnavailable),
        }
    }

    /// Another node's request to cancel job `job_id`, which this node runs.
    pub async fn cancel_here(&self, job_id: &str) -> CancelReply {
        let Some(job) = self.live.get(job_id).map(|j| Arc::clone(&j)) else {
            return CancelReply::Refused(NodeRefusal::JobAlreadyFinished);
        };
        match self.cancel_live(&job).await {
            Ok(()) => CancelReply::Ok,
            Err(_) => CancelReply::Refused(NodeRefusal::JobAlreadyFinished),
        }
    }

    /// Cancels live job `job` and waits (at most 10 s) for its end.
    async fn cancel_live(&self, job: &LiveJob) -> Result<(), JobError> {
        let job_id = &*job.id;
        if job.progress.lock().state != JobState::Running {
            return Err(JobError::AlreadyFinished);
        }
        job.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), job.done.cancelled()).await;
        tracing::info!(job_id = %job_id, "job cancelled over HTTP");
        Ok(())
    }

    /// Cluster mode: this node was declared lost, and its jobs ended by another node:
    /// each running job stops (its members' sessions cancelled; its writes are refused).
    pub fn fenced(&self) {
        for j in self.live.iter() {
            j.cancel.cancel();
        }
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
