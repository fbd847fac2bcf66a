//! Integration tests of the `aip serve` binary as a child process: durable
//! results across `kill -9`, command-line/env configuration, exit codes,
//! graceful SIGTERM shutdown and logging (server.md §6, §9).

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aip_testkit::{expect_ack, Ws};
use serde_json::{json, Value};

use aip_testkit::process::BIN;
const KEY: &str = "s3cr3t-test-key-QWERTY-7781";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running `aip serve`; killed (SIGKILL) and reaped on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    stderr_path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    /// Spawns `aip serve` on a free port — `args(port)` and `envs(port)` say how it is given
    /// — writing stderr next to `stderr_base`, and waits until `/api/health` answers 200.
    /// A port is free when picked, but a concurrent test may bind it before the server
    /// does; the server then exits with "Address already in use" and another port is tried.
    async fn start(
        args: impl Fn(&str) -> Vec<String>,
        envs: impl Fn(&str) -> Vec<(&'static str, String)>,
        stderr_base: &Path,
    ) -> Server {
        for _ in 0..5 {
            let port = free_port();
            let ps = port.to_string();
            let mut cmd = Command::new(&*BIN);
            cmd.arg("serve").args(args(&ps));
            for (k, v) in envs(&ps) {
                cmd.env(k, v);
            }
            let stderr_path = stderr_base.with_extension(format!("stderr-{port}.log"));
            let child = cmd
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&stderr_path).unwrap())
                .spawn()
                .unwrap();
            let mut s = Server {
                child: Some(child),
                port,
                stderr_path,
            };
            match s.wait_healthy().await {
                Ok(()) => return s,
                Err(stderr) if stderr.contains("Address already in use") => continue,
                Err(stderr) => panic!("server exited early; stderr:\n{stderr}"),
            }
        }
        panic!("no free port found in 5 tries");
    }

    /// The documented invocation: `--host 127.0.0.1 --port P --api-key K --data-dir D`.
    async fn standard(data_dir: &Path, extra: &[&str]) -> Server {
        let dd = data_dir.to_str().unwrap().to_string();
        let args = |port: &str| {
            let mut args: Vec<String> = [
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--api-key",
                KEY,
                "--data-dir",
                &dd,
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            args.extend(extra.iter().map(|a| a.to_string()));
            args
        };
        Server::start(args, |_| Vec::new(), data_dir).await
    }

    /// Waits until `/api/health` answers 200; the server's stderr if it exited first.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = http();
        loop {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                return Err(self.stderr());
            }
            if let Ok(r) = client.get(self.url("/api/health")).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not healthy within 10 s; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL (`Child::kill` on Unix) and reap.
    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connect_device(&self, id: &str) -> Ws {
        let url = format!("ws://127.0.0.1:{}/ws?token={KEY}", self.port);
        let mut ws = Ws::connect(&url).await;
        ws.send(
            json!({"type":"register","status":"ok","client_type":"device",
                   "client_id":id,"metadata":{"platform":"linux"}}),
        )
        .await;
        let ack = ws.recv_until(|v| v["type"] == "heartbeat").await;
        assert_eq!(ack["status"], "ok", "registration refused: {ack}");
        ws
    }

    async fn dispatch(&self, device: &str, task_name: &str) -> String {
        let r = http()
            .post(self.url("/api/dispatch"))
            .header("X-API-Key", KEY)
            .json(
                &json!({"target_id":device,"request":"run","task_name":task_name,
                "commands":[{"tool_name":"echo","tool_type":"action","parameters":{}}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "dispatched", "{v}");
        v["session_id"].as_str().unwrap().to_string()
    }

    async fn task_result(&self, id: &str) -> Value {
        let r = http()
            .get(self.url(&format!("/api/task_result/{id}")))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "task_result/{id}: {v}");
        v
    }

    /// Poll task_result until `pred` holds (5 s).
    async fn wait_result(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.task_result(id).await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "task_result/{id} stuck at {v}; stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Device side of an HTTP-dispatched session up to (and including) receiving
/// the first `command`. Returns the `command` frame.
async fn accept_task(ws: &mut Ws, device: &str, task_name: &str, sid: &str) -> Value {
    let task = ws.recv_until(|v| v["type"] == "task").await;
    assert_eq!(task["session_id"], sid, "{task}");
    assert_eq!(task["task_name"], task_name, "{task}");
    ws.send(
        json!({"type":"task","status":"continue","client_type":"device","client_id":device,
               "task_name":task_name,"request":"run"}),
    )
    .await;
    expect_ack(ws, sid).await;
    let cmd = ws.recv_until(|v| v["type"] == "command").await;
    assert_eq!(cmd["session_id"], sid, "{cmd}");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_results_survive_kill_9_and_live_sessions_become_server_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = Server::standard(&data, &[]).await;
    let mut ws = srv.connect_device("dev1").await;

    // job1: complete one round.
    let sid1 = srv.dispatch("dev1", "job1").await;
    let cmd = accept_task(&mut ws, "dev1", "job1", &sid1).await;
    let actions = cmd["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{cmd}");
    let call_id = actions[0]["call_id"].clone();
    let response_id = cmd
        .get("response_id")
        .filter(|v| !v.is_null())
        .unwrap_or(&actions[0]["response_id"])
        .clone();
    ws.send(
        json!({"type":"command_results","status":"continue","client_id":"dev1",
               "session_id":sid1,"prev_response_id":response_id,
               "action_results":[{"status":"success","result":"hello","call_id":call_id}]}),
    )
    .await;
    let end = ws.recv_until(|v| v["type"] == "task_end").await;
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["session_id"], sid1.as_str(), "{end}");
    let before = srv.wait_result("job1", |v| v["status"] == "done").await;
    assert_eq!(before["state"], "completed", "{before}");
    let rounds_before = before["result"]["rounds"].clone();
    assert!(
        rounds_before.to_string().contains("hello"),
        "rounds lack the device's result: {before}"
    );

    // job2: running, its command never answered.
    let sid2 = srv.dispatch("dev1", "job2").await;
    accept_task(&mut ws, "dev1", "job2", &sid2).await;
    let live = srv.wait_result(&sid2, |v| v["state"] == "running").await;
    assert_eq!(live["status"], "pending", "{live}");

    // Crash and restart on the same data dir (new port).
    srv.kill9();
    drop(ws);
    let srv = Server::standard(&data, &[]).await;

    for id in ["job1", sid1.as_str()] {
        let v = srv.task_result(id).await;
        assert_eq!(v["status"], "done", "{id}: {v}");
        assert_eq!(v["state"], "completed", "{id}: {v}");
        assert_eq!(v["session_id"], sid1.as_str(), "{id}: {v}");
        assert_eq!(v["task_name"], "job1", "{id}: {v}");
        assert_eq!(v["result"]["rounds"], rounds_before, "{id}: {v}");
    }
    for id in ["job2", sid2.as_str()] {
        let v = srv.task_result(id).await;
        assert_eq!(v["status"], "done", "{id}: {v}");
        assert_eq!(v["state"], "failed", "{id}: {v}");
        assert_eq!(v["session_id"], sid2.as_str(), "{id}: {v}");
        assert_eq!(v["reason"], "server_restarted", "{id}: {v}");
        assert_eq!(
            v["error"], "Server restarted while the task was running",
            "{id}: {v}"
        );
    }
}

/// Run `aip serve <args>` expecting it to exit by itself (10 s).
fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(&*BIN)
        .arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`aip serve {}` did not exit within 10 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_documented_invocation_works_and_bad_options_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::standard(&data, &[]).await;
    let c = http();
    let r = c.get(srv.url("/api/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(srv.url("/api/clients")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"detail":"Invalid API key"}));
    let r = c
        .get(srv.url("/api/clients"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(srv.url("/api/clients"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(data.is_dir(), "--data-dir not created");

    let dd = data.to_str().unwrap();
    let p = free_port().to_string();
    for bad in [
        vec!["--port", "notanumber"],
        vec!["--port", "70000"],
        vec!["--port", &p, "--log-level", "LOUD"],
        vec!["--port", &p, "--client-timeout", "-1"],
        vec!["--port", &p, "--client-timeout=-1"],
        vec!["--port", &p, "--log-format", "xml"],
        vec!["--port", &p, "--platform", "macos"],
        vec!["--port", &p, "--no-such-option"],
    ] {
        let mut args = bad.clone();
        args.extend_from_slice(&["--data-dir", dd]);
        let (st, err) = run_to_exit(&args);
        assert_eq!(st.code(), Some(2), "{bad:?}: {st}; stderr: {err}");
        assert!(!err.trim().is_empty(), "{bad:?}: nothing on stderr");
    }

    // Port already in use → exit 1 with a message on stderr.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().port().to_string();
    let (st, err) = run_to_exit(&[
        "--host",
        "127.0.0.1",
        "--port",
        &busy,
        "--api-key",
        KEY,
        "--data-dir",
        dd,
    ]);
    assert_eq!(st.code(), Some(1), "busy port: {st}; stderr: {err}");
    assert!(!err.trim().is_empty(), "busy port: nothing on stderr");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_vars_configure_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("envdata");
    let dd = data.to_str().unwrap().to_string();
    let mut srv = Server::start(
        |_| Vec::new(),
        |port| {
            vec![
                ("AIP_PORT", port.to_owned()),
                ("AIP_API_KEY", KEY.to_owned()),
                ("AIP_DATA_DIR", dd.clone()),
                ("AIP_LOG_LEVEL", "OFF".to_owned()),
            ]
        },
        &tmp.path().join("env"),
    )
    .await;
    let c = http();
    let r = c.get(srv.url("/api/clients")).send().await.unwrap();
    assert_eq!(r.status(), 401, "AIP_API_KEY not applied");
    let r = c
        .get(srv.url("/api/clients"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Exercise the server a little (WS + a bad key), then check the logs.
    let ws = srv.connect_device("envdev").await;
    let r = c
        .get(srv.url("/api/clients"))
        .header("X-API-Key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(data.is_dir(), "AIP_DATA_DIR not used");
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_some(),
        "AIP_DATA_DIR is empty"
    );
    srv.kill9();
    let err = std::fs::read_to_string(&srv.stderr_path).unwrap();
    assert!(err.is_empty(), "AIP_LOG_LEVEL=OFF but stderr was:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = Server::standard(&data, &[]).await;
    let mut ws = srv.connect_device("termdev").await;

    let st = Command::new("kill")
        .arg("-TERM")
        .arg(srv.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());

    let close = tokio::time::timeout(Duration::from_secs(10), ws.expect_close())
        .await
        .expect("no close frame within 10 s");
    assert_eq!(close, Some(1001), "close frame");

    let st = srv
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("server did not exit within 10 s of SIGTERM");
    assert_eq!(
        st.code(),
        Some(0),
        "exit status {st}; stderr:\n{}",
        srv.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_emits_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = Server::standard(&data, &["--log-format", "json", "--log-level", "DEBUG"]).await;

    let c = http();
    for _ in 0..3 {
        let r = c
            .get(srv.url("/api/clients"))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .get(srv.url("/api/task_result/nope"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mut ws = srv.connect_device("jsondev").await;
    let sid = srv.dispatch("jsondev", "jsonjob").await;
    accept_task(&mut ws, "jsondev", "jsonjob", &sid).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.kill9();

    let err = srv.stderr();
    assert!(!err.contains(KEY), "API key leaked into the logs:\n{err}");

    let mut saw_listening = false;
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nfull stderr:\n{err}"));
        assert!(v.is_object(), "not a JSON object: {line}");
        if line.contains("listening") {
            saw_listening = true;
            break;
        }
    }
    assert!(saw_listening, "no 'listening' line in stderr:\n{err}");
    // With --log-format json, every line (not just up to "listening") is JSON.
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        let v: Result<Value, _> = serde_json::from_str(line);
        assert!(
            matches!(v, Ok(Value::Object(_))),
            "not a JSON object: {line}"
        );
    }
}
