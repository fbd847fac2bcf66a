//! Test harness: a real server on 127.0.0.1:0 with a fresh SQLite data dir, driven by
//! real WebSocket (tokio-tungstenite) and HTTP (reqwest) clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use aip_server::ServerConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any single frame or answer.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub api_key: Option<String>,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Server logs in tests only when asked: `TEST_LOG=1` (or a filter like `TEST_LOG=debug`).
fn init_tracing() {
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
    spawn_on(config, data_dir).await
}

/// Starts a server on an existing data dir (restart tests).
pub async fn spawn_on(config: ServerConfig, data_dir: tempfile::TempDir) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
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

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

impl TestApp {
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

    /// Polls task_result until `status` is `done`.
    pub async fn wait_done(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
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

    /// Polls until a client id is (or is no longer) listed.
    pub async fn wait_client(&self, id: &str, present: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
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

    /// Graceful shutdown; waits for the server task.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.server).await;
        self.data_dir
    }
}

pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a read ended when no text frame came.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Timeout,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (inner, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Ws { inner }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: String) {
        self.inner
            .send(Message::Text(s.into()))
            .await
            .expect("ws send");
    }

    /// The next text frame as JSON (skipping pings); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_text(WAIT).await {
            Ok(v) => v,
            Err(e) => panic!("expected a frame, got {e:?}"),
        }
    }

    /// The next text frame, or how the wait ended.
    pub async fn next_text(&mut self, wait: Duration) -> Result<Value, Ended> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.inner.next()).await;
            match next {
                Err(_) => return Err(Ended::Timeout),
                Ok(None) | Ok(Some(Err(_))) => return Err(Ended::Closed(None)),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("server sent JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(Ended::Closed(frame.map(|f| u16::from(f.code))))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(v) = self.next_text(wait).await {
            panic!("expected silence, got {v}");
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_text(WAIT).await {
                Ok(_) => continue,
                Err(Ended::Closed(code)) => return code,
                Err(Ended::Timeout) => panic!("server did not close the connection"),
            }
        }
    }

    /// Reads frames until one matches `pred`.
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .inner
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// Answers one `command` frame with success results echoing the call ids.
pub fn results_for(command: &Value, client_id: &str) -> Value {
    let results: Vec<Value> = command["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| json!({"status": "success", "result": {"tool": a["tool_name"]}, "namespace": "test", "call_id": a["call_id"]}))
        .collect();
    json!({
        "type": "command_results",
        "status": "continue",
        "client_id": client_id,
        "session_id": command["session_id"],
        "prev_response_id": command["response_id"],
        "action_results": results,
    })
}

/// A one-action command list for HTTP `commands`.
pub fn commands(names: &[&str]) -> Value {
    json!(names
        .iter()
        .map(|n| json!({"tool_name": n, "tool_type": "action", "parameters": {}}))
        .collect::<Vec<_>>())
}
