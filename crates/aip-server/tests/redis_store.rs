//! The session store of cluster mode against a real `redis-server` (started here on a
//! free port): the trait's operations, purge, and the fencing of a node declared lost;
//! and the job store's contract (as the SQLite store's tests state it).

#![allow(clippy::unwrap_used)]

use aip_server::storage::redis::{RedisStore, RedisTarget};
use aip_server::storage::{
    EndReason, JobReason, JobRecord, JobState, JobStore, MemberRecord, MemberState, Origin,
    Refusal, SessionFilter, SessionRecord, SessionState, SessionStore,
};
use aip_testkit::redis::RedisServer;
use chrono::{DateTime, Utc};
use serde_json::json;

fn t(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap()
}

fn rec(id: &str, task: &str, state: SessionState, created: i64) -> SessionRecord {
    SessionRecord {
        session_id: id.into(),
        task_name: task.into(),
        request: format!("request {id}"),
        origin: Origin::Constellation,
        requester: Some("k".into()),
        executor: "dev".into(),
        platform: "linux".into(),
        state,
        reason: None,
        error: None,
        result: None,
        created_at: t(created),
        started_at: None,
        finished_at: state.is_terminal().then(|| t(created + 10)),
        echo_received: false,
        job_id: Some(format!("job-{id}")),
    }
}

async fn store(redis: &RedisServer, node: &str) -> RedisStore {
    let target = RedisTarget::resolve(&redis.url()).await.unwrap();
    RedisStore::new(target.connect().await.unwrap(), node.into())
}

fn ids(list: Vec<SessionRecord>) -> Vec<String> {
    list.into_iter().map(|r| r.session_id).collect()
}

#[tokio::test]
async fn records_round_trip_list_newest_first_and_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(tmp.path());
    let s = store(&redis, "n1").await;
    let mut full = rec("s1", "disk", SessionState::Completed, 1_700_000_000_000_001);
    full.reason = Some(EndReason::Timeout);
    full.error = Some("late".into());
    full.result = Some(Box::new(json!({"rounds": [{"x": 1}]})));
    full.started_at = Some(t(1_700_000_000_000_005));
    full.echo_received = true;
    s.upsert(full.clone()).await.unwrap();
    assert_eq!(*s.get("s1").await.unwrap().unwrap(), full);
    assert!(s.get("nope").await.unwrap().is_none());

    let mut other = rec("s2", "disk", SessionState::Running, 1_700_000_000_000_100);
    other.executor = "dev2".into();
    other.requester = None;
    s.upsert(other).await.unwrap();
    s.upsert(rec(
        "s3",
        "cpu",
        SessionState::Failed,
        1_700_000_000_000_050,
    ))
    .await
    .unwrap();

    let all = s
        .list(&SessionFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(all), ["s2", "s3", "s1"]);
    let by_client = SessionFilter {
        client_id: Some("dev2".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(s.list(&by_client).await.unwrap()), ["s2"]);
    let by_state = SessionFilter {
        state: Some(SessionState::Completed),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(s.list(&by_state).await.unwrap()), ["s1"]);
    let limited = SessionFilter {
        limit: 1,
        ..Default::default()
    };
    assert_eq!(ids(s.list(&limited).await.unwrap()), ["s2"]);
    assert_eq!(
        s.latest_by_task_name("disk")
            .await
            .unwrap()
            .unwrap()
            .session_id,
        "s2"
    );

    // A record whose executor changes leaves the old client's index.
    let mut moved = rec("s2", "disk", SessionState::Completed, 1_700_000_000_000_100);
    moved.executor = "dev3".into();
    s.upsert(moved).await.unwrap();
    assert!(s.list(&by_client).await.unwrap().is_empty());

    s.delete("s2").await.unwrap();
    assert!(s.get("s2").await.unwrap().is_none());
    assert_eq!(
        s.latest_by_task_name("disk")
            .await
            .unwrap()
            .unwrap()
            .session_id,
        "s1"
    );
    assert_eq!(
        ids(s.list(&SessionFilter::default()).await.unwrap()),
        ["s3", "s1"]
    );
    s.probe_write().await.unwrap();
}

