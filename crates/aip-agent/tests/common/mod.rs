//! Shared harness: a real aip server in-process on 127.0.0.1 and real device agents.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use aip_agent::device::{Device, DeviceConfig};
use aip_agent::tools::builtin::{add_builtins, BuiltinOptions};
use aip_agent::tools::{Policy, ToolSet};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
}

pub async fn start_server(port: u16, dir: &std::path::Path) -> Server {
    start_server_with(port, dir, |_| {}).await
}

pub async fn start_server_with(
    port: u16,
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut aip_server::ServerConfig),
) -> Server {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut config = aip_server::ServerConfig {
        data_dir: dir.to_path_buf(),
        command_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    tweak(&mut config);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(aip_server::run(listener, config, async move {
        let _ = rx.await;
    }));
    Server {
        port,
        stop: Some(tx),
        task,
        http: reqwest::Client::new(),
    }
}

impl Server {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    pub async fn wait_device(&self, id: &str) {
        for _ in 0..500 {
            let body = self.get("/api/clients").await;
            if body["online_clients"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c == id))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("device {id} never registered");
    }

    pub async fn wait_gone(&self, id: &str) {
        for _ in 0..500 {
            let body = self.get("/api/clients").await;
            if !body["online_clients"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c == id))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("device {id} never left");
    }

    /// Dispatches `body`; returns the session id.
    pub async fn dispatch(&self, body: Value) -> String {
        let resp: Value = self
            .http
            .post(self.url("/api/dispatch"))
            .json(&body)
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        resp["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("dispatch failed: {resp}"))
            .to_owned()
    }

    /// Dispatches a list of commands as a plan; returns the session id.
    pub async fn dispatch_plan(&self, device: &str, actions: Value) -> String {
        self.dispatch(json!({"target_id": device, "request": "plan", "commands": actions}))
            .await
    }

    /// Polls task_result until the session is done.
    pub async fn wait_done(&self, sid: &str) -> Value {
        for _ in 0..1500 {
            let r = self.get(&format!("/api/task_result/{sid}")).await;
            if r["status"] == "done" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("session {sid} did not finish");
    }

    /// Dispatches `body` and waits for the session to finish.
    pub async fn run(&self, body: Value) -> Value {
        let sid = self.dispatch(body).await;
        self.wait_done(&sid).await
    }

    /// Dispatches a list of commands as a plan and waits for the result.
    pub async fn run_plan(&self, device: &str, actions: Value) -> Value {
        self.run(json!({"target_id": device, "request": "plan", "commands": actions}))
            .await
    }
}

pub fn tools(id: &str, policy: Arc<dyn Policy>, shell: bool) -> ToolSet {
    let mut set = ToolSet::new(policy, Duration::from_secs(60));
    add_builtins(
        &mut set,
        &BuiltinOptions {
            device_id: id.into(),
            platform: "linux".into(),
            tags: Default::default(),
            shell,
            max_command_timeout: Duration::from_secs(60),
            output_cap: 1024,
        },
    );
    set
}

pub fn start_device(port: u16, id: &str, set: ToolSet) -> CancellationToken {
    start_device_with(port, id, set, |_| {})
}

pub fn start_device_with(
    port: u16,
    id: &str,
    set: ToolSet,
    tweak: impl FnOnce(&mut DeviceConfig),
) -> CancellationToken {
    let mut config = DeviceConfig::new(format!("ws://127.0.0.1:{port}/ws"), id);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    config.heartbeat_interval = Duration::from_secs(1);
    tweak(&mut config);
    let stop = CancellationToken::new();
    let device = Device::new(config, set);
    let token = stop.clone();
    tokio::spawn(async move { device.run(token).await });
    stop
}

pub fn shell(command: &str, extra: Value) -> Value {
    let mut params = json!({"command": command});
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({"tool_name": "execute_command", "tool_type": "action", "parameters": params})
}
