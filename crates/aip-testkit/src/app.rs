//! The server under test: [`TestApp`] on 127.0.0.1 (port 0 unless a test needs a fixed
//! one to restart on), with a fresh SQLite data dir, and its HTTP API.

use std::net::SocketAddr;
use std::time::Duration;

use std::path::Path;

use aip_server::ServerConfig;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::peer::Ws;

/// How long a wait for a session to end or a client to (dis)appear may take.
const POLL_FOR: Duration = Duration::from_secs(30);

/// A server running in this process; [`TestApp::stop`] shuts it down gracefully.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub api_key: Option<String>,
    /// The data dir the harness made; `None` when the test brought its own.
    pub data_dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Server logs in tests only when asked: `TEST_LOG=1` (or a filter like `TEST_LOG=debug`).
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let filter = if filter == "1" {
            "info".to_owned()
        } else {
            filter
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Starts a server with default test settings, then `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestApp {
    init_tracing();
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig {
        data_dir: data_dir.path().to_path_buf(),
        ..ServerConfig::default()
    };
    tweak(&mut config);
    spawn(0, config, Some(data_dir)).await
}

/// Starts a server on an existing data dir (restart tests).
pub async fn spawn_on(config: ServerConfig, data_dir: tempfile::TempDir) -> TestApp {
    spawn(0, config, Some(data_dir)).await
}

/// Starts a server on `port` (0: any) with its store in `data_dir`, which the test keeps
/// (to restart on the same port and dir), with default settings, then `tweak`.
pub async fn spawn_at(
    port: u16,
    data_dir: &Path,
    tweak: impl FnOnce(&mut ServerConfig),
) -> TestApp {
    init_tracing();
    let mut config = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        ..ServerConfig::default()
    };
    tweak(&mut config);
    spawn(port, config, None).await
}

async fn spawn(port: u16, config: ServerConfig, data_dir: Option<tempfile::TempDir>) -> TestApp {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let api_key = config.api_key.clone();
    let server = tokio::spawn(aip_server::run(listener, config, async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        http: reqwest::Client::new(),
        api_key,
        data_dir,
        shutdown: Some(tx),
        server,
    }
}

/// Starts a server with default test settings on the test's own `store` (e.g. one whose
/// writes can be made to fail), whose files are in `data_dir`.
pub async fn spawn_with_store(
    store: std::sync::Arc<dyn aip_server::storage::SessionStore>,
    data_dir: tempfile::TempDir,
) -> TestApp {
    init_tracing();
    let config = ServerConfig {
        data_dir: data_dir.path().to_path_buf(),
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let state = aip_server::AppState::new(config, store, None);
    let server = tokio::spawn(aip_server::serve(listener, state, async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        http: reqwest::Client::new(),
        api_key: None,
        data_dir: Some(data_dir),
        shutdown: Some(tx),
        server,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

impl TestApp {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        match &self.api_key {
            Some(k) => format!("ws://{}/ws?token={}", self.addr, k),
            None => format!("ws://{}/ws", self.addr),
        }
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.header("X-API-Key", k),
            None => rb,
        }
    }

    /// GET with the key (if any); returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .authed(self.http.get(self.url(path)))
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POST a JSON body to /api/dispatch with the key (if any).
    pub async fn dispatch(&self, body: Value) -> (u16, Value) {
        self.post_raw("/api/dispatch", body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let resp = self
            .authed(self.http.post(self.url(path)))
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self
            .authed(self.http.delete(self.url(path)))
            .send()
            .await
            .expect("DELETE");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Dispatches `body`, which must succeed; returns the session id.
    pub async fn dispatched(&self, body: Value) -> String {
        let (code, resp) = self.dispatch(body).await;
        assert_eq!(code, 200, "dispatch failed: {resp}");
        resp["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("dispatch failed: {resp}"))
            .to_owned()
    }

    /// Dispatches `body` and waits for the session to end.
    pub async fn run(&self, body: Value) -> Value {
        let sid = self.dispatched(body).await;
        self.wait_done(&sid).await
    }

    /// Dispatches a list of commands to `device` as a plan; returns the session id.
    pub async fn dispatch_plan(&self, device: &str, actions: Value) -> String {
        self.dispatched(json!({"target_id": device, "request": "plan", "commands": actions}))
            .await
    }

    /// Dispatches a list of commands to `device` as a plan and waits for the result.
    pub async fn run_plan(&self, device: &str, actions: Value) -> Value {
        self.run(json!({"target_id": device, "request": "plan", "commands": actions}))
            .await
    }

    /// The stored sessions' count.
    pub async fn session_count(&self) -> usize {
        let (code, body) = self.get("/api/sessions").await;
        assert_eq!(code, 200, "{body}");
        body["sessions"].as_array().expect("sessions").len()
    }

    /// No session is stored.
    pub async fn assert_no_sessions(&self) {
        let (code, body) = self.get("/api/sessions").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["sessions"], json!([]), "{body}");
    }

    /// No session has this id or task name.
    pub async fn assert_no_task(&self, id: &str) {
        let (code, body) = self.get(&format!("/api/task_result/{id}")).await;
        assert_eq!(code, 404, "{body}");
        assert_eq!(body["detail"], "Task not found", "{body}");
    }

    /// `online_clients` of `/api/clients`.
    pub async fn online(&self) -> Value {
        let (_, body) = self.get("/api/clients").await;
        body["online_clients"].clone()
    }

    /// Polls task_result until `status` is `done`.
    pub async fn wait_done(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + POLL_FOR;
        loop {
            let (code, body) = self.get(&format!("/api/task_result/{id}")).await;
            if code == 200 && body["status"] == "done" {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} not done: {code} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `id` is listed.
    pub async fn wait_device(&self, id: &str) {
        self.wait_client(id, true).await
    }

    /// Polls until `id` is no longer listed.
    pub async fn wait_gone(&self, id: &str) {
        self.wait_client(id, false).await
    }

    /// Polls until a client id is (or is no longer) listed.
    pub async fn wait_client(&self, id: &str, present: bool) {
        let deadline = tokio::time::Instant::now() + POLL_FOR;
        loop {
            let (_, body) = self.get("/api/clients").await;
            let listed = body["online_clients"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c == id));
            if listed == present {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "client {id} present={listed}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn connect(&self) -> Ws {
        Ws::connect(&self.ws_url()).await
    }

    /// A registered device.
    pub async fn device(&self, id: &str) -> Ws {
        self.device_with(
            id,
            json!({"platform": "linux", "system_info": {"hostname": id, "cpu_count": 2}}),
        )
        .await
    }

    pub async fn device_with(&self, id: &str, metadata: Value) -> Ws {
        let mut ws = self.connect().await;
        ws.send(json!({"type": "register", "status": "ok", "client_type": "device", "client_id": id, "metadata": metadata})).await;
        let ok = ws.recv().await;
        assert_eq!(ok["type"], "heartbeat", "{ok}");
        assert_eq!(ok["status"], "ok", "{ok}");
        ws
    }

    /// A registered constellation, scoped to `target` if given.
    pub async fn constellation(&self, id: &str, target: Option<&str>) -> Ws {
        let mut ws = self.connect().await;
        ws.send(json!({"type": "register", "status": "ok", "client_type": "constellation", "client_id": id, "target_id": target})).await;
        let ok = ws.recv().await;
        assert_eq!(ok["status"], "ok", "{ok}");
        ws
    }

    /// Graceful shutdown; waits for the server task. Returns the harness's data dir.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.server).await;
        self.data_dir
    }
}