#[tokio::test]
async fn purge_by_age_and_count_never_touches_live_records() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(tmp.path());
    let s = store(&redis, "n1").await;
    for i in 1..=10 {
        let mut r = rec(&format!("e{i}"), "t", SessionState::Completed, i);
        r.finished_at = Some(t(i * 10));
        s.upsert(r).await.unwrap();
    }
    s.upsert(rec("live1", "t", SessionState::Running, 0))
        .await
        .unwrap();
    assert_eq!(s.purge(t(35), 1000).await.unwrap(), 3);
    assert!(s.get("e3").await.unwrap().is_none());
    assert!(s.get("e4").await.unwrap().is_some());
    assert_eq!(s.purge(t(0), 4).await.unwrap(), 3);
    let mut left = ids(s.list(&SessionFilter::default()).await.unwrap());
    left.sort();
    assert_eq!(left, ["e10", "e7", "e8", "e9", "live1"]);
}

#[tokio::test]
async fn a_lost_node_s_live_sessions_fail_and_its_later_writes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(tmp.path());
    let lost = store(&redis, "lost").await;
    let other = store(&redis, "other").await;
    lost.upsert(rec("l1", "t", SessionState::Running, 1))
        .await
        .unwrap();
    lost.upsert(rec("l2", "t", SessionState::Completed, 2))
        .await
        .unwrap();
    other
        .upsert(rec("o1", "t", SessionState::Running, 3))
        .await
        .unwrap();
    assert_eq!(other.owner("l1").await.unwrap().as_deref(), Some("lost"));

    let failed = other
        .fail_live_of("lost", EndReason::NodeLost, "gone", Utc::now())
        .await
        .unwrap();
    assert_eq!(ids(failed), ["l1"]);
    let l1 = other.get("l1").await.unwrap().unwrap();
    assert_eq!(
        (l1.state, l1.reason),
        (SessionState::Failed, Some(EndReason::NodeLost))
    );
    assert_eq!(
        other.get("l2").await.unwrap().unwrap().state,
        SessionState::Completed
    );
    assert_eq!(
        other.get("o1").await.unwrap().unwrap().state,
        SessionState::Running
    );
    assert!(other.owner("l1").await.unwrap().is_none());

    // The lost node, back, reports the session completed: refused, not written.
    let refused = lost
        .upsert(rec("l1", "t", SessionState::Completed, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.refusal(), Some(Refusal::Ended), "{refused}");
    assert_eq!(
        other.get("l1").await.unwrap().unwrap().reason,
        Some(EndReason::NodeLost)
    );

    // At its restart a node fails only its own live sessions.
    assert_eq!(other.mark_interrupted(Utc::now()).await.unwrap(), 1);
    let o1 = lost.get("o1").await.unwrap().unwrap();
    assert_eq!(o1.reason, Some(EndReason::ServerRestarted));
}

/// An ended session is final whoever writes: no node's write changes it (a late end, a
/// late live state, a stale node's retry), enforced inside the store's atomic write; only
/// a new run of its id replaces it (protocol.md §4.5).
#[tokio::test]
async fn an_ended_session_is_final_for_every_node() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(tmp.path());
    let a = store(&redis, "a").await;
    let b = store(&redis, "b").await;
    let mut done = rec("s", "t", SessionState::Completed, 1);
    done.result = Some(Box::new(json!({"stdout": "token-1"})));
    a.upsert(rec("s", "t", SessionState::Running, 1))
        .await
        .unwrap();
    a.upsert(done.clone()).await.unwrap();
    for late in [
        rec("s", "t", SessionState::Failed, 1),
        rec("s", "t", SessionState::Running, 1),
        rec("s", "t", SessionState::Cancelled, 1),
    ] {
        for node in [&a, &b] {
            let e = node.upsert(late.clone()).await.unwrap_err();
            assert_eq!(e.refusal(), Some(Refusal::Ended), "{e}");
        }
    }
    let failed = b
        .fail_live_of("a", EndReason::NodeLost, "gone", Utc::now())
        .await
        .unwrap();
    assert!(failed.is_empty());
    assert_eq!(*b.get("s").await.unwrap().unwrap(), done);
    assert!(b.owner("s").await.unwrap().is_none());

    // A new run of the id replaces it.
    let again = rec("s", "t", SessionState::Running, 5);
    b.insert_new(again.clone()).await.unwrap();
    assert_eq!(*a.get("s").await.unwrap().unwrap(), again);
    assert_eq!(a.owner("s").await.unwrap().as_deref(), Some("b"));
}

