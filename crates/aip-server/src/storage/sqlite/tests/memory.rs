//! The store's memory (live index, recent records) against the file, failing writes,
//! the v1 migration, bad stored values and batching.

use super::*;
use crate::storage::Refusal;

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

    // An ended record is final: another end of it, or a live state written over it, is
    // refused and changes nothing, in memory or on disk.
    let mut failed = rec("s", "t", SessionState::Failed, 1);
    failed.error = Some("boom".into());
    let refused = store.upsert(failed.clone()).await.unwrap_err();
    assert_eq!(refused.refusal(), Some(Refusal::Ended), "{refused}");
    let late = rec("s", "t", SessionState::Running, 1);
    assert_eq!(
        store.upsert(late).await.unwrap_err().refusal(),
        Some(Refusal::Ended)
    );
    assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&ended));
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.get("s").await.unwrap().as_deref(), Some(&ended));

    // Reused by a new run of its id (protocol.md §4.5): the ended record is gone from
    // memory and disk.
    let running = rec("s", "t", SessionState::Running, 2);
    store.insert_new(running.clone()).await.unwrap();
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
