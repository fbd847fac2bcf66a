//! Hostile sockets (issue 16 item 1), over real sockets with short configured timeouts:
//! slow or idle HTTP connections are closed, the socket caps refuse the next socket while
//! the server stays reachable, and an upgraded WebSocket is not touched by any of it.

use std::net::SocketAddr;
use std::time::Duration;

use aip_testkit::{assert_alive, spawn_app_with, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The short timeout the tests configure.
const SHORT: Duration = Duration::from_millis(300);
/// How long a test waits for the server to close a socket.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

async fn app_with_short(field: &'static str) -> TestApp {
    spawn_app_with(|c| {
        // Long by default, so that only the timeout under test can close a socket.
        c.header_timeout = Duration::from_secs(30);
        c.body_timeout = Duration::from_secs(30);
        c.idle_timeout = Duration::from_secs(30);
        match field {
            "header" => c.header_timeout = SHORT,
            "body" => c.body_timeout = SHORT,
            "idle" => c.idle_timeout = SHORT,
            _ => unreachable!(),
        }
    })
    .await
}

/// Everything the server writes until it closes the socket, and when it closed;
/// panics if it is still open after [`CLOSE_WAIT`].
async fn read_until_closed(tcp: &mut TcpStream) -> (String, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(CLOSE_WAIT, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after {CLOSE_WAIT:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Instant::now())
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A socket to `addr` from the local address `from` (any port).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

/// One `GET /api/health` on a fresh socket from `from`; the status line, or what ended it.
async fn health_from(from: [u8; 4], addr: SocketAddr) -> String {
    let mut tcp = connect_from(from, addr).await;
    let _ = tcp
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let (text, _) = read_until_closed(&mut tcp).await;
    text.lines().next().unwrap_or("(closed)").to_owned()
}

/// Retries [`health_from`] until it answers 200 (a closed socket's slot comes back once
/// the server has seen the close), for at most two seconds.
async fn reachable_from(from: [u8; 4], addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let status = health_from(from, addr).await;
        if status.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            Instant::now() < until,
            "not reachable from {from:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens `n` sockets that send nothing, and waits until the server has taken them.
async fn hold(n: usize, from: [u8; 4], addr: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(connect_from(from, addr).await);
    }
    // The accept loop runs apart from connect(): give it a moment to take them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    held
}

/// The server refuses a socket: a 503 or a plain close, at once.
async fn assert_refused(from: [u8; 4], addr: SocketAddr) {
    let mut tcp = connect_from(from, addr).await;
    let started = Instant::now();
    let (text, closed) = read_until_closed(&mut tcp).await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503"),
        "refusal: {text:?}"
    );
    if !text.is_empty() {
        assert!(text.contains("Too many connections"), "{text}");
    }
    assert!(closed - started < Duration::from_secs(1), "closed at once");
}

// ---------------------------------------------------------------------------
// Timeouts

#[tokio::test]
async fn partial_request_headers_are_closed_after_the_header_timeout() {
    let app = app_with_short("header").await;
    let mut tcp = TcpStream::connect(app.addr).await.expect("connect");
    let started = Instant::now();
    tcp.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let (text, closed) = read_until_closed(&mut tcp).await;
    assert!(!text.contains(" 200 "), "never answered: {text}");
    assert!(closed - started >= SHORT - Duration::from_millis(50));
    reachable_from([127, 0, 0, 1], app.addr).await;
}

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed_after_the_header_timeout() {
    let app = app_with_short("header").await;
    let mut tcp = TcpStream::connect(app.addr).await.expect("connect");
    let started = Instant::now();
    let (text, closed) = read_until_closed(&mut tcp).await;
    assert_eq!(text, "");
    assert!(closed - started >= SHORT - Duration::from_millis(50));
}

#[tokio::test]
async fn a_half_sent_websocket_handshake_is_closed_after_the_header_timeout() {
    let app = app_with_short("header").await;
    let mut tcp = TcpStream::connect(app.addr).await.expect("connect");
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        .await
        .expect("write");
    let (text, _) = read_until_closed(&mut tcp).await;
    assert!(!text.contains(" 101 "), "never upgraded: {text}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = app_with_short("idle").await;
    let mut tcp = TcpStream::connect(app.addr).await.expect("connect");
    tcp.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(CLOSE_WAIT, tcp.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let answered = Instant::now();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive at first: a second request on the same socket is answered.
    tcp.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let n = tokio::time::timeout(CLOSE_WAIT, tcp.read(&mut buf))
        .await
        .expect("a second answer")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (rest, closed) = read_until_closed(&mut tcp).await;
    assert_eq!(rest, "");
    assert!(closed - answered >= SHORT - Duration::from_millis(50));
}

#[tokio::test]
async fn a_declared_body_never_sent_gets_408_and_the_socket_is_closed() {
    let app = app_with_short("body").await;
    let mut tcp = TcpStream::connect(app.addr).await.expect("connect");
    tcp.write_all(
        b"POST /api/dispatch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"request\":",
    )
    .await
    .expect("write");
    let (text, _) = read_until_closed(&mut tcp).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("Request body not received in time"), "{text}");
}

#[tokio::test]
async fn a_body_over_the_http_limit_is_refused_413() {
    let app = spawn_app_with(|c| c.max_http_body = 1024).await;
    let body = serde_json::json!({"client_id": "d1", "request": "x".repeat(2048)}).to_string();
    let (status, answer) = app.post_raw("/api/dispatch", body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["detail"], "Request body too large");
}

// ---------------------------------------------------------------------------
// Socket caps

#[tokio::test]
async fn the_per_address_cap_refuses_the_next_socket_while_other_addresses_get_in() {
    let app = spawn_app_with(|c| c.max_sockets_per_ip = 8).await;
    let mut held = hold(8, [127, 0, 0, 1], app.addr).await;
    assert_refused([127, 0, 0, 1], app.addr).await;
    reachable_from([127, 0, 0, 2], app.addr).await;
    held.pop();
    reachable_from([127, 0, 0, 1], app.addr).await;
}

#[tokio::test]
async fn the_total_cap_refuses_the_next_socket_and_frees_slots_on_close() {
    let app = spawn_app_with(|c| c.max_sockets = Some(8)).await;
    let mut held = hold(4, [127, 0, 0, 1], app.addr).await;
    held.extend(hold(4, [127, 0, 0, 2], app.addr).await);
    assert_refused([127, 0, 0, 3], app.addr).await;
    held.clear();
    reachable_from([127, 0, 0, 3], app.addr).await;
}

#[tokio::test]
async fn an_upgraded_websocket_keeps_its_socket_slot() {
    let app = spawn_app_with(|c| c.max_sockets = Some(2)).await;
    let mut d1 = app.device("d1").await;
    let _d2 = app.device("d2").await;
    assert_refused([127, 0, 0, 1], app.addr).await;
    assert_alive(&mut d1, "d1").await;
}

// ---------------------------------------------------------------------------
// WebSockets are not HTTP connections

#[tokio::test]
async fn a_registered_device_idle_past_every_http_timeout_stays_connected() {
    let app = spawn_app_with(|c| {
        c.header_timeout = SHORT;
        c.body_timeout = SHORT;
        c.idle_timeout = SHORT;
    })
    .await;
    let mut d = app.device("d1").await;
    // Five times the timeouts, with heartbeats as a device sends them, and a stretch of
    // complete silence longer than every HTTP timeout.
    for _ in 0..5 {
        tokio::time::sleep(SHORT).await;
        assert_alive(&mut d, "d1").await;
    }
    tokio::time::sleep(SHORT * 3).await;
    assert_alive(&mut d, "d1").await;
    assert_eq!(app.online().await, serde_json::json!(["d1"]));
}
