//! Per-client credentials (`--keys`, issue 16) over real sockets: what each role may do on
//! `/api` and `/ws`, every refusal with its text, and who may replace a stale device.

use std::path::PathBuf;
use std::time::Duration;

use aip_protocol::errors::{self as text, http as detail};
use aip_server::keys::{sha256, to_hex};
use aip_testkit::{expect_error, spawn_app_with, TestApp, Ws};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OPS: &str = "ops-token-0123456789abcdef";
/// Stored as `token_sha256` only.
const LAPTOP: &str = "laptop-token-0123456789abcdef";
const LAB: &str = "lab-token-0123456789abcdef";
const ORCH: &str = "orch-token-0123456789abcdef";

/// The tests' key file (shared with the unit tests in `src/keys/tests.rs`), written to `dir`.
fn key_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, include_str!("fixtures/keys.toml")).expect("write keys");
    path
}

/// A server with the key file above; `api_key` next to it if given.
async fn app_with_keys(api_key: Option<&str>) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = key_file(&dir);
    let app = spawn_app_with(|c| {
        c.keys_file = Some(path);
        c.api_key = api_key.map(str::to_owned);
        c.duplicate_probe_timeout = Duration::from_millis(300);
    })
    .await;
    (app, dir)
}

fn ws_url(app: &TestApp, token: &str) -> String {
    format!("ws://{}/ws?token={token}", app.addr)
}

/// Registers on a connection made with `token` in `?token=`; returns the first answer.
async fn register(app: &TestApp, token: &str, frame: Value) -> (Ws, Value) {
    let mut ws = Ws::connect(&ws_url(app, token)).await;
    ws.send(frame).await;
    let answer = ws.recv().await;
    (ws, answer)
}

fn device(id: &str) -> Value {
    json!({"type": "register", "status": "ok", "client_type": "device", "client_id": id,
           "metadata": {"platform": "linux", "system_info": {"hostname": id}}})
}

fn constellation(id: &str, target: Option<&str>) -> Value {
    json!({"type": "register", "status": "ok", "client_type": "constellation", "client_id": id, "target_id": target})
}

fn assert_registered(answer: &Value) {
    assert_eq!(answer["type"], "heartbeat", "{answer}");
    assert_eq!(answer["status"], "ok", "{answer}");
}

/// The answer is an `error` with exactly `want`, then the server closes with 1008.
async fn assert_refused(ws: &mut Ws, answer: &Value, want: &str) {
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"], want, "{answer}");
    assert_eq!(ws.expect_close().await, Some(1008));
}

/// `GET path` with `token` as `X-API-Key`: status and `detail`.
async fn api_get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let resp = app
        .http
        .get(app.url(path))
        .header("X-API-Key", token)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

// ---- device keys ----

#[tokio::test]
async fn a_device_key_registers_as_its_ids_only_and_is_refused_on_the_api() {
    let (app, _dir) = app_with_keys(None).await;
    // `token_sha256` entry, glob entry.
    let (_laptop, ok) = register(&app, LAPTOP, device("laptop")).await;
    assert_registered(&ok);
    let (_lab, ok) = register(&app, LAB, device("lab-7")).await;
    assert_registered(&ok);

    let (mut ws, answer) = register(&app, LAPTOP, device("laptop2")).await;
    assert_refused(
        &mut ws,
        &answer,
        &text::register_not_permitted("device", "laptop2"),
    )
    .await;
    let (mut ws, answer) = register(&app, LAB, device("laptop")).await;
    assert_refused(
        &mut ws,
        &answer,
        &text::register_not_permitted("device", "laptop"),
    )
    .await;
    let (mut ws, answer) = register(&app, LAPTOP, constellation("laptop", None)).await;
    assert_refused(
        &mut ws,
        &answer,
        &text::register_not_permitted("constellation", "laptop"),
    )
    .await;

    for token in [LAPTOP, LAB] {
        let (code, body) = api_get(&app, "/api/clients", token).await;
        assert_eq!(
            (code, body["detail"].as_str()),
            (403, Some(detail::API_NOT_PERMITTED))
        );
        let resp = app
            .http
            .delete(app.url("/api/sessions/any"))
            .bearer_auth(token)
            .send()
            .await
            .expect("DELETE");
        assert_eq!(resp.status(), 403, "cancel over HTTP with a device key");
    }
    // Health stays open, and tells a device key no names.
    let (code, health) = api_get(&app, "/api/health", LAPTOP).await;
    assert_eq!(code, 200);
    assert!(health.get("online_clients").is_none(), "{health}");
}

#[tokio::test]
async fn a_token_sha256_entry_is_accepted_in_each_header_and_its_hash_is_not_a_token() {
    let (app, _dir) = app_with_keys(None).await;
    let mut req = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {LAPTOP}").parse().expect("header"),
    );
    let (inner, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let mut ws = Ws { inner };
    ws.send(device("laptop")).await;
    assert_registered(&ws.recv().await);

    let hash = to_hex(&sha256(LAPTOP));
    let bad = tokio_tungstenite::connect_async(ws_url(&app, &hash)).await;
    match bad {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
}

// ---- operator keys ----

#[tokio::test]
async fn an_operator_key_uses_the_api_and_connects_as_a_constellation_but_not_as_a_device() {
    let (app, _dir) = app_with_keys(None).await;
    let (_dev, ok) = register(&app, LAPTOP, device("laptop")).await;
    assert_registered(&ok);
    let (code, body) = api_get(&app, "/api/clients", OPS).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["online_clients"], json!(["laptop"]));
    let resp = app
        .http
        .get(app.url("/api/sessions"))
        .bearer_auth(OPS)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);

    // Any target, scoped or not.
    let (_console, ok) = register(&app, OPS, constellation("console", Some("laptop"))).await;
    assert_registered(&ok);
    let (mut ws, answer) = register(&app, OPS, device("ops-box")).await;
    assert_refused(
        &mut ws,
        &answer,
        &text::register_not_permitted("device", "ops-box"),
    )
    .await;
}

