//! The store against a real database file: the trait's operations here; the live and
//! recent-record indexes, faults, migration and batching in `memory.rs`.

mod jobs;
mod memory;

use super::migrate::SCHEMA_VERSION;
use super::*;
use crate::storage::{EndReason, Origin, SessionState};
use chrono::TimeZone;
use serde_json::json;

fn t(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap()
}

fn rec(id: &str, task: &str, state: SessionState, created: i64) -> SessionRecord {
    SessionRecord {
        session_id: id.into(),
        task_name: task.into(),
        request: format!("request {id}"),
        origin: Origin::Device,
        requester: Some("requester-1".into()),
        executor: "exec-1".into(),
        platform: "linux".into(),
        state,
        reason: None,
        error: None,
        result: None,
        created_at: t(created),
        started_at: None,
        finished_at: if state.is_terminal() {
            Some(t(created + 10))
        } else {
            None
        },
        echo_received: false,
        job_id: None,
    }
}

/// Stores `r`, which must succeed.
async fn put(store: &SqliteStore, r: SessionRecord) {
    store.upsert(r).await.unwrap();
}

#[tokio::test]
async fn upsert_get_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(dir.path().join(DB_FILE_NAME).exists());

    let full = SessionRecord {
        session_id: "s1".into(),
        task_name: "task".into(),
        request: "do it — ünïcode".into(),
        origin: Origin::Constellation,
        requester: Some("alice".into()),
        executor: "dev".into(),
        platform: "windows".into(),
        state: SessionState::Completed,
        reason: Some(EndReason::Cancelled),
        error: Some("none really".into()),
        result: Some(Box::new(json!({
            "zeta": 1,
            "alpha": {"y": [1, 2, {"b": null, "a": true}], "x": "s"},
            "mid": 2.5
        }))),
        created_at: Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
            + chrono::Duration::microseconds(123_456),
        started_at: Some(t(1_700_000_000_000_001)),
        finished_at: Some(t(1_700_000_000_999_999)),
        echo_received: true,
        job_id: Some("job-1".into()),
    };
    store.upsert(full.clone()).await.unwrap();
    let got = store.get("s1").await.unwrap().unwrap();
    assert_eq!(*got, full);
    assert_eq!(
        serde_json::to_string(got.result.as_ref().unwrap()).unwrap(),
        serde_json::to_string(full.result.as_ref().unwrap()).unwrap(),
        "key order preserved"
    );

    let sparse = SessionRecord {
        origin: Origin::Http,
        requester: None,
        ..rec("s2", "task", SessionState::Created, 5)
    };
    store.upsert(sparse.clone()).await.unwrap();
    assert_eq!(*store.get("s2").await.unwrap().unwrap(), sparse);
    assert!(store.get("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn upsert_replaces_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut r = rec("s", "task", SessionState::Running, 100);
    r.started_at = Some(t(101));
    store.upsert(r.clone()).await.unwrap();
    r.state = SessionState::Completed;
    r.finished_at = Some(t(200));
    r.result = Some(Box::new(json!({"ok": true})));
    r.requester = None;
    store.upsert(r.clone()).await.unwrap();
    assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
    assert_eq!(
        store.list(&SessionFilter::default()).await.unwrap().len(),
        1
    );

    store.delete("s").await.unwrap();
    assert!(store.get("s").await.unwrap().is_none());
    // Deleting something absent is fine.
    store.delete("s").await.unwrap();
}

#[tokio::test]
async fn latest_by_task_name_picks_newest_created() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    put(&store, rec("b", "t", SessionState::Completed, 300)).await;
    put(&store, rec("a", "t", SessionState::Completed, 100)).await;
    put(&store, rec("c", "other", SessionState::Completed, 900)).await;
    put(&store, rec("d", "t", SessionState::Running, 200)).await;
    let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
    assert_eq!(latest.session_id, "b");
    assert!(store.latest_by_task_name("zzz").await.unwrap().is_none());
}

