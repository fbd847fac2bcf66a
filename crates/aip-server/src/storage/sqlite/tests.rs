//! The store against a real database file.

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

/// Makes every insert of `session_id` into `table` fail, behind the store's back.
fn refuse_inserts(dir: &Path, table: &str, session_id: &str) {
    let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
         WHEN NEW.session_id = '{session_id}' \
         BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END;"
    ))
    .unwrap();
}

#[tokio::test]
async fn a_failing_write_fails_alone_and_the_rest_of_its_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // A trigger refusing one id stands in for any failing statement.
    refuse_inserts(dir.path(), "live", "bad");
    let (a, bad, b) = tokio::join!(
        store.upsert(rec("a", "t", SessionState::Running, 1)),
        store.upsert(rec("bad", "t", SessionState::Running, 2)),
        store.upsert(rec("b", "t", SessionState::Running, 3)),
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert!(
        matches!(&bad, Err(StoreError::Database(m)) if m.contains("refused by trigger")),
        "{bad:?}"
    );
    assert!(store.get("a").await.unwrap().is_some());
    assert!(store.get("b").await.unwrap().is_some());
    assert!(store.get("bad").await.unwrap().is_none());
}

fn count(dir: &Path, table: &str) -> i64 {
    let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Changes a stored record behind the store's back, so a read shows where it came from.
fn tamper(dir: &Path, session_id: &str) {
    let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
    conn.execute(
        "UPDATE sessions SET error = 'changed on disk' WHERE session_id = ?1",
        [session_id],
    )
    .unwrap();
}

#[tokio::test]
async fn recently_ended_records_are_read_from_memory_and_the_oldest_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(dir.path(), 2).unwrap();
    for id in ["a", "b", "c"] {
        put(&store, rec(id, "t", SessionState::Completed, 1)).await;
        tamper(dir.path(), id);
    }
    let error = |r: Option<Arc<SessionRecord>>| r.unwrap().error.clone();
    // "a" was forgotten (capacity 2): read from the file; "b" and "c" from memory.
    assert_eq!(
        error(store.get("a").await.unwrap()).as_deref(),
        Some("changed on disk")
    );
    assert_eq!(error(store.get("b").await.unwrap()), None);
    assert_eq!(
        *store.get("c").await.unwrap().unwrap(),
        rec("c", "t", SessionState::Completed, 1)
    );
}

#[tokio::test]
async fn every_write_keeps_the_recent_records_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let ended = rec("s", "t", SessionState::Completed, 1);
    store.upsert(ended.clone()).await.unwrap();
    assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&ended));

    // Replaced by an ended record of the same id.
    let mut failed = rec("s", "t", SessionState::Failed, 1);
    failed.error = Some("boom".into());
    store.upsert(failed.clone()).await.unwrap();
    assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&failed));

    // Reused by a live session: the ended record is gone from memory and disk.
    let running = rec("s", "t", SessionState::Running, 2);
    store.upsert(running.clone()).await.unwrap();
    assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&running));

    // Deleted after it ended.
    store.upsert(ended.clone()).await.unwrap();
    store.delete("s").await.unwrap();
    assert_eq!(store.get("s").await.unwrap(), None);

    // Purged.
    store.upsert(ended).await.unwrap();
    assert_eq!(store.purge(t(0), 0).await.unwrap(), 1);
    assert_eq!(store.get("s").await.unwrap(), None);

    // A write that fails is not remembered: the record is unchanged.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = SqliteStore::open(dir2.path()).unwrap();
    refuse_inserts(dir2.path(), "sessions", "bad");
    assert!(store2
        .upsert(rec("bad", "t", SessionState::Completed, 1))
        .await
        .is_err());
    assert_eq!(store2.get("bad").await.unwrap(), None);
}

