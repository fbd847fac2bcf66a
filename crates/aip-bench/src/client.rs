//! One simulated client: where to connect ([`Target`]), connect + `register`
//! ([`Conn::open`]), a heartbeat round trip, a clean close; the connection ramp every
//! scenario starts with ([`ramp`]); and the few fields of server frames the generator reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::header::HeaderValue;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::report::{Latency, Recorder};
use crate::Ctx;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Small buffers like the server's: thousands of clients must fit in the generator.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

/// A server to load: WebSocket URL (with the token), HTTP host, key, per-await timeout.
pub struct Target {
    /// The URL as given (reports).
    pub url: String,
    ws_url: String,
    /// `host:port` of both the WebSocket and the HTTP side.
    authority: String,
    /// The HTTP `Host` header (the authority) and `X-API-Key`, checked once here.
    host_header: HeaderValue,
    key_header: Option<HeaderValue>,
    pub timeout: Duration,
    /// `wss://`: the WebSocket scenarios run over TLS; the HTTP ones refuse.
    pub tls: bool,
}

impl Target {
    pub fn new(url: &str, api_key: Option<&str>, timeout: Duration) -> anyhow::Result<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow::anyhow!("--url must look like ws://host:port/ws: {url}"))?;
        let tls = match scheme {
            "ws" => false,
            // The WebSocket scenarios only; the roots are the system's (or `SSL_CERT_FILE`).
            "wss" => true,
            other => anyhow::bail!("--url must be a ws:// or wss:// URL, not {other}://"),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        anyhow::ensure!(!authority.is_empty(), "--url has no host: {url}");
        let ws_url = match api_key {
            Some(key) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}token={}", encode_query(key))
            }
            None => url.to_owned(),
        };
        // ws:// without a port means port 80, wss:// 443.
        let authority = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        } else {
            authority.to_owned()
        };
        let host_header = HeaderValue::from_str(&authority)
            .map_err(|_| anyhow::anyhow!("--url has a host that is not a valid header: {url}"))?;
        let key_header = api_key
            .map(|k| {
                HeaderValue::from_str(k)
                    .map_err(|_| anyhow::anyhow!("--api-key must be printable ASCII"))
            })
            .transpose()?;
        Ok(Self {
            url: url.to_owned(),
            ws_url,
            authority,
            host_header,
            key_header,
            timeout,
            tls,
        })
    }

    /// Refuses a `wss://` target for a scenario that also speaks HTTP (plain only).
    pub fn require_plain(&self, scenario: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.tls,
            "aip bench {scenario} speaks plain http:// for its dispatches; only the \
             WebSocket scenarios (hold, heartbeat, churn) run over wss://: {}",
            self.url
        );
        Ok(())
    }

    /// `host:port` of the server.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The `Host` header of every HTTP request.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// The `X-API-Key` header, if a key was given.
    pub fn key_header(&self) -> Option<&HeaderValue> {
        self.key_header.as_ref()
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
pub(crate) fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why an operation failed; the text is the failure kind counted in reports, so it stays
/// short and free of ids.
#[derive(Debug, Clone)]
pub struct Fail(pub String);

impl Fail {
    pub fn new(kind: impl Into<String>) -> Self {
        Self(kind.into())
    }

    pub fn timeout(what: &str) -> Self {
        Self(format!("timeout: {what}"))
    }

    fn connect(e: &tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => Self(format!("connect: HTTP {}", resp.status())),
            tungstenite::Error::Io(io) => Self(format!("connect: {:?}", io.kind())),
            _ => Self::new("connect: handshake"),
        }
    }
}

/// The fields of a server frame the generator looks at (others are skipped by serde).
#[derive(Deserialize, Debug)]
pub struct Frame {
    #[serde(rename = "type")]
    pub ty: String,
    pub status: Option<String>,
    pub session_id: Option<String>,
    pub task_name: Option<String>,
    pub response_id: Option<String>,
    pub user_request: Option<String>,
    pub actions: Option<Vec<FrameAction>>,
}

#[derive(Deserialize, Debug)]
pub struct FrameAction {
    pub call_id: Option<String>,
}