/// A fenced node's writes are refused by the store while the cluster has it marked lost,
/// so are an earlier incarnation's, and an id the asking node voided is never stored by a
/// late open.
#[tokio::test]
async fn a_fenced_node_s_writes_and_a_voided_id_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(tmp.path());
    let a = store(&redis, "a").await;
    let b = store(&redis, "b").await;
    redis.cli(&["SET", "{aip}:lost:a", "b"]);
    let e = a
        .upsert(rec("x", "t", SessionState::Running, 1))
        .await
        .unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::Fenced), "{e}");
    assert!(b.get("x").await.unwrap().is_none());

    // An earlier incarnation of a node (a process replaced under the same id) is fenced
    // by the store too.
    let old = store(&redis, "c").await;
    let new = store(&redis, "c").await;
    assert_eq!(old.new_incarnation().await.unwrap(), 1);
    old.upsert(rec("c1", "t", SessionState::Running, 1))
        .await
        .unwrap();
    assert_eq!(new.new_incarnation().await.unwrap(), 2);
    let e = old
        .upsert(rec("c1", "t", SessionState::Completed, 1))
        .await
        .unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::Fenced), "{e}");
    new.upsert(rec("c2", "t", SessionState::Running, 2))
        .await
        .unwrap();
    assert_eq!(
        b.get("c1").await.unwrap().unwrap().state,
        SessionState::Running
    );

    // Voided before it was stored: the owner's late first write is refused.
    assert!(!b.stored_or_void("v").await.unwrap());
    let e = b
        .insert_new(rec("v", "t", SessionState::Created, 1))
        .await
        .unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::Voided), "{e}");
    assert!(b.get("v").await.unwrap().is_none());
    // Stored before the asker gave up: it stands.
    b.insert_new(rec("w", "t", SessionState::Created, 1))
        .await
        .unwrap();
    assert!(b.stored_or_void("w").await.unwrap());
    b.upsert(rec("w", "t", SessionState::Running, 1))
        .await
        .unwrap();
}

fn job(id: &str, created: i64, counts: [u32; 6]) -> JobRecord {
    JobRecord {
        job_id: id.into(),
        spec: json!({"selector": {"platform": "linux"}, "request": "uptime", "timeout": 300.0}),
        state: JobState::Running,
        reason: None,
        counts,
        created_at: t(created),
        finished_at: None,
    }
}

fn member(seq: u32, state: MemberState, session: Option<&str>) -> MemberRecord {
    MemberRecord {
        state,
        session_id: session.map(str::to_owned),
        ..MemberRecord::pending(seq, format!("d{seq}"))
    }
}

