//! `GET /api/ready`: ready when the store commits a write and the server is not shutting
//! down; a store that refuses writes makes it 503 without leaking the storage error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aip_server::storage::sqlite::SqliteStore;
use aip_server::storage::{SessionFilter, SessionRecord, SessionStore, StoreError};
use aip_server::{AppState, ServerConfig};
use aip_testkit::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

#[tokio::test]
async fn ready_when_the_store_commits_and_never_needs_the_key() {
    let app = spawn_app_with(|c| c.api_key = Some("ready-key-0123456789abcdef".into())).await;
    let (code, body) = app.get("/api/ready").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"], "ok");
}

/// The real store, whose writes can be made to fail (the disk filled up).
struct Breakable {
    inner: SqliteStore,
    broken: Arc<AtomicBool>,
}

impl Breakable {
    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Database(
                "database or disk is full: /secret/path/aip.sqlite3".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl SessionStore for Breakable {
    async fn upsert(&self, record: SessionRecord) -> Result<(), StoreError> {
        self.check()?;
        self.inner.upsert(record).await
    }
    async fn probe_write(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.probe_write().await
    }
    async fn delete(&self, session_id: &str) -> Result<(), StoreError> {
        self.inner.delete(session_id).await
    }
    async fn get(&self, session_id: &str) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.inner.get(session_id).await
    }
    async fn latest_by_task_name(&self, name: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.latest_by_task_name(name).await
    }
    async fn list(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list(filter).await
    }
    async fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.mark_interrupted(now).await
    }
    async fn purge(&self, before: DateTime<Utc>, max: u64) -> Result<u64, StoreError> {
        self.inner.purge(before, max).await
    }
}

#[tokio::test]
async fn a_store_that_refuses_writes_is_not_ready_and_its_error_stays_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = Arc::new(AtomicBool::new(false));
    let store = Breakable {
        inner: SqliteStore::open(dir.path()).expect("store"),
        broken: broken.clone(),
    };
    let config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        ..ServerConfig::default()
    };
    let state = AppState::new(config, Arc::new(store), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/api/ready", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(aip_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let get = || async {
        let r = reqwest::get(&url).await.expect("get");
        let code = r.status().as_u16();
        let text = r.text().await.expect("body");
        (code, text)
    };
    assert_eq!(get().await.0, 200);
    broken.store(true, Ordering::SeqCst);
    // The last probe is reused for a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (code, text) = get().await;
    assert_eq!(code, 503, "{text}");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["store"], "failing");
    assert!(
        !text.contains("secret"),
        "storage error text leaked: {text}"
    );
    broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get().await.0, 200, "ready again once writes work");
    let _ = stop.send(());
    let _ = server.await;
}

/// The disk fills up while a session runs: its end is shown (not `running` forever), the
/// API answers like for any ended session, readiness says the store is behind, the store's
/// text never reaches a client, and the end is stored once the disk has room again.
#[tokio::test]
async fn an_end_the_store_refuses_is_shown_at_once_and_stored_once_the_store_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = Arc::new(AtomicBool::new(false));
    let inner = SqliteStore::open(dir.path()).expect("store");
    let store = Breakable {
        inner: inner.clone(),
        broken: broken.clone(),
    };
    let app = spawn_with_store(Arc::new(store), dir).await;
    let mut dev = app.device("dev1").await;
    let (code, body) = app
        .dispatch(json!({"target_id": "dev1", "request": "x", "session_id": "s-full", "commands": commands(&["t"])}))
        .await;
    assert_eq!(code, 200, "{body}");
    dev.recv().await;

    broken.store(true, Ordering::SeqCst);
    let (code, cancelled) = app.delete("/api/sessions/s-full").await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(dev.recv().await["type"], "task_end", "the device is told");
    let (_, shown) = app.get("/api/task_result/s-full").await;
    assert_eq!(shown["state"], "cancelled", "{shown}");
    let (_, listed) = app.get("/api/sessions?state=cancelled").await;
    assert_eq!(listed["sessions"][0]["session_id"], "s-full", "{listed}");
    let (_, running) = app.get("/api/sessions?state=created").await;
    assert_eq!(running["sessions"], json!([]), "{running}");
    let (code, _) = app.delete("/api/sessions/s-full").await;
    assert_eq!(code, 409, "already finished, as the API shows");
    let (code, ready) = app.get("/api/ready").await;
    assert_eq!((code, &ready["checks"]["store"]), (503, &json!("behind")));
    let (code, refused) = app
        .dispatch(json!({"target_id": "dev1", "request": "y", "commands": commands(&["t"])}))
        .await;
    assert_eq!(code, 503, "{refused}");
    assert!(!refused.to_string().contains("secret"), "{refused}");
    let on_disk = inner.get("s-full").await.expect("read").expect("stored");
    assert_eq!(on_disk.state.as_str(), "created", "not stored yet");

    broken.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let on_disk = inner.get("s-full").await.expect("read").expect("stored");
        if on_disk.state.as_str() == "cancelled" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (code, ready) = app.get("/api/ready").await;
    assert_eq!(code, 200, "{ready}");
    app.stop().await;
}
