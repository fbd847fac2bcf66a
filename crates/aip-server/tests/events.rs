//! `GET /api/events` over real sockets: what a subscriber sees of clients and sessions and
//! in which order, the key it needs, resuming with `Last-Event-ID`, and a subscriber that
//! never reads being disconnected while the server carries on.

use std::time::Duration;

use aip_testkit::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "events-test-key-0123456789";

/// One SSE event as read off the wire.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A subscriber reading the stream with reqwest, as `curl -N` would.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(app: &TestApp, last_id: Option<&str>) -> Stream {
        let mut rb = app
            .http
            .get(app.url("/api/events"))
            .header("Authorization", format!("Bearer {KEY}"));
        if let Some(id) = last_id {
            rb = rb.header("Last-Event-ID", id);
        }
        let resp = rb.send().await.expect("GET /api/events");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments and `retry:` skipped).
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("JSON data"));
                    }
                }
                if let Some(data) = data {
                    return Sse { id, event, data };
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an event within the wait")
                .expect("the stream is readable")
                .expect("the stream did not end");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The next event of type `kind`, skipping others.
    async fn next_of(&mut self, kind: &str) -> Sse {
        loop {
            let e = self.next().await;
            if e.event == kind {
                return e;
            }
        }
    }
}

async fn app() -> TestApp {
    spawn_app_with(|c| c.api_key = Some(KEY.into())).await
}

/// Runs a one-command plan on the test device `d` (which echoes and answers it).
async fn run_one(app: &TestApp, d: &mut Ws, id: &str, task_name: &str) -> String {
    let sid = app
        .dispatched(
            json!({"target_id": id, "request": "plan", "task_name": task_name,
            "commands": commands(&["execute_command"])}),
        )
        .await;
    let task = d.recv().await;
    assert_eq!(task["type"], "task");
    d.send(json!({"type": "task", "status": "continue", "client_type": "device", "client_id": id, "task_name": task_name, "request": "plan", "session_id": sid})).await;
    let cmd = d.recv_until(|m| m["type"] == "command").await;
    d.send(results_for(&cmd, id)).await;
    expect_task_end(d, &sid, "completed").await;
    sid
}

// ---------------------------------------------------------------------------
// What a subscriber sees