/// The job store's contract, as the SQLite store's tests state it
/// (`storage/sqlite/tests/jobs.rs`).
#[tokio::test]
async fn a_job_and_its_members_round_trip_list_newest_first_and_purge_ended_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(tmp.path());
    let s = store(&redis, "n1").await;
    let other = store(&redis, "n2").await;
    let members = (0..3)
        .map(|i| member(i, MemberState::Pending, None))
        .collect();
    s.create_job(job("j1", 1, [3, 0, 0, 0, 0, 0]), members)
        .await
        .unwrap();
    let mut done = member(1, MemberState::Completed, Some("s1"));
    done.exit_code = Some(0);
    done.output = Some("up 3 days".into());
    done.started_at = Some(t(5));
    done.finished_at = Some(t(9));
    let mut j = job("j1", 1, [2, 0, 1, 0, 0, 0]);
    j.state = JobState::Failed;
    j.reason = Some(JobReason::MaxFailures);
    j.finished_at = Some(t(10));
    s.update_job(j.clone(), vec![done.clone()]).await.unwrap();
    // Any node reads it.
    let (got, members) = other.get_job("j1").await.unwrap().unwrap();
    assert_eq!(got, j);
    assert_eq!(members.len(), 3);
    assert_eq!(members[1], done);
    assert_eq!(members[2], member(2, MemberState::Pending, None));
    assert!(other.get_job("nope").await.unwrap().is_none());

    other
        .create_job(job("j2", 2, [1, 0, 0, 0, 0, 0]), vec![])
        .await
        .unwrap();
    let listed: Vec<_> = s
        .list_jobs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(listed, ["j2", "j1"]);
    assert_eq!(s.list_jobs(1).await.unwrap().len(), 1);
    assert!(s.list_jobs(0).await.unwrap().is_empty());

    // Only the node running a job writes its progress.
    let mut stolen = job("j2", 2, [0, 1, 0, 0, 0, 0]);
    stolen.counts = [0, 1, 0, 0, 0, 0];
    s.update_job(stolen, vec![]).await.unwrap();
    assert_eq!(
        other.get_job("j2").await.unwrap().unwrap().0.counts,
        [1, 0, 0, 0, 0, 0]
    );
    assert_eq!(s.job_runner("j2").await.unwrap().as_deref(), Some("n2"));
    assert!(s.job_runner("j1").await.unwrap().is_none(), "ended");

    // Purging removes ended jobs finished before the cutoff, never a running one.
    assert_eq!(s.purge_jobs(t(100)).await.unwrap(), 1);
    assert!(s.get_job("j1").await.unwrap().is_none());
    assert!(s.get_job("j2").await.unwrap().is_some());
    assert_eq!(s.list_jobs(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_restart_ends_only_the_node_s_running_jobs_members_taking_their_sessions_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(tmp.path());
    let s = store(&redis, "n1").await;
    let other = store(&redis, "n2").await;
    let members = vec![
        member(0, MemberState::Completed, Some("s0")),
        // Its session ended, but the member's change was not written before the stop.
        member(1, MemberState::Running, Some("s1")),
        // Its session was live at the stop (on another node: it is still live).
        member(2, MemberState::Running, Some("s2")),
        member(3, MemberState::Pending, None),
    ];
    s.create_job(job("j", 1, [1, 2, 1, 0, 0, 0]), members)
        .await
        .unwrap();
    other
        .create_job(
            job("theirs", 2, [1, 0, 0, 0, 0, 0]),
            vec![member(0, MemberState::Pending, None)],
        )
        .await
        .unwrap();
    s.upsert(rec("s1", "t", SessionState::Completed, 2))
        .await
        .unwrap();
    other
        .upsert(rec("s2", "t", SessionState::Running, 3))
        .await
        .unwrap();

    assert_eq!(s.interrupt_jobs(t(50)).await.unwrap(), 1);
    let (j, m) = s.get_job("j").await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.reason, j.finished_at),
        (
            JobState::Failed,
            Some(JobReason::ServerRestarted),
            Some(t(50))
        )
    );
    assert_eq!(j.counts, [0, 0, 2, 1, 0, 1]);
    let states: Vec<_> = m.iter().map(|m| (m.state, m.reason)).collect();
    assert_eq!(
        states,
        [
            (MemberState::Completed, None),
            (MemberState::Completed, None),
            (MemberState::Failed, Some(JobReason::ServerRestarted)),
            (MemberState::Skipped, Some(JobReason::ServerRestarted)),
        ]
    );
    assert_eq!(s.interrupt_jobs(t(60)).await.unwrap(), 0, "once");
    let (theirs, _) = s.get_job("theirs").await.unwrap().unwrap();
    assert_eq!(theirs.state, JobState::Running, "another node's job");

    // A lost node's jobs: failed node_lost by another, the live sessions named.
    let ended = s
        .interrupt_jobs_of("n2", aip_server::storage::redis::NODE_LOST, t(70))
        .await
        .unwrap();
    assert_eq!(ended, [("theirs".to_owned(), vec![])]);
    let (theirs, _) = s.get_job("theirs").await.unwrap().unwrap();
    assert_eq!(theirs.reason.unwrap().as_str(), "node_lost");
    assert_eq!(theirs.counts, [0, 0, 0, 0, 0, 1]);
}
