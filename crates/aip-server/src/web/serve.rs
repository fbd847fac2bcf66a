//! The one accept loop, for plain HTTP and TLS alike: every TCP connection takes a slot
//! (a cap on all sockets, and one per peer address) that it keeps for its whole life, a
//! WebSocket it upgrades into included; hyper runs with a timer, so a request whose
//! headers do not arrive within the header timeout is dropped, and a connection idle
//! between requests for the idle timeout is closed. An upgraded WebSocket is no longer
//! hyper's: it has its own liveness (ping, client timeout) in `ws.rs`.
//!
//! A socket over either cap is answered a fixed 503 (plain HTTP; TLS: closed) and closed
//! at once, so a flood of slow sockets can hold at most the cap of descriptors.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::IdDashMap;

/// The route that streams (and may need to close its connection).
const EVENTS_PATH: &str = "/api/events";

/// In an event stream request's extensions: cancelling it closes its connection at once
/// (the event stream drops a subscriber that fell behind this way, even while its socket
/// takes nothing).
#[derive(Clone)]
pub struct ConnCloser(pub CancellationToken);

/// In a response's extensions: its body streams for long, and the connection counts as
/// busy (not idle) until the body ends.
#[derive(Clone, Copy)]
pub struct Streaming;

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeouts of an HTTP connection (`--header-timeout`, `--idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The open sockets: a permit each, and a count per peer address.
pub struct Slots {
    total: Arc<Semaphore>,
    per_ip: IdDashMap<IpAddr, usize>,
    max_per_ip: usize,
}

/// One socket's place, given back when the socket is dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    slots: Arc<Slots>,
}

impl Slots {
    /// Room for `max` sockets, `max_per_ip` of them from one address.
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(max)),
            per_ip: IdDashMap::default(),
            max_per_ip,
        })
    }

    /// A slot for a socket from `ip`, or `None` when either cap is reached.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            drop(n);
            // A cap of 0 must not leave an empty entry behind.
            self.per_ip.remove_if(&ip, |_, n| *n == 0);
            return None;
        }
        *n += 1;
        drop(n);
        Some(Slot {
            _permit: permit,
            ip,
            slots: Arc::clone(self),
        })
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.per_ip.iter().map(|e| *e.value()).sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.per_ip.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// A socket that holds its [`Slot`]: wherever the stream goes (into an upgraded
/// WebSocket too), the slot goes with it.
struct Counted<IO> {
    io: IO,
    _slot: Slot,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop`, then lets
/// open connections finish for `drain` (WebSockets are closed by the server's own
/// shutdown first).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnLimits,
    slots: Arc<Slots>,
    stop: CancellationToken,
    drain: Duration,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let refusal = refusal_bytes();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::error!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(peer.ip()) else {
            refuse(tcp, peer, tls.is_none().then_some(refusal.as_bytes()));
            continue;
        };
        // Small frames go out at once: without TCP_NODELAY, an acknowledgement followed
        // by a command waits for the peer's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "could not set TCP_NODELAY");
        }
        let io = Counted {
            io: tcp,
            _slot: slot,
        };
        let app = app.clone();
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(serve_connection(io, peer, app, watcher, limits));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, cause = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    serve_connection(tls, peer, app, watcher, limits).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the drain period");
    }
    Ok(())
}

/// The answer to a socket over the caps: written if the socket takes it at once.
fn refusal_bytes() -> String {
    let body = serde_json::json!({ "detail": aip_protocol::errors::http::TOO_MANY_CONNECTIONS })
        .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn refuse(tcp: TcpStream, peer: SocketAddr, answer: Option<&[u8]>) {
    crate::metrics::socket_refused();
    tracing::debug!(peer = %peer, "socket over the connection caps closed");
    if let Some(bytes) = answer {
        let _ = tcp.try_write(bytes);
    }
}

/// Whether a request is being answered on a connection, and since when it is idle.
struct Activity {
    started: Instant,
    busy: AtomicUsize,
    /// Requests so far: before the first, a silent socket gets the header timeout.
    requests: AtomicU64,
    /// Milliseconds after `started` when the last request was answered.
    idle_since_ms: AtomicU64,
}

/// Marks a connection busy while it lives.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// When the connection has been idle for too long: `idle` after the last answer, or
    /// `first` after the connection opened if no request came yet (a socket that sends
    /// nothing, or too little to tell HTTP/1 from HTTP/2). `None` while a request is
    /// answered.
    fn idle_deadline(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.started + first);
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.started + since + idle)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves HTTP on one connection until it ends, is idle for the idle timeout, or is
/// upgraded (the WebSocket then runs on its own).
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
    limits: ConnLimits,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let activity = Activity::new();
    let act = Arc::clone(&activity);
    let closer = CancellationToken::new();
    let close = closer.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            // Only the event stream uses it: other requests pay one comparison.
            if req.uri().path() == EVENTS_PATH {
                req.extensions_mut().insert(ConnCloser(close.clone()));
            }
            let busy = act.busy();
            let answer = app.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let response = answer.await;
                match response {
                    Ok(r) if r.extensions().get::<Streaming>().is_some() => {
                        Ok(r.map(|body| busy_until_done(body, busy)))
                    }
                    other => {
                        drop(busy);
                        other
                    }
                }
            }
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    loop {
        let (first, idle) = (limits.header_timeout, limits.idle_timeout);
        // Woken at least this often: a request may start or end while it sleeps.
        let step = Instant::now() + first.min(idle);
        let check = activity
            .idle_deadline(first, idle)
            .map_or(step, |d| d.min(step));
        tokio::select! {
            _ = closer.cancelled() => {
                tracing::debug!(peer = %peer, "connection closed by the server");
                return;
            }
            ended = &mut conn => {
                if let Err(e) = ended {
                    tracing::debug!(peer = %peer, cause = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(check) => {
                if activity
                    .idle_deadline(first, idle)
                    .is_some_and(|d| d <= Instant::now())
                {
                    tracing::debug!(peer = %peer, "idle connection closed");
                    return;
                }
            }
        }
    }
}

/// `body`, holding `busy` until it ends or is dropped.
fn busy_until_done(body: axum::body::Body, busy: Busy) -> axum::body::Body {
    use futures_util::StreamExt;
    axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _held = &busy;
        chunk
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_all_sockets_and_each_address_and_come_back_on_drop() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = slots.take(a).expect("first from a");
        let a2 = slots.take(a).expect("second from a");
        assert!(slots.take(a).is_none(), "a third from one address");
        let b1 = slots.take(b).expect("b has its own count");
        assert!(slots.take(b).is_none(), "the total cap");
        assert_eq!(slots.open(), 3);
        drop(a1);
        let a3 = slots.take(a).expect("a slot came back");
        drop((a2, a3, b1));
        assert_eq!(slots.open(), 0);
        assert!(slots.per_ip.is_empty(), "no entry kept for a gone address");
    }
}
