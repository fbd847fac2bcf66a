//! The `/ws` endpoint: upgrade checks, registration handshake, the per-connection
//! reader/writer pair and liveness (protocol.md §1, §3.1–3.3, §5); the disconnect
//! procedure and the liveness probe are connection-level actions (`crate::link`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::errors as text;
use aip_protocol::features::ServerInfo;
use aip_protocol::validate::{is_valid_client_id, MAX_METADATA_LEN};
use aip_protocol::{parse_client_message, ClientMessageType, ClientType, ServerMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitStream, StreamExt};
use futures_util::SinkExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::auth::header_key;
use aip_protocol::errors::http as detail;

use super::error::ApiError;
use super::handlers::ClientConn;
use crate::conn::{close, ConnHandle, Outgoing, QueueLimits};
use crate::keys::Grant;
use crate::link::{disconnect, probe_alive};
use crate::registry::ClientEntry;
use crate::state::AppState;

/// Initial read buffer per connection (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 4 * 1024;
/// Write buffer per connection before a flush.
const WRITE_BUFFER: usize = 4 * 1024;
/// A writer stuck this long on the socket means the client has stopped reading.
const STALLED_WRITER: Duration = Duration::from_secs(5);

/// `GET /ws`: checks the token (`?token=`, else `X-API-Key` / Bearer) and the connection
/// limit, then upgrades; the connection keeps the token's grant.
#[utoipa::path(get, path = "/ws", tag = "aip",
    security(("token" = []), ("api_key" = []), ("bearer" = [])),
    responses(super::responses::WsResponses))]
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let given = query
        .get("token")
        .map(String::as_str)
        .or_else(|| header_key(&headers));
    let Some(grant) = app.keys.authenticate(given) else {
        if let Some(left_out) = app.peer_warnings.allow(peer.ip()) {
            tracing::warn!(peer = %peer, left_out, "WebSocket upgrade with a missing or wrong token refused");
        }
        return ApiError::new(StatusCode::FORBIDDEN, detail::INVALID_API_KEY).into_response();
    };
    if app.is_shutting_down() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail::SHUTTING_DOWN)
            .into_response();
    }
    let Ok(permit) = app.conn_limit.clone().try_acquire_owned() else {
        if let Some(left_out) = app.peer_warnings.allow(peer.ip()) {
            tracing::warn!(peer = %peer, left_out, "connection limit reached; upgrade refused");
        }
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            detail::TOO_MANY_CONNECTIONS,
        )
        .into_response();
    };
    let max = app.config.max_message_size;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| connection(app, socket, permit, grant))
}

