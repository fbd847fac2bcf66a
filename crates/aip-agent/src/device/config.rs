//! What `aip device` is told ([`DeviceConfig`]) and how long it waits between
//! connection attempts ([`Backoff`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything `aip device` is told.
#[derive(Clone)]
pub struct DeviceConfig {
    /// `ws://host:port/ws` (a `?token=` is added when `api_key` is set).
    pub server: String,
    /// More servers (the nodes of a cluster): after a failed or lost connection the next
    /// attempt goes to the next URL, round the list.
    pub fallback_servers: Vec<String>,
    pub client_id: String,
    pub api_key: Option<String>,
    /// `linux`, `windows` or `macos`.
    pub platform: String,
    pub tags: BTreeMap<String, String>,
    pub heartbeat_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Frames queued for the socket writer; a sender waits when it is full (nothing the
    /// device must send is dropped; a heartbeat that finds it full is skipped).
    pub outgoing_queue: usize,
    /// On shutdown, how long running commands may finish before they are aborted.
    pub shutdown_grace: Duration,
    pub max_message_size: usize,
    /// A model to run delegated natural-language tasks (`task` with `agent_name` null)
    /// on this device; `None`: every task is echoed for the server to drive.
    pub llm: Option<aip_llm::LlmClient>,
    /// TLS for `wss://` ([`crate::tls::client_config`]); `None`: the system roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("server", &self.server)
            .field("client_id", &self.client_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

impl DeviceConfig {
    /// Defaults: local server, host name as id, 20 s heartbeats, 1 s → 60 s backoff.
    pub fn new(server: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            fallback_servers: Vec::new(),
            client_id: client_id.into(),
            api_key: None,
            platform: crate::system::host_platform().to_owned(),
            tags: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(20),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            outgoing_queue: 256,
            shutdown_grace: Duration::from_secs(10),
            max_message_size: 100 * 1024 * 1024,
            llm: None,
            tls: None,
        }
    }

    /// Server `n` of the list (`server`, then `fallback_servers`), round the list.
    pub(super) fn server_at(&self, n: usize) -> &str {
        match n % (1 + self.fallback_servers.len()) {
            0 => &self.server,
            i => &self.fallback_servers[i - 1],
        }
    }

    /// The URL to connect to `server` with, the key added.
    pub(super) fn url(&self, server: &str) -> String {
        match &self.api_key {
            None => server.to_owned(),
            Some(key) => {
                let sep = if server.contains('?') { '&' } else { '?' };
                format!("{server}{sep}token={}", encode_query(key))
            }
        }
    }
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Exponential backoff with jitter: each delay is drawn from [base/2, base], and base
/// doubles up to the cap.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    /// Starts at `initial`, caps at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            base: initial,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        base.mul_f64(jitter)
    }

    /// Back to the initial delay (after a healthy connection).
    pub fn reset(&mut self) {
        self.base = self.initial;
    }
}
