//! The one task that drives a job's rollout: it starts members in order, at most
//! `batch` at a time, and is woken by the end of each member's session (its handle's
//! end, awaited in one `FuturesUnordered`), by the job's cancellation or shutdown, and
//! by a flush tick that writes the changed members to the store.
//!
//! No task per member: a waiting member is a row in [`Progress`]; a running one is one
//! future in the set. Sessions are opened through [`SessionManager::open`] like any HTTP
//! dispatch, so results, cancellation and durability are those of every session.
//!
//! Cluster mode: a member whose device is connected to another node is opened there
//! ([`Cluster::open_located`], as an HTTP dispatch to it is) and kept as a
//! [`RemoteMember`], a row with no future: its session's end is read on the flush tick
//! from the shared store, for every remote member in one read (`HMGET` of the live
//! index, then `MGET` of the ended records). Polling, rather than an end message
//! through the inbox, because the store is where every end is written anyway, the
//! node-lost failure included (written by whichever node reaps the lost one): nothing
//! new has to be delivered reliably, and a message lost with a node cannot leave a
//! member running forever. It costs at most one tick (250 ms) of latency per end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::errors::{http as detail, job as text};
use chrono::Utc;
use futures_util::future::{join_all, BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::outcome::Outcome;
use super::spec::JobSpec;
use super::LiveJob;
use crate::cluster::{Cluster, NodeRefusal, OpenReply, RemoteCancel, RemoteOpen};
use crate::registry::Registry;
use crate::session::{CancelReason, CreateError, OpenRequest, SessionHandle, SessionManager};
use crate::storage::{JobReason, JobState, JobStore, MemberState};

/// How often changed members are written while the job runs.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Wait before trying again when the server has no room for another session.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Most sessions opened together (their store writes share a commit).
const OPEN_AT_ONCE: usize = 256;

/// A running member's session, resolved when it ends (its job's `timeout` cancels it
/// as failed / `timeout`): `(seq, handle)`.
type Running = BoxFuture<'static, (u32, Arc<SessionHandle>)>;

/// A running member whose session runs on another node.
struct RemoteMember {
    seq: u32,
    session_id: String,
    started: tokio::time::Instant,
    /// Its job's `timeout` passed and its cancel was sent.
    timed_out: bool,
}

/// What starting one member did.
enum Started {
    Running(Running),
    /// Opened on another node: this session id.
    Remote(String),
    /// Not started, with this state, reason and text.
    Not(MemberState, JobReason, String),
    /// No room for another session now: try it again later.
    Later,
}

/// Everything the rollout uses.
pub(super) struct Runner {
    pub(super) job: Arc<LiveJob>,
    pub(super) spec: JobSpec,
    pub(super) sessions: Arc<SessionManager>,
    pub(super) registry: Arc<Registry>,
    /// Cluster mode: devices on other nodes.
    pub(super) cluster: Option<Arc<Cluster>>,
    pub(super) store: Arc<dyn JobStore>,
    pub(super) shutdown: tokio_util::sync::CancellationToken,
}

impl Runner {
    /// Runs the rollout to its end, then writes the job's final state.
    pub(super) async fn run(self) {
        let total = self.job.progress.lock().members.len();
        let batch = self.spec.batch.size(total);
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        let mut remote: Vec<RemoteMember> = Vec::new();
        // Members to start: those that found no room last time, then `next..total`.
        let mut retry: VecDeque<usize> = VecDeque::new();
        let mut next = 0usize;
        let mut stop: Option<JobReason> = None;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        loop {
            let mut blocked = false;
            if stop.is_none() {
                // A shutdown (or cancel) may have ended a member before the wait below saw
                // it: no member is started after it.
                stop = self.stopped();
            }
            if stop.is_none() {
                let busy = running.len() + remote.len();
                let room = batch.saturating_sub(busy).min(OPEN_AT_ONCE);
                let mut picks = Vec::with_capacity(room);
                while picks.len() < room {
                    match retry.pop_front() {
                        Some(i) => picks.push(i),
                        None if next < total => {
                            picks.push(next);
                            next += 1;
                        }
                        None => break,
                    }
                }
                // Opened together: their records are committed in one batch of the store.
                let started = join_all(picks.iter().map(|&i| self.start(i))).await;
                for (i, outcome) in picks.into_iter().zip(started) {
                    match outcome {
                        Started::Running(f) => running.push(f),
                        Started::Remote(session_id) => remote.push(RemoteMember {
                            seq: u32::try_from(i).unwrap_or(u32::MAX),
                            session_id,
                            started: tokio::time::Instant::now(),
                            timed_out: false,
                        }),
                        Started::Not(state, reason, why) => self.not_started(i, state, reason, why),
                        Started::Later => {
                            retry.push_back(i);
                            blocked = true;
                        }
                    }
                }
            }
            let nothing_left = retry.is_empty() && next >= total;
            if running.is_empty() && remote.is_empty() && (nothing_left || stop.is_some()) {
                break;
            }
            tokio::select! {
                Some((seq, handle)) = running.next() => {
                    self.ended(seq, &handle).await;
                    // Every other end already in: their places are refilled together.
                    while let Some(Some((seq, handle))) = running.next().now_or_never() {
                        self.ended(seq, &handle).await;
                    }
                    if stop.is_none() && self.max_failures_reached() {
                        stop = Some(JobReason::MaxFailures);
                    }
                }
                _ = self.job.cancel.cancelled(), if stop.is_none() => stop = self.stopped(),
                _ = self.shutdown.cancelled(), if stop.is_none() => stop = self.stopped(),
                _ = tokio::time::sleep(RETRY_AFTER), if blocked => {}
                _ = flush.tick() => {
                    if !remote.is_empty() {
                        self.poll_remote(&mut remote).await;
                        if stop.is_none() && self.max_failures_reached() {
                            stop = Some(JobReason::MaxFailures);
                        }
                    }
                    self.flush().await;
                }
            }
        }
        self.finish(stop).await;
    }

    /// Why the rollout stops now, the job cancelled or the server shutting down (its
    /// running members are then cancelled); `None`: neither.
    fn stopped(&self) -> Option<JobReason> {
        let (reason, why) = if self.shutdown.is_cancelled() {
            (JobReason::Shutdown, CancelReason::Shutdown)
        } else if self.job.cancel.is_cancelled() {
            (JobReason::Cancelled, CancelReason::Job)
        } else {
            return None;
        };
        self.cancel_running(why);
        Some(reason)
    }

    /// Opens member `seq`'s session, unless its device is gone.
    async fn start(&self, seq: usize) -> Started {
        let client_id = {
            let p = self.job.progress.lock();
            match p.members.get(seq) {
                Some(m) => m.client_id.clone(),
                None => return Started::Later,
            }
        };
        let Some(device) = self.registry.device(&client_id) else {
            if let Some(cluster) = &self.cluster {
                return self.start_remote(cluster, seq, &client_id).await;
            }
            let why = text::DEVICE_OFFLINE.to_owned();
            return Started::Not(MemberState::Skipped, JobReason::DeviceOffline, why);
        };
        if device.conn.is_busy() {
            let why = text::not_started(detail::DEVICE_BUSY);
            return Started::Not(MemberState::Failed, JobReason::NotStarted, why);
        }
        let m = self.member_session();
        let open = self.sessions.open(OpenRequest {
            session_id: m.session_id,
            generated_id: m.generated_id,
            task_name: m.task_name,
            request: m.request,
            requester: None,
            executor: device,
            commands: m.commands,
            job_id: m.job_id,
        });
        let handle = match open.await {
            Ok(h) => h,
            Err(CreateError::TooMany) => return Started::Later,
            Err(CreateError::ExecutorGone) => {
                let why = text::DEVICE_OFFLINE.to_owned();
                return Started::Not(MemberState::Skipped, JobReason::DeviceOffline, why);
            }
            Err(e) => {
                let why = text::not_started(&e.to_string());
                return Started::Not(MemberState::Failed, JobReason::NotStarted, why);
            }
        };
        let seq = self.started(seq, handle.session_id.to_string());
        let timeout = self.spec.timeout;
        Started::Running(Box::pin(async move {
            let timed_out = match timeout {
                Some(t) => tokio::time::timeout(t, handle.finished()).await.is_err(),
                None => {
                    handle.finished().await;
                    false
                }
            };
            if let (true, Some(limit)) = (timed_out, timeout) {
                handle.cancel(CancelReason::JobTimeout(limit));
                handle.finished().await;
            }
            (seq, handle)
        }))
    }

    /// Cluster mode: opens member `seq`'s session on the node its device `client_id` is
    /// connected to, wherever that is now.
    async fn start_remote(&self, cluster: &Cluster, seq: usize, client_id: &str) -> Started {
        let open = self.member_session();
        let session_id = open.session_id.clone();
        let offline = || {
            let why = text::DEVICE_OFFLINE.to_owned();
            Started::Not(MemberState::Skipped, JobReason::DeviceOffline, why)
        };
        let failed = |d: &str| {
            Started::Not(
                MemberState::Failed,
                JobReason::NotStarted,
                text::not_started(d),
            )
        };
        let outcome = match cluster.open_located(client_id, open).await {
            Ok(Some((device, _))) if !device.is_device => return offline(),
            Ok(Some((_, outcome))) => outcome,
            Ok(None) => return offline(),
            Err(e) => {
                tracing::warn!(job_id = %self.job.id, client_id, cause = %e, "could not open a member's session on another node");
                return failed(detail::STORAGE_UNAVAILABLE);
            }
        };
        match outcome {
            Some(OpenReply::Ok) => {}
            Some(OpenReply::Busy) => return failed(detail::DEVICE_BUSY),
            Some(OpenReply::Refused(NodeRefusal::NotOnline)) => return offline(),
            Some(OpenReply::Refused(NodeRefusal::TooManySessions)) => return Started::Later,
            Some(OpenReply::Refused(r)) => return failed(&r.detail()),
            None => return failed(detail::NODE_UNAVAILABLE),
        }
        self.started(seq, session_id.clone());
        Started::Remote(session_id)
    }

    /// The session a member gets, wherever its device is: a new id, the job's request or
    /// plan, its task name (the job id by default) and `job_id`.
    fn member_session(&self) -> RemoteOpen {
        RemoteOpen {
            session_id: uuid::Uuid::new_v4().to_string(),
            generated_id: true,
            task_name: self
                .spec
                .task_name
                .clone()
                .unwrap_or_else(|| self.job.id.to_string()),
            request: self.spec.request.clone(),
            commands: self.spec.commands.clone(),
            job_id: Some(self.job.id.to_string()),
        }
    }

    /// Member `seq` is running session `session_id`; returns `seq` as stored.
    fn started(&self, seq: usize, session_id: String) -> u32 {
        let seq = u32::try_from(seq).unwrap_or(u32::MAX);
        self.job.progress.lock().set(seq, |m| {
            m.state = MemberState::Running;
            m.session_id = Some(session_id);
            m.started_at = Some(Utc::now());
        });
        seq
    }

    /// Cluster mode: records the ends of the remote members' sessions, read from the
    /// shared store in one batch, and cancels those past the job's `timeout`.
    async fn poll_remote(&self, remote: &mut Vec<RemoteMember>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let store = cluster.store();
        let ids: Vec<String> = remote.iter().map(|r| r.session_id.clone()).collect();
        let owners = match store.live_owners(&ids).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(job_id = %self.job.id, cause = %e, "could not read the remote members' sessions; retrying");
                return;
            }
        };
        let ended: Vec<usize> = (0..ids.len()).filter(|&i| owners[i].is_none()).collect();
        let ended_ids: Vec<String> = ended.iter().map(|&i| ids[i].clone()).collect();
        let records = match store.records(&ended_ids).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job_id = %self.job.id, cause = %e, "could not read the remote members' results; retrying");
                return;
            }
        };
        let mut done = vec![false; remote.len()];
        for (&i, record) in ended.iter().zip(records) {
            let outcome = match record {
                Some(r) if r.state.is_terminal() => Outcome::of(&r),
                // Stored live but no longer indexed live: its final write is on its way.
                Some(_) => continue,
                None => Outcome::missing(),
            };
            self.record_outcome(remote[i].seq, outcome);
            done[i] = true;
        }
        let mut i = 0;
        remote.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        self.time_out_remote(cluster, remote);
    }

    /// Cancels the remote members whose session has run past the job's `timeout`.
    fn time_out_remote(&self, cluster: &Arc<Cluster>, remote: &mut [RemoteMember]) {
        let Some(limit) = self.spec.timeout else {
            return;
        };
        let late: Vec<String> = remote
            .iter_mut()
            .filter(|r| !r.timed_out && r.started.elapsed() >= limit)
            .map(|r| {
                r.timed_out = true;
                r.session_id.clone()
            })
            .collect();
        if !late.is_empty() {
            let why = RemoteCancel::JobTimeout {
                secs: limit.as_secs_f64(),
            };
            cluster.cancel_sessions(None, late, why);
        }
    }

    /// Records a member that was not started.
    fn not_started(&self, seq: usize, state: MemberState, reason: JobReason, why: String) {
        let seq = u32::try_from(seq).unwrap_or(u32::MAX);
        self.job.progress.lock().set(seq, |m| {
            m.state = state;
            m.reason = Some(reason);
            m.output = Some(why);
            m.finished_at = Some(Utc::now());
        });
    }

    /// Records the end of member `seq`'s session from its final record.
    async fn ended(&self, seq: u32, handle: &SessionHandle) {
        let record = self.sessions.record(&handle.session_id).await;
        let outcome = match record {
            Ok(Some(r)) => Outcome::of(&r),
            _ => Outcome::missing(),
        };
        self.record_outcome(seq, outcome);
    }

    /// Records member `seq`'s end.
    fn record_outcome(&self, seq: u32, outcome: Outcome) {
        self.job.progress.lock().set(seq, |m| {
            m.state = outcome.state;
            m.reason = outcome.reason;
            m.exit_code = outcome.exit_code;
            m.output = outcome.output;
            m.finished_at = Some(Utc::now());
        });
    }

    fn max_failures_reached(&self) -> bool {
        let failures = self.job.progress.lock().failures();
        self.spec.max_failures.is_some_and(|max| failures >= max)
    }

    /// Cancels the sessions of the running members (their ends arrive as usual), on
    /// other nodes through theirs.
    fn cancel_running(&self, reason: CancelReason) {
        let ids: Vec<String> = {
            let p = self.job.progress.lock();
            p.members
                .iter()
                .filter(|m| m.state == MemberState::Running)
                .filter_map(|m| m.session_id.clone())
                .collect()
        };
        let mut elsewhere = Vec::new();
        for id in ids {
            match self.sessions.get(&id) {
                Some(h) => h.cancel(reason),
                None => elsewhere.push(id),
            }
        }
        if let (Some(cluster), Some(why)) = (&self.cluster, RemoteCancel::of(reason)) {
            if !elsewhere.is_empty() {
                cluster.cancel_sessions(None, elsewhere, why);
            }
        }
    }

    /// Writes the members changed since the last flush; a refused write is retried at
    /// the next one (the changes stay in memory, newest state wins).
    async fn flush(&self) {
        let Some((job, changed)) = self.job.progress.lock().take_changed() else {
            return;
        };
        if let Err(e) = self.store.update_job(job, changed.clone()).await {
            tracing::error!(job_id = %self.job.id, cause = %e, "could not store a job's progress");
            let mut p = self.job.progress.lock();
            for m in changed {
                let seq = m.seq;
                p.set(seq, |_| {});
            }
        }
    }

    /// Skips the members never started, ends the job and writes it.
    async fn finish(&self, stop: Option<JobReason>) {
        {
            let mut p = self.job.progress.lock();
            if let Some(reason) = stop {
                let why = match reason {
                    JobReason::Cancelled => text::CANCELLED,
                    JobReason::Shutdown => text::SHUTDOWN,
                    _ => text::MAX_FAILURES,
                };
                let waiting: Vec<u32> = p
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Pending)
                    .map(|m| m.seq)
                    .collect();
                for seq in waiting {
                    p.set(seq, |m| {
                        m.state = MemberState::Skipped;
                        m.reason = Some(reason);
                        m.output = Some(why.to_owned());
                    });
                }
            }
            let all_done = p.count(MemberState::Completed) as usize == p.members.len();
            let state = match stop {
                Some(JobReason::Cancelled) => JobState::Cancelled,
                _ if all_done => JobState::Completed,
                _ => JobState::Failed,
            };
            p.end(state, stop);
        }
        self.flush().await;
        tracing::info!(job_id = %self.job.id, "job ended");
        self.job.done.cancel();
    }
}
