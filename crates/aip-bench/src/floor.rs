//! The raw floor: the least a server must do to answer every `aip bench` scenario, so the
//! aip figures can be given as ratios to it.
//!
//! - WebSocket (any path): tokio-tungstenite with the server's small buffers, one task per
//!   connection that reads the socket and an mpsc channel (frames pushed by the HTTP side)
//!   and writes itself. Every text frame is parsed with serde_json to find its `type`.
//!   `register` and `heartbeat` are answered with one fixed `heartbeat`/`ok` frame of the
//!   real server's size; `register` also enters the `client_id` into the device map. The
//!   device's echo of a `task` gets the acknowledgement (`heartbeat`/`ok` with the session
//!   id) and the `command` (the first of the dispatched `commands`, with a `call_id`);
//!   `command_results` gets `task_end` `completed`.
//! - HTTP/1.1 (hyper, requests whose path starts with `/api/`): `POST /api/dispatch`
//!   parses `{target_id, request, task_name, commands}`, pushes the `task` frame to the
//!   device and answers `dispatched`; `GET /api/task_result/{session_id}` answers
//!   `done`/`completed` once `task_end` was sent (and forgets the session), else 404.
//!
//! No durability, no sessions beyond a map per connection, no timeouts, no validation
//! beyond what routing needs, no pings, no auth. A connection is HTTP or WebSocket by the
//! path of its first request line (peeked, so the WebSocket side reads the raw socket).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The answer to `register` and `heartbeat`: the real server's acknowledgement, with every
/// field in declaration order, a fixed timestamp and response id.
pub const ACK: &str = concat!(
    r#"{"type":"heartbeat","status":"ok","user_request":null,"agent_name":null,"#,
    r#""process_name":null,"root_name":null,"actions":null,"messages":null,"error":null,"#,
    r#""session_id":null,"task_name":null,"timestamp":"2025-01-01T10:02:00.105800+00:00","#,
    r#""response_id":"e2a9c4d6-1b3f-4e5a-9c7d-8f0a2b4c6d81","result":null}"#
);

/// The fixed timestamp of every frame.
const TIMESTAMP: &str = "2025-01-01T10:02:00.105800+00:00";
/// The agent name the real server gives a dispatched plan (frames of the same size).
const AGENT: &str = "PlanAgent";

/// Serves the floor on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let floor = Arc::new(Floor::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, floor.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// A session between its dispatch and its `task_end`, held by the device's connection.
struct Session {
    task_name: String,
    /// The command sent after the echo, `call_id` included.
    action: Value,
}

/// What the HTTP side pushes to a device's connection.
struct Push {
    frame: String,
    session_id: String,
    session: Session,
}

#[derive(Default)]
struct Floor {
    /// Registered devices: client id -> their connection's channel.
    devices: RwLock<HashMap<String, mpsc::UnboundedSender<Push>>>,
    /// Sessions whose `task_end` was sent and whose result was not read yet.
    done: Mutex<HashSet<String>>,
}

/// Every server frame: the real server's fields, in its order.
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    status: &'a str,
    user_request: Option<&'a str>,
    agent_name: Option<&'a str>,
    process_name: Option<&'a str>,
    root_name: Option<&'a str>,
    actions: Option<[&'a Value; 1]>,
    messages: Option<()>,
    error: Option<()>,
    session_id: Option<&'a str>,
    task_name: Option<&'a str>,
    timestamp: &'a str,
    response_id: &'a str,
    result: Option<()>,
}