/// Runs one WebSocket until it ends, then cleans up exactly once.
async fn connection(
    app: Arc<AppState>,
    socket: WebSocket,
    _permit: OwnedSemaphorePermit,
    grant: Grant,
) {
    let (mut sink, mut stream) = socket.split();
    let limits = QueueLimits {
        frames: app.config.outgoing_queue,
        bytes: app.config.outgoing_queue_bytes,
        stall: STALLED_WRITER,
    };
    let (tx, mut rx) = mpsc::channel::<Outgoing>(limits.channel_capacity());
    let conn = ConnHandle::with_limits(app.next_conn_id(), tx, limits);
    let meter = conn.meter();

    let mut writer = tokio::spawn(async move {
        // Everything already queued is written before one flush: fewer syscalls under load.
        'outer: loop {
            meter.idle();
            let Some(mut frame) = rx.recv().await else {
                break;
            };
            loop {
                meter.took(&frame);
                let (msg, last) = match frame {
                    Outgoing::Text(s) => (Message::Text(s.into()), false),
                    Outgoing::Ping => (Message::Ping(Default::default()), false),
                    Outgoing::Close(code, reason) => (
                        Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })),
                        true,
                    ),
                };
                if sink.feed(msg).await.is_err() {
                    break 'outer;
                }
                if last {
                    let _ = sink.flush().await;
                    break 'outer;
                }
                match rx.try_recv() {
                    Ok(next) => frame = next,
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let code = match register(&app, &conn, &grant, &mut stream).await {
        Err(code) => code,
        Ok(entry) => {
            let client_id = entry.client_id.clone();
            let code = message_loop(&app, &conn, entry, &mut stream, &mut writer).await;
            disconnect(&app, &client_id, conn.id());
            code
        }
    };
    if let Some(code) = code {
        let _ = conn.send_raw(Outgoing::Close(code, ""));
    }
    drop(conn);
    // A writer that already ended (the message loop may have awaited it to the end) is
    // not waited for again: a finished `JoinHandle` must not be polled twice.
    if !writer.is_finished()
        && tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

/// A message over `--max-message-size` (tungstenite's capacity error, under axum's).
fn is_too_big(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        src = s.source();
    }
    false
}

/// Waits for the `register` frame and answers it; `grant` decides which roles and ids
/// it may take. `Err` carries the close code (`None`: the peer is already gone).
async fn register(
    app: &Arc<AppState>,
    conn: &ConnHandle,
    grant: &Grant,
    stream: &mut SplitStream<WebSocket>,
) -> Result<Arc<ClientEntry>, Option<u16>> {
    let refuse = |error: String| {
        crate::metrics::registration_refused(refusal_code(&error));
        tracing::warn!(key = %grant.name(), reason = %crate::logsafe::Clip(&error), "registration refused");
        let _ = conn.send(&ServerMessage::error(error));
        Err(Some(close::POLICY))
    };
    let text = match first_frame(app, conn, stream).await {
        FirstFrame::Text(t) => t,
        FirstFrame::Refused(error) => return refuse(error),
        FirstFrame::Ended(code) => return Err(code),
    };
    let msg = match parse_client_message(text.as_str()) {
        Ok(m) => m,
        Err(e) => return refuse(text::invalid_registration(&e.detail)),
    };
    if msg.kind != ClientMessageType::Register {
        return refuse(text::FIRST_MESSAGE_NOT_REGISTER.to_owned());
    }
    let Some(client_id) = msg.client_id.clone().filter(|c| !c.is_empty()) else {
        return refuse(text::CLIENT_ID_REQUIRED.to_owned());
    };
    if !is_valid_client_id(&client_id) {
        return refuse(text::INVALID_CLIENT_ID.to_owned());
    }
    // Only a frame that large can hold that much metadata: measured only then.
    if text.len() > MAX_METADATA_LEN
        && msg
            .metadata
            .as_ref()
            .and_then(|m| serde_json::to_vec(m).ok())
            .is_some_and(|v| v.len() > MAX_METADATA_LEN)
    {
        return refuse(text::field_too_long("metadata", MAX_METADATA_LEN));
    }
    let role = msg.role();
    let scope = match role {
        ClientType::Constellation => msg.target_id.clone().filter(|t| !t.is_empty()),
        ClientType::Device => None,
    };
    if let Some(refusal) = grant.registration_refusal(role, &client_id, scope.as_deref()) {
        return refuse(refusal);
    }
    if let Some(target) = &scope {
        if app.registry.device(target).is_none() && !remote_device(app, target).await {
            return refuse(text::target_not_connected(target));
        }
    }
    let new = || {
        ClientEntry::new(
            client_id.clone(),
            role,
            conn.clone(),
            msg.metadata.clone(),
            scope.clone(),
        )
        .with_grant(grant.clone())
        .held()
    };
    let entry = match insert(app, &client_id, grant, new).await {
        Ok(entry) => entry,
        Err(refusal) => return refuse(refusal),
    };
    let ack =
        ServerMessage::registration_ack(ServerInfo::aip_ack_result(env!("CARGO_PKG_VERSION")));
    if conn.send(&ack).is_err() {
        disconnect(app, &client_id, conn.id());
        return Err(None);
    }
    // Routable only now: no task, dispatch or target reaches it before its acknowledgement.
    entry.set_ready();
    crate::metrics::registered(role.as_str());
    tracing::info!(client_id = %client_id, role = role.as_str(), key = %grant.name(), platform = entry.platform.as_deref().unwrap_or(""), "client registered");
    super::events::client_connected(&app.sessions.events, &entry);
    Ok(entry)
}

/// The first text frame of a connection, or how registration ended before it.
enum FirstFrame {
    Text(axum::extract::ws::Utf8Bytes),
    /// Refused with this `error` text (then closed with 1008).
    Refused(String),
    /// Closed with this code (`None`: the peer is gone).
    Ended(Option<u16>),
}

/// Reads until the first text frame, within the registration timeout.
async fn first_frame(
    app: &AppState,
    conn: &ConnHandle,
    stream: &mut SplitStream<WebSocket>,
) -> FirstFrame {
    let deadline = Instant::now() + app.config.registration_timeout;
    loop {
        let frame = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return FirstFrame::Refused(text::REGISTRATION_TIMED_OUT.to_owned());
            }
            _ = app.shutdown.cancelled() => return FirstFrame::Ended(Some(close::GOING_AWAY)),
            frame = stream.next() => frame,
        };
        match frame {
            None => return FirstFrame::Ended(None),
            Some(Err(e)) if is_too_big(&e) => return FirstFrame::Ended(Some(close::TOO_BIG)),
            Some(Err(_)) => return FirstFrame::Ended(None),
            Some(Ok(Message::Text(t))) => {
                conn.touch();
                return FirstFrame::Text(t);
            }
            Some(Ok(Message::Binary(_))) => {
                return FirstFrame::Refused(text::invalid_registration("binary frame"));
            }
            Some(Ok(Message::Close(_))) => return FirstFrame::Ended(None),
            Some(Ok(_)) => conn.touch(),
        }
    }
}

