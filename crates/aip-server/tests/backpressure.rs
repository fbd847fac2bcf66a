//! Backpressure and memory bounds (issue 16 items 2 and 4), over real sockets: a burst of
//! dispatches to a device that reads slowly gets 503s instead of disconnecting it; a
//! client that never reads is closed with its queue within its byte budget; texts the
//! server echoes are cut; oversize fields are refused by name.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aip_testkit::{assert_alive, expect_error, spawn_app_with, TestApp, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const BUSY: &str = "Device is busy: too many frames are waiting to be sent to it; retry later";

/// A WebSocket whose socket has a small receive buffer, so that what it does not read
/// stays in the server's queue instead of the kernel's buffers.
async fn small_window_ws(
    app: &TestApp,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(app.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(app.ws_url(), tcp)
        .await
        .expect("handshake");
    ws
}

async fn register(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    frame: Value,
) -> Value {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    loop {
        match tokio::time::timeout(aip_testkit::WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).expect("json"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no answer to the registration: {other:?}"),
        }
    }
}

/// What the slow device saw.
#[derive(Default)]
struct Seen {
    tasks: AtomicUsize,
    closed: AtomicBool,
}

/// Device `id` that reads nothing until `go`, then reads every frame and ends every task
/// it is given as completed.
async fn slow_device(
    app: &TestApp,
    id: &'static str,
    go: tokio::sync::oneshot::Receiver<()>,
) -> (Arc<Seen>, tokio::task::JoinHandle<()>) {
    let mut ws = small_window_ws(app).await;
    let ack = register(
        &mut ws,
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": id}),
    )
    .await;
    assert_eq!(ack["status"], "ok", "{ack}");
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let _ = go.await;
        while let Some(frame) = ws.next().await {
            let Ok(Message::Text(t)) = frame else {
                if !matches!(frame, Ok(Message::Ping(_) | Message::Pong(_))) {
                    break;
                }
                continue;
            };
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["type"] == "task" {
                s.tasks.fetch_add(1, Ordering::Relaxed);
                let end = json!({"type": "task_end", "status": "completed", "client_id": id,
                                 "session_id": v["session_id"]});
                if ws
                    .send(Message::Text(end.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        s.closed.store(true, Ordering::Relaxed);
    });
    (seen, task)
}

/// `POST /api/dispatch`: status, `Retry-After`, body.
async fn dispatch(app: &TestApp, body: &Value) -> (u16, Option<String>, Value) {
    let resp = app
        .http
        .post(app.url("/api/dispatch"))
        .json(body)
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------
// Item 2: a dispatch burst

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_burst_to_a_slowly_reading_device_gets_503s_and_never_disconnects_it() {
    let app = spawn_app_with(|c| c.max_active_sessions = 10_000).await;
    let (go, paused) = tokio::sync::oneshot::channel();
    let (seen, _device) = slow_device(&app, "d1", paused).await;
    // Tasks of 16 KB, so that a few hundred fill what the kernel buffers (4 MB).
    let pad = "x".repeat(16_000);
    let answers: Vec<_> = futures_util::stream::iter(0..1500)
        .map(|i| {
            let body = json!({"target_id": "d1", "request": format!("task {i} {pad}")});
            let app = &app;
            async move { dispatch(app, &body).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut accepted = Vec::new();
    let mut busy = 0;
    for (status, retry, body) in answers {
        match status {
            200 => accepted.push(body["session_id"].as_str().expect("sid").to_owned()),
            503 => {
                assert_eq!(retry.as_deref(), Some("1"), "{body}");
                assert_eq!(body["detail"], BUSY);
                busy += 1;
            }
            other => panic!("dispatch answered {other}: {body}"),
        }
    }
    assert!(
        busy > 0,
        "the burst never filled the queue: the test proves nothing"
    );
    // The device reads again, and everything it was given.
    let _ = go.send(());
    assert_eq!(accepted.len() + busy, 1500);
    for sid in &accepted {
        let done = app.wait_done(sid).await;
        assert_eq!(done["state"], "completed", "{done}");
    }
    assert_eq!(seen.tasks.load(Ordering::Relaxed), accepted.len());
    assert!(
        !seen.closed.load(Ordering::Relaxed),
        "the device was disconnected"
    );
    assert_eq!(app.online().await, json!(["d1"]));
    let (_, cancelled) = app.get("/api/sessions?state=cancelled").await;
    assert_eq!(cancelled["sessions"], json!([]), "{cancelled}");
}

#[tokio::test]
async fn a_constellation_task_to_a_busy_device_gets_the_busy_error_and_the_device_stays() {
    let app = spawn_app_with(|c| c.outgoing_queue = 8).await;
    // A device that reads nothing: its queue fills with pushed tasks.
    let mut ws = small_window_ws(&app).await;
    register(
        &mut ws,
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "d1"}),
    )
    .await;
    let pad = "x".repeat(64_000);
    let mut busy = false;
    for i in 0..200 {
        let (status, retry, body) = dispatch(
            &app,
            &json!({"target_id": "d1", "request": format!("{i} {pad}")}),
        )
        .await;
        if status == 503 {
            assert_eq!(
                (retry.as_deref(), &body["detail"]),
                (Some("1"), &json!(BUSY))
            );
            busy = true;
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    assert!(busy, "never busy");
    let mut c = app.constellation("c1", Some("d1")).await;
    c.send(
        json!({"type": "task", "status": "ok", "client_type": "constellation",
                  "client_id": "c1", "target_id": "d1", "request": "ls"}),
    )
    .await;
    expect_error(&mut c, BUSY).await;
    assert_eq!(app.online().await, json!(["d1", "c1"]));
}

// ---------------------------------------------------------------------------
// Item 4: memory in bytes

#[tokio::test]
async fn a_client_that_never_reads_its_echoed_errors_is_closed() {
    let app = spawn_app_with(|c| c.outgoing_queue_bytes = 64 * 1024).await;
    let mut ws = small_window_ws(&app).await;
    register(
        &mut ws,
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "n1"}),
    )
    .await;
    let frame = json!({"type": "error", "status": "error", "client_id": "n1",
                       "error": "E".repeat(8 * 1024)})
    .to_string();
    // At most 40 MB sent; the server closes the socket long before.
    let mut sent = 0;
    while sent < 5000 {
        let send = ws.send(Message::Text(frame.clone().into()));
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    app.wait_gone("n1").await;
    assert!(sent < 5000, "still accepting after {sent} frames");
}

#[tokio::test]
async fn an_echoed_error_text_is_cut_to_one_kibibyte() {
    let app = spawn_app_with(|_| {}).await;
    let mut d = app.device("d1").await;
    d.send(
        json!({"type": "error", "status": "error", "client_id": "d1",
                  "error": "é".repeat(50_000)}),
    )
    .await;
    let echo = d.recv().await;
    let text = echo["error"].as_str().expect("error text");
    assert!(text.len() <= 1024, "{} bytes", text.len());
    assert!(text.starts_with("éé"));
    assert!(text.ends_with("… (truncated)"), "{text}");
    // A long target id in a refusal is cut likewise.
    let mut c = app.constellation("c1", None).await;
    c.send(
        json!({"type": "task", "status": "ok", "client_type": "constellation",
                  "client_id": "c1", "target_id": "t".repeat(100_000), "request": "ls"}),
    )
    .await;
    let refusal = c.recv().await;
    assert!(refusal["error"].as_str().expect("error").len() <= 1024);
}

#[tokio::test]
async fn oversize_fields_are_refused_naming_the_field() {
    let app = spawn_app_with(|_| {}).await;
    let mut d = app.device("d1").await;
    let big = "r".repeat(1024 * 1024 + 1);
    let (status, body) = app
        .dispatch(json!({"target_id": "d1", "request": big}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], "request is too long: at most 1048576 bytes");
    let mut c = app.constellation("c1", Some("d1")).await;
    c.send(
        json!({"type": "task", "status": "ok", "client_type": "constellation",
                  "client_id": "c1", "target_id": "d1", "request": big}),
    )
    .await;
    expect_error(&mut c, "request is too long: at most 1048576 bytes").await;
    // A task_end whose error is over 64 KiB: refused, the session still running.
    let sid = app
        .dispatched(json!({"target_id": "d1", "request": "ls"}))
        .await;
    let task = d.recv().await;
    assert_eq!(task["session_id"], json!(sid));
    d.send(
        json!({"type": "task_end", "status": "failed", "client_id": "d1",
                  "session_id": sid, "error": "e".repeat(64 * 1024 + 1)}),
    )
    .await;
    expect_error(&mut d, "error is too long: at most 65536 bytes").await;
    let (_, running) = app.get(&format!("/api/task_result/{sid}")).await;
    assert_ne!(running["status"], "failed", "{running}");
    assert_alive(&mut d, "d1").await;
    // Registration metadata over 1 MiB.
    let mut fat = Ws::connect(&app.ws_url()).await;
    fat.send(
        json!({"type": "register", "status": "ok", "client_type": "device",
                    "client_id": "fat", "metadata": {"tools": "m".repeat(1024 * 1024)}}),
    )
    .await;
    expect_error(&mut fat, "metadata is too long: at most 1048576 bytes").await;
    assert_eq!(fat.expect_close().await, Some(1008));
}