#[tokio::test]
async fn live_records_stay_out_of_the_indexed_table_until_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut r = rec("s", "t", SessionState::Created, 1);
    store.upsert(r.clone()).await.unwrap();
    assert_eq!(
        (count(dir.path(), "live"), count(dir.path(), "sessions")),
        (1, 0)
    );
    r.state = SessionState::Running;
    r.started_at = Some(t(2));
    store.upsert(r.clone()).await.unwrap();
    assert_eq!(count(dir.path(), "live"), 1, "updated in place");
    assert_eq!(*store.get("s").await.unwrap().unwrap(), r);

    r.state = SessionState::Completed;
    r.finished_at = Some(t(3));
    r.result = Some(Box::new(json!({"done": true})));
    store.upsert(r.clone()).await.unwrap();
    assert_eq!(
        (count(dir.path(), "live"), count(dir.path(), "sessions")),
        (0, 1)
    );
    assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
    assert_eq!(store.latest_by_task_name("t").await.unwrap().unwrap(), r);

    // Created and ended within one batch: the end finds the row the batch appended.
    let (a, b) = tokio::join!(
        store.upsert(rec("x", "t2", SessionState::Created, 5)),
        store.upsert(rec("x", "t2", SessionState::Failed, 5)),
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(
        (count(dir.path(), "live"), count(dir.path(), "sessions")),
        (0, 2)
    );
    assert_eq!(
        store.get("x").await.unwrap().unwrap().state,
        SessionState::Failed
    );
    // And a live record created, deleted (a dispatch that could not be queued).
    put(&store, rec("gone", "t3", SessionState::Created, 6)).await;
    store.delete("gone").await.unwrap();
    assert!(store.get("gone").await.unwrap().is_none());
    assert!(store.latest_by_task_name("t3").await.unwrap().is_none());
    assert_eq!(count(dir.path(), "live"), 0);
}

#[tokio::test]
async fn fresh_records_live_and_end_like_upserted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // Two live sessions of one task (they share its name in the index), one ended.
    store
        .insert_generated(rec("f1", "shared", SessionState::Created, 1))
        .await
        .unwrap();
    store
        .insert_generated(rec("f2", "shared", SessionState::Created, 2))
        .await
        .unwrap();
    put(&store, rec("f1", "shared", SessionState::Running, 1)).await;
    assert_eq!(count(dir.path(), "live"), 2);
    let newest = store.latest_by_task_name("shared").await.unwrap().unwrap();
    assert_eq!(newest.session_id, "f2");
    put(&store, rec("f2", "shared", SessionState::Completed, 2)).await;
    assert_eq!(
        (count(dir.path(), "live"), count(dir.path(), "sessions")),
        (1, 1)
    );
    // The ended record is the newest; the other stays live and found.
    let newest = store.latest_by_task_name("shared").await.unwrap().unwrap();
    assert_eq!(newest.session_id, "f2");
    put(&store, rec("f1", "shared", SessionState::Failed, 1)).await;
    assert_eq!(
        store.get("f1").await.unwrap().unwrap().state,
        SessionState::Failed
    );
    assert_eq!(count(dir.path(), "live"), 0);
    // A generated_id record that is already ended goes straight to the indexed table.
    store
        .insert_generated(rec("f3", "other", SessionState::Cancelled, 3))
        .await
        .unwrap();
    assert_eq!(count(dir.path(), "sessions"), 3);
    // After a restart the live index is rebuilt from the file, names shared again.
    store
        .insert_generated(rec("f4", "shared", SessionState::Created, 4))
        .await
        .unwrap();
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    let newest = store.latest_by_task_name("shared").await.unwrap().unwrap();
    assert_eq!(newest.session_id, "f4");
}

#[tokio::test]
async fn latest_by_task_name_looks_at_live_and_ended_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    put(&store, rec("old", "t", SessionState::Completed, 100)).await;
    put(&store, rec("live-a", "t", SessionState::Running, 200)).await;
    put(&store, rec("live-b", "t", SessionState::Created, 150)).await;
    let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
    assert_eq!(latest.session_id, "live-a");
    put(&store, rec("live-a", "t", SessionState::Cancelled, 200)).await;
    let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
    assert_eq!(
        (latest.session_id.as_str(), latest.state),
        ("live-a", SessionState::Cancelled)
    );
    put(&store, rec("new", "t", SessionState::Completed, 300)).await;
    let latest = store.latest_by_task_name("t").await.unwrap().unwrap();
    assert_eq!(latest.session_id, "new");
}