#[tokio::test]
async fn list_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut a = rec("a", "t", SessionState::Running, 1);
    a.requester = Some("x".into());
    a.executor = "y".into();
    let mut b = rec("b", "t", SessionState::Completed, 2);
    b.requester = None;
    b.executor = "x".into();
    let mut c = rec("c", "t", SessionState::Running, 3);
    c.requester = Some("z".into());
    c.executor = "z".into();
    for r in [a, b, c] {
        store.upsert(r).await.unwrap();
    }
    let ids = |v: Vec<SessionRecord>| v.into_iter().map(|r| r.session_id).collect::<Vec<_>>();

    let all = store.list(&SessionFilter::default()).await.unwrap();
    assert_eq!(ids(all), ["c", "b", "a"]);

    let running = SessionFilter {
        state: Some(SessionState::Running),
        ..Default::default()
    };
    assert_eq!(ids(store.list(&running).await.unwrap()), ["c", "a"]);

    let client_x = SessionFilter {
        client_id: Some("x".into()),
        ..Default::default()
    };
    assert_eq!(ids(store.list(&client_x).await.unwrap()), ["b", "a"]);

    let both = SessionFilter {
        state: Some(SessionState::Running),
        client_id: Some("x".into()),
        limit: 0,
    };
    assert_eq!(ids(store.list(&both).await.unwrap()), ["a"]);

    let limited = SessionFilter {
        limit: 2,
        ..Default::default()
    };
    assert_eq!(ids(store.list(&limited).await.unwrap()), ["c", "b"]);

    for i in 0..150 {
        put(
            &store,
            rec(&format!("m{i}"), "many", SessionState::Created, 1000 + i),
        )
        .await;
    }
    assert_eq!(
        store.list(&SessionFilter::default()).await.unwrap().len(),
        DEFAULT_LIST_LIMIT
    );
}

#[tokio::test]
async fn mark_interrupted_fails_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    put(&store, rec("c", "t", SessionState::Created, 1)).await;
    put(&store, rec("r", "t", SessionState::Running, 2)).await;
    let mut done = rec("d", "t", SessionState::Completed, 3);
    done.result = Some(Box::new(json!(42)));
    store.upsert(done.clone()).await.unwrap();
    let cancelled = rec("x", "t", SessionState::Cancelled, 4);
    store.upsert(cancelled.clone()).await.unwrap();

    let now = t(1_000_000);
    assert_eq!(store.mark_interrupted(now).await.unwrap(), 2);
    for id in ["c", "r"] {
        let r = store.get(id).await.unwrap().unwrap();
        assert_eq!(r.state, SessionState::Failed);
        assert_eq!(r.reason, Some(EndReason::ServerRestarted));
        assert_eq!(
            r.error.as_deref(),
            Some("Server restarted while the task was running")
        );
        assert_eq!(r.finished_at, Some(now));
    }
    assert_eq!(*store.get("d").await.unwrap().unwrap(), done);
    assert_eq!(*store.get("x").await.unwrap().unwrap(), cancelled);
    assert_eq!(store.mark_interrupted(now).await.unwrap(), 0);
}

#[tokio::test]
async fn purge_by_age_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // Ended records finishing at 10, 20, ..., 100.
    for i in 1..=10 {
        let mut r = rec(&format!("e{i}"), "t", SessionState::Completed, i);
        r.finished_at = Some(t(i * 10));
        store.upsert(r).await.unwrap();
    }
    // Live records, old.
    put(&store, rec("live1", "t", SessionState::Running, 0)).await;
    put(&store, rec("live2", "t", SessionState::Created, 0)).await;

    // By age: finished before 35 -> e1, e2, e3.
    assert_eq!(store.purge(t(35), 1000).await.unwrap(), 3);
    assert!(store.get("e3").await.unwrap().is_none());
    assert!(store.get("e4").await.unwrap().is_some());

    // By count: keep 4 newest-finished of the 7 remaining ended.
    assert_eq!(store.purge(t(0), 4).await.unwrap(), 3);
    let left: Vec<String> = store
        .list(&SessionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.session_id)
        .collect();
    let mut left_sorted = left.clone();
    left_sorted.sort();
    assert_eq!(left_sorted, ["e10", "e7", "e8", "e9", "live1", "live2"]);

    // Both at once; live records are never purged.
    assert_eq!(store.purge(t(85), 1).await.unwrap(), 3);
    assert!(store.get("e10").await.unwrap().is_some());
    assert_eq!(store.purge(t(i64::MAX / 2), 0).await.unwrap(), 1);
    assert_eq!(
        store.list(&SessionFilter::default()).await.unwrap().len(),
        2
    );
    assert_eq!(store.purge(t(i64::MAX / 2), 0).await.unwrap(), 0);
}

#[tokio::test]
async fn durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rec("s", "t", SessionState::Completed, 77);
    r.result = Some(Box::new(json!({"b": 1, "a": [1, 2]})));
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let clone = store.clone();
        clone.upsert(r.clone()).await.unwrap();
        let shared: Arc<dyn SessionStore> = Arc::new(store);
        assert!(shared.get("s").await.unwrap().is_some());
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
    // Schema version recorded.
    let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[tokio::test]
async fn open_creates_missing_dir() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let store = SqliteStore::open(&nested).unwrap();
    put(&store, rec("s", "t", SessionState::Created, 1)).await;
    assert!(nested.join(DB_FILE_NAME).exists());
}