/// Registers the entry `new()` builds. A holder of the same `client_id` that does not
/// answer a probe is disconnected and replaced, once; a live one keeps the id (protocol.md
/// §4.2). A holder registered with a device credential is replaced only under a `grant`
/// allowed for its id, and never probed otherwise. `Err`: the refusal text.
async fn insert(
    app: &Arc<AppState>,
    client_id: &str,
    grant: &Grant,
    new: impl Fn() -> ClientEntry,
) -> Result<Arc<ClientEntry>, String> {
    let mut attempt = 0;
    loop {
        match app.registry.try_insert(new()) {
            Ok(e) => return claimed(app, e).await,
            Err(existing) if !grant.may_replace(&existing.grant, client_id) => {
                tracing::warn!(client_id = %client_id, key = %grant.name(), holder_key = %existing.grant.name(), "registration refused: the id is held under a device credential this one does not cover");
                return Err(text::takeover_refused(client_id));
            }
            Err(existing) if attempt == 0 => {
                attempt += 1;
                if probe_alive(app, &existing).await {
                    tracing::warn!(client_id = %client_id, "duplicate registration refused; the live connection stays");
                    return Err(text::duplicate_client(client_id));
                }
                tracing::warn!(client_id = %client_id, "previous connection is dead; replacing it");
                disconnect(app, client_id, existing.conn.id());
                existing.conn.kill(close::GOING_AWAY);
            }
            Err(_) => return Err(text::duplicate_client(client_id)),
        }
    }
}

/// Cluster mode: whether `client_id` is a device connected to another node.
async fn remote_device(app: &AppState, client_id: &str) -> bool {
    let Some(cluster) = &app.cluster else {
        return false;
    };
    matches!(cluster.lookup(client_id).await, Ok(Some((d, _))) if d.is_device)
}

/// Cluster mode: publishes a new registration, unless a live client on another node
/// holds its id (then it is removed here again and refused).
async fn claimed(app: &AppState, e: Arc<ClientEntry>) -> Result<Arc<ClientEntry>, String> {
    let Some(cluster) = &app.cluster else {
        return Ok(e);
    };
    if let Err(refusal) = cluster.claim(&e, app.config.duplicate_probe_timeout).await {
        app.registry.remove_if_conn(&e.client_id, e.conn.id());
        return Err(refusal);
    }
    Ok(e)
}

/// Reads and dispatches messages until the connection ends; returns the close code.
async fn message_loop(
    app: &Arc<AppState>,
    conn: &ConnHandle,
    entry: Arc<ClientEntry>,
    stream: &mut SplitStream<WebSocket>,
    writer: &mut tokio::task::JoinHandle<()>,
) -> Option<u16> {
    let cfg = &app.config;
    let check_every = cfg
        .ping_interval
        .min(cfg.client_timeout / 3)
        .max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    let client_timeout_us = i64::try_from(cfg.client_timeout.as_micros()).unwrap_or(i64::MAX);
    let mut client = ClientConn::new(app.clone(), entry);
    loop {
        tokio::select! {
            biased;
            _ = conn.killed() => return Some(conn.kill_code()),
            _ = app.shutdown.cancelled() => return Some(close::GOING_AWAY),
            _ = &mut *writer => return None,
            frame = stream.next() => match frame {
                None => return None,
                Some(Err(e)) if is_too_big(&e) => {
                    tracing::warn!(client_id = %client.id(), "message over the size limit; closing");
                    return Some(close::TOO_BIG);
                }
                Some(Err(e)) => {
                    tracing::debug!(client_id = %client.id(), cause = %e, "read error");
                    return None;
                }
                Some(Ok(msg)) => {
                    conn.touch();
                    match msg {
                        Message::Text(t) => client.on_text(t.as_str()).await,
                        Message::Binary(_) => client.on_binary(),
                        Message::Close(_) => return Some(close::NORMAL),
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            },
            _ = tick.tick() => {
                let silent = chrono::Utc::now().timestamp_micros() - conn.last_seen_micros();
                if silent > client_timeout_us {
                    tracing::warn!(client_id = %client.id(), "no frame within the client timeout; closing");
                    return Some(close::GOING_AWAY);
                }
                if last_ping.elapsed() >= cfg.ping_interval {
                    last_ping = Instant::now();
                    let _ = conn.send_raw(Outgoing::Ping);
                }
            }
        }
    }
}

/// The metrics label of a registration refusal.
fn refusal_code(error: &str) -> &'static str {
    if error == text::REGISTRATION_TIMED_OUT {
        "timeout"
    } else if error == text::FIRST_MESSAGE_NOT_REGISTER {
        "not_register"
    } else if error == text::CLIENT_ID_REQUIRED || error == text::INVALID_CLIENT_ID {
        "client_id"
    } else if error.starts_with("Not authorized") || error.ends_with("may not replace it)") {
        "credential"
    } else if error.contains("is already registered") {
        "duplicate"
    } else if error.starts_with("Target device") {
        "target"
    } else {
        "invalid"
    }
}