#[tokio::test]
async fn live_records_are_found_after_a_restart_and_then_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let r = rec("s", "t", SessionState::Running, 1);
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.upsert(r.clone()).await.unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(*store.get("s").await.unwrap().unwrap(), r);
    assert_eq!(store.latest_by_task_name("t").await.unwrap().unwrap(), r);
    assert_eq!(store.mark_interrupted(t(9)).await.unwrap(), 1);
    let failed = store.get("s").await.unwrap().unwrap();
    assert_eq!(failed.state, SessionState::Failed);
    assert_eq!(failed.finished_at, Some(t(9)));
    assert_eq!(
        (count(dir.path(), "live"), count(dir.path(), "sessions")),
        (0, 1)
    );
    // A new live record after the restart is live again.
    put(&store, rec("n", "t", SessionState::Created, 10)).await;
    assert_eq!(
        store
            .latest_by_task_name("t")
            .await
            .unwrap()
            .unwrap()
            .session_id,
        "n"
    );
}

#[tokio::test]
async fn a_version_1_database_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch(
            "CREATE TABLE sessions (
                session_id TEXT PRIMARY KEY, task_name TEXT NOT NULL,
                request TEXT NOT NULL, origin TEXT NOT NULL, owner TEXT NULL,
                executor TEXT NOT NULL, platform TEXT NOT NULL, state TEXT NOT NULL,
                reason TEXT, error TEXT, result TEXT, created_at INTEGER NOT NULL,
                started_at INTEGER NULL, finished_at INTEGER NULL,
                echo_received INTEGER NOT NULL);
             INSERT INTO sessions VALUES ('v1', 't', 'r', 'http', NULL, 'd', 'linux',
                'running', NULL, NULL, NULL, 1, 2, NULL, 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get("v1").await.unwrap().unwrap().state,
        SessionState::Running
    );
    assert_eq!(store.mark_interrupted(t(5)).await.unwrap(), 1);
    assert_eq!(
        store.get("v1").await.unwrap().unwrap().reason,
        Some(EndReason::ServerRestarted)
    );
}

#[tokio::test]
async fn bad_stored_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Without recent records in memory: every read goes to the file.
    let store = SqliteStore::open_with(dir.path(), 0).unwrap();
    put(&store, rec("s", "t", SessionState::Created, 1)).await;
    let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
    conn.busy_timeout(BUSY_TIMEOUT).unwrap();
    // "s" is live; "e" has ended: both tables' rows are checked on the way out.
    conn.execute("UPDATE live SET state = 'weird'", []).unwrap();
    assert!(matches!(store.get("s").await, Err(StoreError::Database(_))));
    conn.execute("UPDATE live SET state = 'created'", [])
        .unwrap();
    put(&store, rec("e", "t", SessionState::Completed, 2)).await;
    conn.execute("UPDATE sessions SET result = '{not json'", [])
        .unwrap();
    assert!(matches!(store.get("e").await, Err(StoreError::Database(_))));
    conn.execute("UPDATE sessions SET result = NULL, origin = 'mars'", [])
        .unwrap();
    assert!(matches!(
        store.list(&SessionFilter::default()).await,
        Err(StoreError::Database(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upserts_are_batched() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut handles = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut r = rec(&format!("s{i:03}"), "t", SessionState::Completed, i);
            r.result = Some(Box::new(json!({ "i": i })));
            store.upsert(r).await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    for i in 0..200 {
        let r = store.get(&format!("s{i:03}")).await.unwrap().unwrap();
        assert_eq!(r.result, Some(Box::new(json!({ "i": i }))));
    }
    let all = store
        .list(&SessionFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
}
