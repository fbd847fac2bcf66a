//! `--local`: non-loopback peers are refused with 403 before anything else, on every route.
//! A non-loopback peer cannot be produced on this machine's loopback, so the router is
//! driven in-process with axum's `MockConnectInfo` standing in for the peer address.

use std::net::SocketAddr;
use std::sync::Arc;

use aip_server::storage::sqlite::SqliteStore;
use aip_server::{AppState, ServerConfig};
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

async fn call(local_only: bool, peer: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("store");
    let config = ServerConfig {
        local_only,
        data_dir: dir.path().to_path_buf(),
        ..ServerConfig::default()
    };
    let state = AppState::new(config, Arc::new(store), None);
    let peer: SocketAddr = peer.parse().expect("addr");
    let app = aip_server::web::router(state).layer(MockConnectInfo(peer));
    let resp = app
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn local_mode_refuses_non_loopback_peers_on_every_route() {
    for path in ["/api/health", "/api/clients", "/ws", "/api/task_result/x"] {
        let (status, body) = call(true, "192.0.2.7:40000", path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            body["detail"],
            "Only loopback clients are accepted (--local)"
        );
    }
    let (status, _) = call(true, "[2001:db8::1]:40000", "/api/health").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn local_mode_accepts_loopback_peers() {
    for peer in [
        "127.0.0.1:1",
        "127.8.9.10:1",
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
    ] {
        let (status, body) = call(true, peer, "/api/health").await;
        assert_eq!(status, StatusCode::OK, "{peer}");
        assert_eq!(body["status"], "healthy");
    }
}

#[tokio::test]
async fn without_local_mode_any_peer_is_served() {
    let (status, _) = call(false, "192.0.2.7:40000", "/api/health").await;
    assert_eq!(status, StatusCode::OK);
}