#[tokio::test]
async fn a_subscriber_sees_a_device_and_its_session_in_order_with_increasing_ids() {
    let app = app().await;
    let mut events = Stream::open(&app, None).await;
    let mut d = app
        .device_with(
            "dev1",
            json!({"platform": "linux", "tags": {"rack": "4", "n": 1}}),
        )
        .await;
    let sid = run_one(&app, &mut d, "dev1", "job1").await;
    d.close().await;

    let mut seen = Vec::new();
    loop {
        let e = events.next().await;
        let last = e.event == "client_disconnected";
        seen.push(e);
        if last {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "client_connected",
            "session_created",
            "session_state",
            "session_round",
            "session_ended",
            "client_disconnected"
        ]
    );
    let ids: Vec<u64> = seen.iter().map(|e| e.id.expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for e in &seen {
        assert_eq!(e.data["type"], e.event.as_str(), "{e:?}");
    }
    let connected = &seen[0].data;
    assert_eq!(connected["client_id"], "dev1");
    assert_eq!(connected["client_type"], "device");
    assert_eq!(connected["platform"], "linux");
    assert_eq!(connected["tags"], json!({"rack": "4"}), "string tags only");
    let created = &seen[1].data;
    assert_eq!(created["session_id"], sid.as_str());
    assert_eq!(created["task_name"], "job1");
    assert_eq!(created["client_id"], "dev1");
    assert_eq!(created["state"], "created");
    assert_eq!(seen[2].data["state"], "running");
    assert_eq!(seen[3].data["round"], 1);
    assert_eq!(seen[3].data["statuses"], json!(["success"]));
    assert_eq!(seen[4].data["state"], "completed");
    assert!(seen[4].data["finished_at"].is_string());
    assert!(seen[4].data["requester"].is_null(), "an HTTP dispatch");
    assert_eq!(seen[5].data["client_id"], "dev1");
    // `/api/clients` shows the same tags, and the live session count.
    let _d2 = app
        .device_with(
            "dev2",
            json!({"platform": "linux", "tags": {"role": "web"}}),
        )
        .await;
    let (_, clients) = app.get("/api/clients").await;
    assert_eq!(clients["clients"][0]["tags"], json!({"role": "web"}));
    assert_eq!(clients["clients"][0]["sessions"], 0);
}

#[tokio::test]
async fn the_stream_needs_the_key_and_takes_it_in_either_header() {
    let app = app().await;
    let refused = reqwest::get(app.url("/api/events")).await.expect("GET");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body, json!({"detail": "Invalid API key"}));
    let wrong = app
        .http
        .get(app.url("/api/events"))
        .header("X-API-Key", "not-the-key-0123456789")
        .send()
        .await
        .expect("GET");
    assert_eq!(wrong.status(), 401);
    let with_header = app
        .http
        .get(app.url("/api/events"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .expect("GET");
    assert_eq!(with_header.status(), 200);
    let _bearer = Stream::open(&app, None).await;
}

// ---------------------------------------------------------------------------
// Resuming

#[tokio::test]
async fn last_event_id_resumes_after_the_last_event_seen_and_an_unknown_one_resyncs() {
    let app = app().await;
    let mut first = Stream::open(&app, None).await;
    let d1 = app.device("dev1").await;
    let seen = first.next_of("client_connected").await;
    drop(first);
    // Missed while no one was connected (the bus keeps recording for a while).
    d1.close().await;
    let _d2 = app.device("dev2").await;
    let mut resumed = Stream::open(&app, Some(&seen.id.expect("id").to_string())).await;
    let a = resumed.next().await;
    let b = resumed.next().await;
    assert_eq!(
        (a.event.as_str(), &a.data["client_id"]),
        ("client_disconnected", &json!("dev1"))
    );
    assert_eq!(
        (b.event.as_str(), &b.data["client_id"]),
        ("client_connected", &json!("dev2"))
    );
    assert!(seen.id < a.id && a.id < b.id);
    // Then live events follow.
    let _d3 = app.device("dev3").await;
    assert_eq!(resumed.next().await.data["client_id"], "dev3");

    for bad in ["1", "not-a-number", "99999999999999999"] {
        let mut s = Stream::open(&app, Some(bad)).await;
        let e = s.next().await;
        assert_eq!(e.event, "resync", "{bad}: {e:?}");
        assert_eq!(e.id, None);
    }
}

// ---------------------------------------------------------------------------
// Slow subscribers

#[tokio::test]
async fn a_subscriber_that_never_reads_is_disconnected_and_the_server_keeps_working() {
    let app = app().await;
    // A subscriber with a tiny receive window that reads its headers and then nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut slow = socket.connect(app.addr).await.expect("connect");
    slow.write_all(
        format!("GET /api/events HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut head = [0u8; 256];
    let n = slow.read(&mut head).await.expect("head");
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // And one that keeps up, reading all the while.
    let mut fast = Stream::open(&app, None).await;
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        loop {
            let e = fast.next().await;
            if tx.send(e).is_err() {
                return;
            }
        }
    });

    // Many events: devices coming and going, each registration with 16 KB of tags (the
    // kernel's socket buffers hold megabytes before the server's own queue fills).
    let tags: serde_json::Map<String, Value> = (0..128)
        .map(|i| (format!("tag{i:03}"), json!("v".repeat(120))))
        .collect();
    let metadata = json!({"platform": "linux", "tags": tags});
    let mut published = 0;
    let mut dropped = false;
    for round in 0..2000 {
        let d = app
            .device_with(&format!("churn-{round}"), metadata.clone())
            .await;
        d.close().await;
        published += 2;
        if round % 25 == 24 && dropped_subscribers(&app).await > 0 {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the slow subscriber is still connected after {published} events"
    );
    // Its connection is closed: what was buffered drains, then the stream ends.
    assert!(
        closed_after_draining(&mut slow).await,
        "the slow socket is still open"
    );
    // The reader that kept up saw every event, in order, and the server still works.
    let mut last = 0;
    let mut churn = 0;
    while churn < published {
        let e = tokio::time::timeout(WAIT, received.recv())
            .await
            .expect("an event")
            .expect("the reader runs");
        assert!(e.id.expect("id") > last, "{e:?}");
        last = e.id.expect("id");
        churn += 1;
    }
    let mut d = app.device("dev1").await;
    run_one(&app, &mut d, "dev1", "after").await;
    loop {
        let e = tokio::time::timeout(WAIT, received.recv())
            .await
            .expect("an event")
            .expect("reader");
        if e.event == "session_ended" {
            assert_eq!(e.data["state"], "completed");
            break;
        }
    }
    reading.abort();
}

/// `aip_event_subscribers_dropped_total` (0 before the first drop).
async fn dropped_subscribers(app: &TestApp) -> u64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("aip_event_subscribers_dropped_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

/// Reads `slow` until the server's close (true) or 5 s without one (false).
async fn closed_after_draining(slow: &mut tokio::net::TcpStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, slow.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Long-lived streams

#[tokio::test]
async fn a_stream_outlives_the_idle_timeout_and_ends_with_a_graceful_shutdown() {
    let app = spawn_app_with(|c| {
        c.api_key = Some(KEY.into());
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut events = Stream::open(&app, None).await;
    // Streaming is not idle: still open well past --idle-timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _d = app.device("late").await;
    assert_eq!(events.next().await.data["client_id"], "late");
    // A shutdown ends the stream instead of waiting for it.
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let rest = tokio::time::timeout(WAIT, async {
        loop {
            match events.resp.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream did not end");
}
