//! What `aip serve` says about itself: JSON log lines with the spec's field names, an
//! access line per HTTP request, `RUST_LOG` filters, and its version and build.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use aip_testkit::process as support;

use support::{free_port, BIN};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(dir: &Path, args: &[&str], rust_log: Option<&str>) -> Server {
    let port = free_port();
    let mut cmd = Command::new(&*BIN);
    cmd.args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.join("data"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("stderr.log")).unwrap());
    if let Some(f) = rust_log {
        cmd.env("RUST_LOG", f);
    }
    let server = Server {
        child: cmd.spawn().unwrap(),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{port}/api/health");
    while reqwest::get(&url).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

fn lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("stderr.log"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn json_lines_use_ts_level_msg_and_every_http_request_gets_an_access_line() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["--log-format", "json"], None).await;
    let body: Value = reqwest::get(format!(
        "http://127.0.0.1:{}/api/health?token=do-not-log-me",
        srv.port
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["build"]["commit"].is_string(), "{body}");
    let missing = reqwest::get(format!("http://127.0.0.1:{}/api/nope\x1b[2J", srv.port))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = lines(dir.path());
    for l in &log {
        let ts = l["ts"].as_str().unwrap_or_else(|| panic!("no ts: {l}"));
        assert!(
            ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "{l}"
        );
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&l["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(l["msg"].is_string(), "{l}");
        assert!(l.get("message").is_none(), "{l}");
    }
    let listening = log
        .iter()
        .find(|l| l["msg"] == "aip server listening")
        .unwrap();
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["tls"], false);
    let access: Vec<&Value> = log.iter().filter(|l| l["target"] == "aip_access").collect();
    let health = access
        .iter()
        .find(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.contains("/api/health"))
        })
        .unwrap_or_else(|| panic!("no access line for /api/health: {log:?}"));
    assert_eq!(health["method"], "GET");
    assert_eq!(health["status"], 200);
    assert!(health["duration_ms"].is_number());
    assert!(health["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let raw = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        !raw.contains("do-not-log-me"),
        "the query (token) was logged"
    );
    assert!(
        !raw.contains('\x1b'),
        "a raw control character reached the log"
    );
    assert!(access.iter().any(|l| l["status"] == 404));
}

#[tokio::test]
async fn rust_log_replaces_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    // --log-level OFF, but RUST_LOG asks for the access log only.
    let srv = start(
        dir.path(),
        &["--log-format", "json", "--log-level", "OFF"],
        Some("aip_access=info"),
    )
    .await;
    reqwest::get(format!("http://127.0.0.1:{}/api/clients", srv.port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = lines(dir.path());
    assert!(!log.is_empty());
    assert!(log.iter().all(|l| l["target"] == "aip_access"), "{log:?}");
    // A filter that cannot be read is a usage error.
    let out = Command::new(&*BIN)
        .args(["serve", "--port", "1"])
        .env("RUST_LOG", "aip=notalevel")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUST_LOG"));
}

#[test]
fn version_names_the_build() {
    let out = Command::new(&*BIN).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("aip {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

/// A device `client_id` registered on the server at `port` with `key` (a raw peer: what it
/// sends is the test's).
async fn registered(port: u16, key: &str, client_id: &str) -> aip_testkit::Ws {
    let url = format!("ws://127.0.0.1:{port}/ws?token={key}");
    let mut ws = aip_testkit::Ws::connect(&url).await;
    ws.send(serde_json::json!({"type": "register", "status": "ok",
        "client_type": "device", "client_id": client_id}))
        .await;
    ws
}

#[tokio::test]
async fn client_supplied_text_cannot_forge_flood_or_escape_the_text_log() {
    let dir = tempfile::tempdir().unwrap();
    let key = "log-test-key-0123456789abcdef";
    let srv = start(dir.path(), &["--api-key", key], None).await;
    let mut ws = registered(srv.port, key, "liar").await;
    let forged = format!(
        "boom\n2026-12-01T00:00:00.000000Z  INFO aip_server: forged line\u{1b}[2J{}",
        "y".repeat(100_000)
    );
    ws.send(serde_json::json!({"type": "error", "status": "error",
        "client_id": "liar", "error": forged}))
        .await;
    // A refusal that echoes a client value (an unknown target) and a long unauthenticated path.
    ws.send(
        serde_json::json!({"type": "task", "status": "continue", "client_id": "liar",
        "target_id": format!("t\u{1b}[31m{}", "z".repeat(50_000)), "request": "x"}),
    )
    .await;
    let long_path = format!("http://127.0.0.1:{}/api/{}", srv.port, "p".repeat(60_000));
    assert_eq!(reqwest::get(&long_path).await.unwrap().status(), 401);
    let refused =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws?token=wrong", srv.port))
            .await;
    assert!(refused.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!raw.contains('\u{1b}'), "a raw escape reached the log");
    assert!(
        !raw.lines()
            .any(|l| l.starts_with("2026-12-01T00:00:00.000000Z")),
        "a forged line reached the log:\n{raw}"
    );
    let longest = raw.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a {longest}-byte log line");
    assert!(raw.contains("client reported an error"), "{raw}");
    let refusals: Vec<&str> = raw.lines().filter(|l| l.contains("refused")).collect();
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("wrong API key") && l.contains("peer=127.0.0.1")),
        "{raw}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("wrong token") && l.contains("peer=127.0.0.1")),
        "{raw}"
    );
}

/// A client that repeats what gets warned about (its own errors, refused messages, wrong
/// keys) writes a few lines a minute, not one per frame; it still gets every answer.
#[tokio::test]
async fn repeated_warnings_about_one_client_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let key = "flood-test-key-0123456789abcdef";
    let srv = start(dir.path(), &["--api-key", key], None).await;
    // A peer guessing keys: 50 refusals over HTTP.
    let http = reqwest::Client::new();
    for _ in 0..50 {
        let r = http
            .get(format!("http://127.0.0.1:{}/api/clients", srv.port))
            .header("X-API-Key", "guess-0123456789abcdef")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let mut ws = registered(srv.port, key, "noisy").await;
    ws.recv().await;
    // In rounds of 50 pairs, each answered before the next (a client that reads).
    for round in 0..4 {
        for i in 0..50 {
            ws.send(serde_json::json!({"type": "error", "status": "error",
                "client_id": "noisy", "error": format!("flood {round}.{i}")}))
                .await;
            ws.send(serde_json::json!({"type": "task", "status": "continue",
                "client_id": "noisy", "target_id": "nobody", "request": "x"}))
                .await;
        }
        for _ in 0..100 {
            ws.recv().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let warned = raw
        .lines()
        .filter(|l| l.contains("client reported an error") || l.contains("message refused"))
        .count();
    assert!(
        (1..=5).contains(&warned),
        "{warned} warning lines for 400 frames:\n{raw}"
    );
    let refused = raw.lines().filter(|l| l.contains("wrong API key")).count();
    assert!(
        (1..=5).contains(&refused),
        "{refused} warning lines for 50 refused requests:\n{raw}"
    );
}
