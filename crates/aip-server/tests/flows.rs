//! The flows of protocol.md §3 end to end: real server, real sockets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn device_registers_heartbeats_and_is_listed() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    d.send(json!({"type": "heartbeat", "status": "ok", "client_id": "dev1"})).await;
    let ack = d.recv().await;
    assert_eq!(ack["type"], "heartbeat");
    assert_eq!(ack["status"], "ok");
    assert!(ack["session_id"].is_null());
    assert!(ack["response_id"].is_string());

    let (code, body) = app.get("/api/clients").await;
    assert_eq!(code, 200);
    assert_eq!(body["online_clients"], json!(["dev1"]));
    let c = &body["clients"][0];
    assert_eq!(c["type"], "device");
    assert_eq!(c["platform"], "linux");
    assert!(c["connected_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(c["last_seen"].is_string());
    assert!(c["target_id"].is_null());
}
