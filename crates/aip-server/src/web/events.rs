//! `GET /api/events`: the event bus ([`crate::events`]) as Server-Sent Events, and what
//! the WebSocket layer publishes into it (a client connected or disconnected).
//!
//! Each subscriber has a forwarding task that moves events from the bus into a bounded
//! queue of [`QUEUE`] frames, which the response body drains as the socket takes them.
//! A subscriber whose queue is full, or that fell behind the bus itself, is dropped: its
//! connection is closed ([`ConnCloser`]), so it never holds anything back. It may come
//! back with `Last-Event-ID` and resume from the bus's ring.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::errors::http as detail;
use aip_protocol::time::http_timestamp;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::responses::{EventsResponses, Guarded};
use super::serve::{ConnCloser, Streaming};
use crate::events::{Backlog, Event, EventBus, EventKind, Next, Subscription};
use crate::registry::ClientEntry;
use crate::state::AppState;

/// Frames a subscriber may have waiting for its socket before it is dropped.
pub const QUEUE: usize = 256;
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What a client should wait before reconnecting (the SSE `retry:` field), ms.
const RETRY_MS: u32 = 2000;

/// `GET /api/events`: live events as `text/event-stream`.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    params(("Last-Event-ID" = Option<String>, Header,
        description = "Resume after this event id (sent by EventSource on reconnect)")),
    responses(EventsResponses, Guarded)
)]
pub async fn events(
    State(app): State<Arc<AppState>>,
    closer: Option<Extension<ConnCloser>>,
    headers: HeaderMap,
) -> Response {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>().unwrap_or(0));
    let bus = &app.sessions.events;
    let Some(sub) = bus.subscribe(last_id) else {
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            detail::TOO_MANY_SUBSCRIBERS,
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    };
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    tokio::spawn(forward(
        sub,
        tx,
        app.shutdown.clone(),
        closer.map(|c| c.0 .0),
    ));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx: pass each event on at once instead of buffering the response.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.extensions_mut().insert(Streaming);
    resp
}

/// One SSE frame: `id`, `event` and the JSON data on one line.
fn frame(e: &Event) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        e.id,
        e.kind.as_str(),
        e.data
    ))
}

/// Moves the subscriber's backlog, then its live events, into `tx` until the client goes
/// away, the server shuts down, or the subscriber falls behind (then its connection is
/// closed by `closer`).
async fn forward(
    mut sub: Subscription,
    tx: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    closer: Option<CancellationToken>,
) {
    let mut first = vec![Bytes::from(format!("retry: {RETRY_MS}\n: aip events\n\n"))];
    match std::mem::replace(&mut sub.backlog, Backlog::None) {
        Backlog::None => {}
        Backlog::Replay(events) => first.extend(events.iter().map(|e| frame(e))),
        Backlog::Resync => first.push(Bytes::from_static(
            b"event: resync\ndata: {\"type\":\"resync\"}\n\n",
        )),
    }
    for f in first {
        if !offer(&tx, f) {
            return dropped(&tx, closer);
        }
    }
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    loop {
        let f = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            next = sub.next() => match next {
                Next::Event(e) => frame(&e),
                Next::Lagged => return dropped(&tx, closer),
                Next::Closed => return,
            },
            _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        };
        if !offer(&tx, f) {
            return dropped(&tx, closer);
        }
    }
}

/// Queues `frame`; false when the queue is full (a client gone counts as taken: the
/// loop then ends on `closed`).
fn offer(tx: &mpsc::Sender<Bytes>, frame: Bytes) -> bool {
    !matches!(tx.try_send(frame), Err(mpsc::error::TrySendError::Full(_)))
}

/// Drops a subscriber that fell behind: its connection is closed.
fn dropped(tx: &mpsc::Sender<Bytes>, closer: Option<CancellationToken>) {
    if tx.is_closed() {
        return;
    }
    crate::metrics::subscriber_dropped();
    tracing::warn!("event stream subscriber fell behind; disconnected");
    if let Some(closer) = closer {
        closer.cancel();
    }
}

/// The `tags` a client registered (`metadata.tags`, string values only).
pub fn tags_of(entry: &ClientEntry) -> Value {
    tags_from(entry.metadata.as_ref().and_then(|m| m.get("tags")))
}

/// The string values of a registration's `metadata.tags`, as an object (`{}` if none).
pub fn tags_from(tags: Option<&Value>) -> Value {
    let strings: Map<String, Value> = tags
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.is_string())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(strings)
}

/// `client_connected`.
pub fn client_connected(bus: &EventBus, entry: &ClientEntry) {
    bus.publish(EventKind::ClientConnected, || {
        json!({
            "client_id": entry.client_id,
            "client_type": entry.role.as_str(),
            "platform": entry.platform,
            "tags": tags_of(entry),
            "connected_at": http_timestamp(entry.connected_at),
        })
    });
}