impl Frame {
    pub fn parse(text: &str) -> Result<Self, Fail> {
        serde_json::from_str(text).map_err(|_| Fail::new("unparseable frame"))
    }

    fn is_ok(&self) -> bool {
        self.status.as_deref() == Some("ok")
    }
}

/// A registered client: write and read halves of its WebSocket.
pub struct Conn {
    pub client_id: String,
    pub tx: SplitSink<Ws, Message>,
    pub rx: SplitStream<Ws>,
    pub timeout: Duration,
    heartbeat: Utf8Bytes,
}

impl Conn {
    /// Connects and registers as a device; succeeds on the `heartbeat`/`ok` answer.
    pub async fn open(target: &Target, client_id: String) -> Result<Conn, Fail> {
        let connect = tokio_tungstenite::connect_async_with_config(
            target.ws_url.as_str(),
            Some(ws_config()),
            true,
        );
        let (ws, _) = match timeout(target.timeout, connect).await {
            Err(_) => return Err(Fail::timeout("connect")),
            Ok(Err(e)) => return Err(Fail::connect(&e)),
            Ok(Ok(ok)) => ok,
        };
        let (tx, rx) = ws.split();
        let heartbeat = serde_json::json!({
            "type": "heartbeat", "status": "ok", "client_id": client_id,
        })
        .to_string()
        .into();
        let mut conn = Conn {
            client_id,
            tx,
            rx,
            timeout: target.timeout,
            heartbeat,
        };
        let register = serde_json::json!({
            "type": "register", "status": "ok", "client_type": "device",
            "client_id": conn.client_id, "metadata": {"platform": "linux"},
        });
        conn.send(register.to_string().into()).await?;
        let (answer, _) = conn.next_frame("register answer").await?;
        match answer.ty.as_str() {
            "heartbeat" if answer.is_ok() => Ok(conn),
            "error" => Err(Fail::new("register refused")),
            _ => Err(Fail::new("register: unexpected answer")),
        }
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: Utf8Bytes) -> Result<(), Fail> {
        match timeout(self.timeout, self.tx.send(Message::Text(text))).await {
            Err(_) => Err(Fail::timeout("send")),
            Ok(Err(_)) => Err(Fail::new("send failed")),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The next text frame and when it arrived; control frames are skipped.
    pub async fn next_frame(&mut self, what: &str) -> Result<(Frame, Instant), Fail> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.next()).await {
                Err(_) => return Err(Fail::timeout(what)),
                Ok(Some(Ok(Message::Text(text)))) => {
                    let at = Instant::now();
                    return Ok((Frame::parse(&text)?, at));
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {
                    return Err(Fail::new("closed by server"))
                }
                Ok(Some(Err(_))) => return Err(Fail::new("connection error")),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// One heartbeat round trip; returns the round-trip time.
    pub async fn heartbeat(&mut self) -> Result<Duration, Fail> {
        let start = Instant::now();
        self.send(self.heartbeat.clone()).await?;
        loop {
            let (frame, at) = self.next_frame("heartbeat ack").await?;
            match frame.ty.as_str() {
                "heartbeat" if frame.session_id.is_none() => {
                    return if frame.is_ok() {
                        Ok(at - start)
                    } else {
                        Err(Fail::new("heartbeat ack not ok"))
                    };
                }
                "error" => return Err(Fail::new("error frame")),
                _ => {}
            }
        }
    }

    /// Sends a close frame and waits (bounded) for the server to finish the close handshake.
    pub async fn close(mut self) -> Result<(), Fail> {
        if let Ok(Err(_)) | Err(_) = timeout(self.timeout, self.tx.send(Message::Close(None))).await
        {
            return Err(Fail::new("close failed"));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.next()).await {
                Err(_) => return Err(Fail::timeout("close")),
                Ok(Some(Ok(_))) => {}
                Ok(None) | Ok(Some(Err(_))) => return Ok(()),
            }
        }
    }
}

/// The connections a scenario starts with, and how their registration went.
pub struct Ramp {
    /// Registered clients, in index order (failed ones are missing).
    pub conns: Vec<(usize, Conn)>,
    /// From the first connect to the last answer.
    pub seconds: f64,
    /// Connect + register latency.
    pub latency: Latency,
    pub failures: BTreeMap<String, u64>,
}

impl Ramp {
    /// Successful registrations per second over the ramp.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            crate::report::round1(self.conns.len() as f64 / self.seconds)
        } else {
            0.0
        }
    }

    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "registered": self.conns.len(),
            "millis": crate::report::round1(self.seconds * 1000.0),
            "rate_per_s": self.rate(),
            "latency_us": self.latency,
        })
    }

    /// Hands out the connections, keeping how their registration went.
    pub fn split(self) -> (Vec<(usize, Conn)>, Registration) {
        let registration = Registration {
            connected: self.conns.len(),
            details: self.details(),
            failures: self.failures,
        };
        (self.conns, registration)
    }
}

