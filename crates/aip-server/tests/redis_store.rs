//! The session store of cluster mode against a real `redis-server` (started here on a
//! free port): the trait's operations, purge, and the fencing of a node declared lost.

#![allow(clippy::unwrap_used)]

use aip_server::storage::redis::{RedisStore, RedisTarget};
use aip_server::storage::{
    EndReason, Origin, SessionFilter, SessionRecord, SessionState, SessionStore,
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

    // The lost node, back, reports the session completed: not written.
    lost.upsert(rec("l1", "t", SessionState::Completed, 1))
        .await
        .unwrap();
    assert_eq!(
        other.get("l1").await.unwrap().unwrap().reason,
        Some(EndReason::NodeLost)
    );

    // At its restart a node fails only its own live sessions.
    assert_eq!(other.mark_interrupted(Utc::now()).await.unwrap(), 1);
    let o1 = lost.get("o1").await.unwrap().unwrap();
    assert_eq!(o1.reason, Some(EndReason::ServerRestarted));
}