impl<'a> Frame<'a> {
    fn new(ty: &'a str, status: &'a str, session_id: &'a str, response_id: &'a str) -> Self {
        Self {
            ty,
            status,
            user_request: None,
            agent_name: None,
            process_name: None,
            root_name: None,
            actions: None,
            messages: None,
            error: None,
            session_id: Some(session_id),
            task_name: None,
            timestamp: TIMESTAMP,
            response_id,
            result: None,
        }
    }

    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A fresh UUID-shaped id (version 4 layout) from a random seed and a counter: unique in
/// this process, without a system call.
fn new_id() -> String {
    static SEED: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(0u8));
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let hi = mix(*SEED ^ n);
    let lo = mix(hi ^ n.rotate_left(32));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xfff,
        0x8000 | ((lo >> 48) & 0x3fff),
        lo & 0xffff_ffff_ffff
    )
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn connection(stream: TcpStream, floor: Arc<Floor>) {
    let _ = stream.set_nodelay(true);
    if is_api(&stream).await {
        http(stream, floor).await;
    } else {
        websocket(stream, floor).await;
    }
}

/// Whether the first request line's path starts with `/api/` (peeked, nothing consumed).
async fn is_api(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    // A request line split over several segments is rare: poll for the rest a little.
    for _ in 0..200 {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if let Some(api) = route(&buf[..n]) {
            return api;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// `Some(true)` for an `/api/` path, `Some(false)` for anything else, `None` if the bytes
/// so far do not tell.
fn route(head: &[u8]) -> Option<bool> {
    const API: &[u8] = b"/api/";
    let Some(space) = head.iter().position(|&b| b == b' ') else {
        // No method is that long: not an API request.
        return (head.len() >= 8).then_some(false);
    };
    let path = &head[space + 1..];
    let n = path.len().min(API.len());
    if path[..n] != API[..n] {
        return Some(false);
    }
    (n == API.len()).then_some(true)
}

/// HTTP/1.1 with keep-alive, until the client closes.
async fn http(stream: TcpStream, floor: Arc<Floor>) {
    let service = hyper::service::service_fn(move |req| api(floor.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

async fn api(
    floor: Arc<Floor>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<String>, Infallible> {
    let path = req.uri().path();
    if req.method() == Method::POST && path == "/api/dispatch" {
        return Ok(match req.into_body().collect().await {
            Ok(body) => floor.dispatch(&body.to_bytes()),
            Err(_) => reply(StatusCode::BAD_REQUEST, r#"{"detail":"Unreadable body"}"#),
        });
    }
    if req.method() == Method::GET {
        if let Some(id) = path.strip_prefix("/api/task_result/") {
            return Ok(floor.task_result(id));
        }
    }
    Ok(reply(StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#))
}

fn reply(status: StatusCode, body: impl Into<String>) -> Response<String> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The body of `POST /api/dispatch`, as far as routing needs it.
#[derive(Deserialize)]
struct Dispatch {
    target_id: String,
    request: String,
    #[serde(default)]
    task_name: Option<String>,
    commands: Vec<Value>,
}

impl Floor {
    fn dispatch(&self, body: &[u8]) -> Response<String> {
        let Ok(d) = serde_json::from_slice::<Dispatch>(body) else {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"detail":"Expected target_id, request and commands"}"#,
            );
        };
        let Some(mut action) = d.commands.into_iter().next() else {
            return reply(StatusCode::BAD_REQUEST, r#"{"detail":"No commands"}"#);
        };
        if let Value::Object(fields) = &mut action {
            if fields.get("call_id").is_none_or(Value::is_null) {
                fields.insert("call_id".to_owned(), new_id().into());
            }
        }
        let session_id = new_id();
        let task_name = d.task_name.unwrap_or_else(new_id);
        let response_id = new_id();
        let mut frame = Frame::new("task", "continue", &session_id, &response_id);
        frame.user_request = Some(&d.request);
        frame.agent_name = Some(AGENT);
        frame.task_name = Some(&task_name);
        let push = Push {
            frame: frame.text(),
            session_id: session_id.clone(),
            session: Session {
                task_name: task_name.clone(),
                action,
            },
        };
        let sent = self
            .devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&d.target_id)
            .is_some_and(|tx| tx.send(push).is_ok());
        if !sent {
            return reply(StatusCode::NOT_FOUND, r#"{"detail":"Client not online"}"#);
        }
        let body = serde_json::json!({
            "status": "dispatched",
            "session_id": session_id,
            "task_name": task_name,
            "client_id": d.target_id,
        });
        reply(StatusCode::OK, body.to_string())
    }

    fn task_result(&self, id: &str) -> Response<String> {
        let done = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if !done {
            return reply(StatusCode::NOT_FOUND, r#"{"detail":"Task not found"}"#);
        }
        let body = serde_json::json!({
            "status": "done", "result": null, "state": "completed", "error": null,
            "reason": null, "session_id": id,
        });
        reply(StatusCode::OK, body.to_string())
    }

    fn register(&self, client_id: &str, tx: &mpsc::UnboundedSender<Push>) {
        self.devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client_id.to_owned(), tx.clone());
    }

    /// Forgets `client_id` unless another connection registered it since.
    fn unregister(&self, client_id: &str, tx: &mpsc::UnboundedSender<Push>) {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        if devices.get(client_id).is_some_and(|t| t.same_channel(tx)) {
            devices.remove(client_id);
        }
    }

    fn completed(&self, session_id: &str) {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session_id.to_owned());
    }
}

/// One WebSocket connection: reads the socket and the pushed frames, writes both answers.
async fn websocket(stream: TcpStream, floor: Arc<Floor>) {
    let Ok(mut ws) =
        tokio_tungstenite::accept_async_with_config(stream, Some(crate::client::ws_config())).await
    else {
        return;
    };
    let (tx, mut pushed) = mpsc::unbounded_channel::<Push>();
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut registered: Option<String> = None;
    loop {
        // Ends when the peer is gone; a close frame is answered by tungstenite itself.
        let sent = tokio::select! {
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(text) = msg else { continue };
                let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                let field = |k: &str| value.get(k).and_then(Value::as_str);
                match field("type") {
                    Some("register") => {
                        if let Some(id) = field("client_id") {
                            floor.register(id, &tx);
                            registered = Some(id.to_owned());
                        }
                        ws.send(Message::text(ACK)).await
                    }
                    Some("heartbeat") => ws.send(Message::text(ACK)).await,
                    // The device's echo: acknowledge it and send the command, one flush.
                    Some("task") => {
                        let Some((sid, session)) =
                            field("session_id").and_then(|s| sessions.get_key_value(s))
                        else {
                            continue;
                        };
                        let rid = new_id();
                        let ack = Frame::new("heartbeat", "ok", sid, &rid).text();
                        let rid = new_id();
                        let mut command = Frame::new("command", "continue", sid, &rid);
                        command.agent_name = Some(AGENT);
                        command.actions = Some([&session.action]);
                        command.task_name = Some(&session.task_name);
                        let command = command.text();
                        match ws.feed(Message::text(ack)).await {
                            Ok(()) => ws.send(Message::text(command)).await,
                            Err(e) => Err(e),
                        }
                    }
                    Some("command_results") => {
                        let Some((sid, session)) =
                            field("session_id").and_then(|s| sessions.remove_entry(s))
                        else {
                            continue;
                        };
                        floor.completed(&sid);
                        let rid = new_id();
                        let mut end = Frame::new("task_end", "completed", &sid, &rid);
                        end.task_name = Some(&session.task_name);
                        ws.send(Message::text(end.text())).await
                    }
                    _ => continue,
                }
            }
            Some(push) = pushed.recv() => {
                sessions.insert(push.session_id, push.session);
                ws.send(Message::text(push.frame)).await
            }
        };
        if sent.is_err() {
            break;
        }
    }
    if let Some(id) = registered {
        floor.unregister(&id, &tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path() {
        assert_eq!(route(b"POST /api/dispatch HTTP/1.1"), Some(true));
        assert_eq!(route(b"GET /api/task_result/x"), Some(true));
        assert_eq!(route(b"GET /ws HTTP/1.1"), Some(false));
        assert_eq!(route(b"GET /ap"), None);
        assert_eq!(route(b"POS"), None);
    }

    #[test]
    fn ids_look_like_uuids() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