#[tokio::test]
async fn the_api_key_next_to_a_key_file_is_an_operator_credential() {
    let shared = "shared-api-key-0123456789";
    let (app, _dir) = app_with_keys(Some(shared)).await;
    let (code, _) = api_get(&app, "/api/clients", shared).await;
    assert_eq!(code, 200);
    let (_k, ok) = register(&app, shared, constellation("k", None)).await;
    assert_registered(&ok);
    let (mut ws, answer) = register(&app, shared, device("dev1")).await;
    assert_refused(
        &mut ws,
        &answer,
        &text::register_not_permitted("device", "dev1"),
    )
    .await;
}

// ---- constellation keys ----

#[tokio::test]
async fn a_constellation_key_addresses_its_targets_only() {
    let (app, _dir) = app_with_keys(None).await;
    let (mut lab, ok) = register(&app, LAB, device("lab-1")).await;
    assert_registered(&ok);
    let (mut laptop, ok) = register(&app, LAPTOP, device("laptop")).await;
    assert_registered(&ok);
    let (mut k, ok) = register(&app, ORCH, constellation("orch", None)).await;
    assert_registered(&ok);

    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "orch", "target_id": "lab-1", "session_id": "orch@1", "request": "tidy"})).await;
    assert_eq!(k.recv().await["session_id"], "orch@1");
    let task = lab.recv().await;
    assert_eq!(
        (task["type"].as_str(), task["session_id"].as_str()),
        (Some("task"), Some("orch@1"))
    );

    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "orch", "target_id": "laptop", "session_id": "orch@2", "request": "tidy"})).await;
    expect_error(&mut k, &text::target_not_permitted("laptop")).await;
    // Refused before the registry is consulted: an unknown device reads the same.
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "orch", "target_id": "nowhere", "request": "tidy"})).await;
    expect_error(&mut k, &text::target_not_permitted("nowhere")).await;
    k.send(json!({"type": "device_info_request", "status": "continue", "client_type": "constellation", "client_id": "orch", "target_id": "laptop", "request_id": "r1"})).await;
    expect_error(&mut k, text::DEVICE_INFO_OUT_OF_SCOPE).await;
    laptop.expect_silence(Duration::from_millis(200)).await;

    let (mut ws, answer) = register(&app, ORCH, constellation("orch2", Some("laptop"))).await;
    assert_refused(&mut ws, &answer, &text::target_not_permitted("laptop")).await;
    let (code, body) = api_get(&app, "/api/clients", ORCH).await;
    assert_eq!(
        (code, body["detail"].as_str()),
        (403, Some(detail::API_NOT_PERMITTED))
    );
}

// ---- unknown tokens ----

#[tokio::test]
async fn an_unknown_or_missing_token_is_refused_on_ws_and_api() {
    let (app, _dir) = app_with_keys(None).await;
    for url in [
        ws_url(&app, "unknown-token-0123456789"),
        format!("ws://{}/ws", app.addr),
    ] {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{url}")
            }
            other => panic!("{url}: expected 403, got {other:?}"),
        }
    }
    let (code, body) = api_get(&app, "/api/clients", "unknown-token-0123456789").await;
    assert_eq!(
        (code, body["detail"].as_str()),
        (401, Some(detail::INVALID_API_KEY))
    );
    let resp = app
        .http
        .get(app.url("/api/clients"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 401);
}

// ---- takeover (protocol.md §4.2 under credentials) ----

#[tokio::test]
async fn a_stale_device_is_replaced_only_under_a_key_for_its_id() {
    let (app, _dir) = app_with_keys(None).await;
    // Never read again: it cannot answer the probe.
    let (_stale, ok) = register(&app, LAPTOP, device("laptop")).await;
    assert_registered(&ok);

    // A device key for other ids does not get past registration.
    let (mut ws, answer) = register(&app, LAB, device("laptop")).await;
    assert_refused(
        &mut ws,
        &answer,
        &text::register_not_permitted("device", "laptop"),
    )
    .await;
    // Keys that may register under that id as a constellation may not replace the device.
    for token in [OPS, ORCH] {
        let (mut ws, answer) = register(&app, token, constellation("laptop", None)).await;
        assert_refused(&mut ws, &answer, &text::takeover_refused("laptop")).await;
    }
    let (_, body) = api_get(&app, "/api/clients", OPS).await;
    assert_eq!(body["clients"][0]["type"], "device", "{body}");

    // The device's own key replaces it.
    let (mut fresh, ok) = register(&app, LAPTOP, device("laptop")).await;
    assert_registered(&ok);
    aip_testkit::assert_alive(&mut fresh, "laptop").await;
    let (_, body) = api_get(&app, "/api/clients", OPS).await;
    assert_eq!(body["online_clients"], json!(["laptop"]));
}

#[tokio::test]
async fn a_live_device_keeps_its_id_even_against_its_own_key() {
    let (app, _dir) = app_with_keys(None).await;
    let (mut live, ok) = register(&app, LAB, device("lab-2")).await;
    assert_registered(&ok);
    let probe = tokio::spawn(async move {
        // Reading answers the server's probe ping.
        let _ = live.next_text(Duration::from_secs(2)).await;
        live
    });
    let (mut ws, answer) = register(&app, LAB, device("lab-2")).await;
    assert_refused(&mut ws, &answer, &text::duplicate_client("lab-2")).await;
    let mut live = probe.await.expect("reader");
    aip_testkit::assert_alive(&mut live, "lab-2").await;
}