/// How a ramp went, for the report once its connections are handed out.
pub struct Registration {
    /// Clients registered.
    pub connected: usize,
    /// [`Ramp::details`].
    pub details: serde_json::Value,
    pub failures: BTreeMap<String, u64>,
}

/// Opens `n` clients `bench-<run>-<tag><i>`, at most `--connect-concurrency` at a time.
pub async fn ramp(ctx: &Ctx, n: usize, tag: &str) -> anyhow::Result<Ramp> {
    let rec = Recorder::new()?;
    let gate = Arc::new(Semaphore::new(ctx.connect_concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let target = ctx.devices.clone();
        let gate = gate.clone();
        let id = format!("bench-{}-{tag}{i}", ctx.run_id);
        tasks.push(tokio::spawn(async move {
            let _permit = gate
                .acquire_owned()
                .await
                .map_err(|_| Fail::new("ramp stopped"))?;
            let t = Instant::now();
            let conn = Conn::open(&target, id).await?;
            Ok::<_, Fail>((conn, t.elapsed()))
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok((conn, took))) => {
                rec.ok(took);
                conns.push((i, conn));
            }
            Ok(Err(fail)) => rec.fail(&format!("register: {}", fail.0)),
            Err(_) => rec.fail("register: task died"),
        }
    }
    Ok(Ramp {
        conns,
        seconds: start.elapsed().as_secs_f64(),
        latency: rec.latency(),
        failures: rec.failures(),
    })
}

/// Closes every connection concurrently (bounded by the per-await timeout).
pub async fn close_all(conns: impl IntoIterator<Item = Conn>) {
    let tasks: Vec<_> = conns.into_iter().map(|c| tokio::spawn(c.close())).collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Operations waiting for something a device will see, keyed by task name. The lock is
/// held only to insert or take an entry.
pub struct Pending<T>(Mutex<HashMap<String, oneshot::Sender<T>>>);

impl<T> Pending<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(HashMap::new())))
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<T>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `name`; the receiver gets what a device reports for it.
    pub fn insert(&self, name: &str) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.map().insert(name.to_owned(), tx);
        rx
    }

    /// Hands `value` to whoever waits for `name`; `false` if nobody does (any more).
    pub fn deliver(&self, name: &str, value: T) -> bool {
        let waiter = self.map().remove(name);
        waiter.is_some_and(|tx| tx.send(value).is_ok())
    }

    pub fn forget(&self, name: &str) {
        self.map().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_authority_and_token() {
        let t = Target::new(
            "ws://127.0.0.1:5000/ws",
            Some("k y&"),
            Duration::from_secs(1),
        )
        .expect("target");
        assert_eq!(t.authority(), "127.0.0.1:5000");
        assert_eq!(t.key_header().map(|h| h.as_bytes()), Some(&b"k y&"[..]));
        assert_eq!(t.ws_url, "ws://127.0.0.1:5000/ws?token=k%20y%26");
        let t = Target::new("ws://h?x=1", None, Duration::from_secs(1)).expect("target");
        assert_eq!(t.authority(), "h:80");
        assert_eq!(t.ws_url, "ws://h?x=1");
        let t = Target::new("wss://h/ws", None, Duration::from_secs(1)).expect("target");
        assert_eq!((t.authority(), t.tls), ("h:443", true));
        assert!(t.require_plain("dispatch").is_err());
        assert!(Target::new("http://h/ws", None, Duration::from_secs(1)).is_err());
    }
}
