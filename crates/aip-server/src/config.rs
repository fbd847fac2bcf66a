//! Server configuration (server.md §9). The CLI fills it from flags and `AIP_*` variables.

use std::path::PathBuf;
use std::time::Duration;

/// How the platform handed to session drivers is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformMode {
    /// The executor's registered `metadata.platform` if windows/linux, else the host OS.
    Auto,
    Windows,
    Linux,
}

/// Everything `aip serve` can be told.
#[derive(Clone)]
pub struct ServerConfig {
    pub platform: PlatformMode,
    /// Accept only loopback peers.
    pub local_only: bool,
    /// API key for HTTP and WebSocket; `None` (and no `keys_file`) turns authentication
    /// off. Next to a key file it is an operator credential.
    pub api_key: Option<String>,
    /// Per-client credentials (`--keys`, TOML, reloaded on SIGHUP): see [`crate::keys`].
    pub keys_file: Option<PathBuf>,
    /// Accept key-file tokens shorter than [`crate::keys::MIN_TOKEN_LEN`].
    pub allow_weak_key: bool,
    pub data_dir: PathBuf,
    pub max_connections: usize,
    /// Largest WebSocket message, in bytes (HTTP bodies: `max_http_body`).
    pub max_message_size: usize,
    pub max_active_sessions: usize,
    pub registration_timeout: Duration,
    pub ping_interval: Duration,
    pub client_timeout: Duration,
    /// `None` disables the session timeout.
    pub session_timeout: Option<Duration>,
    pub command_timeout: Duration,
    pub accept_timeout: Duration,
    pub retention: Duration,
    pub max_results: u64,
    /// How long a duplicate registration waits for the old connection to prove alive.
    pub duplicate_probe_timeout: Duration,
    /// Outgoing frames queued per connection before the client is dropped as too slow.
    pub outgoing_queue: usize,
    /// Bytes of outgoing frames queued per connection, likewise (`conn.rs`).
    pub outgoing_queue_bytes: usize,
    /// Largest HTTP request body, in bytes (below `max_message_size`).
    pub max_http_body: usize,
    /// A request's headers must arrive within this (from its first byte, or from the
    /// moment the connection is ready for the next request).
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its headers are in.
    pub body_timeout: Duration,
    /// An HTTP connection with no request for this long is closed (not an upgraded
    /// WebSocket: those have `ping_interval` and `client_timeout`).
    pub idle_timeout: Duration,
    /// Most open TCP connections, HTTP and WebSocket together; `None`: `max_connections`
    /// plus half of [`crate::limits::RESERVED_FDS`].
    pub max_sockets: Option<usize>,
    /// Most open TCP connections from one peer address (loopback included).
    pub max_sockets_per_ip: usize,
    /// Bytes of recently ended session records kept in memory for reads.
    pub recent_cache_bytes: usize,
    /// The model that plans natural-language requests; `None` delegates them to devices.
    pub llm: Option<aip_llm::LlmConfig>,
    /// Certificate and key (PEM) for HTTPS/WSS on the listener; `None`: plain HTTP/WS.
    pub tls: Option<crate::tls::TlsPaths>,
    /// `GET /metrics` without the API key.
    pub metrics_public: bool,
    /// Cluster mode: the Redis (or Redis Cluster seeds, comma-separated) every node
    /// shares; `None`: one node on the embedded store.
    pub cluster: Option<String>,
    /// This node's id in the cluster; `None`: generated, unique per process.
    pub node_id: Option<String>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("platform", &self.platform)
            .field("local_only", &self.local_only)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("keys_file", &self.keys_file)
            .field("data_dir", &self.data_dir)
            .field("max_connections", &self.max_connections)
            .field("max_message_size", &self.max_message_size)
            .field("max_active_sessions", &self.max_active_sessions)
            .field("session_timeout", &self.session_timeout)
            .field("llm", &self.llm)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            platform: PlatformMode::Auto,
            local_only: false,
            api_key: None,
            keys_file: None,
            allow_weak_key: false,
            data_dir: PathBuf::from("./aip-data"),
            max_connections: 1000,
            max_message_size: 100 * 1024 * 1024,
            max_active_sessions: 1000,
            registration_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            client_timeout: Duration::from_secs(90),
            session_timeout: Some(Duration::from_secs(3600)),
            command_timeout: Duration::from_secs(600),
            accept_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_results: 1_000_000,
            duplicate_probe_timeout: Duration::from_secs(5),
            outgoing_queue: 256,
            outgoing_queue_bytes: 16 * 1024 * 1024,
            max_http_body: 4 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_sockets: None,
            max_sockets_per_ip: 256,
            recent_cache_bytes: 64 * 1024 * 1024,
            llm: None,
            tls: None,
            metrics_public: false,
            cluster: None,
            node_id: None,
        }
    }
}

impl ServerConfig {
    /// The cap on all open TCP connections: `max_sockets`, else derived from
    /// `max_connections`.
    pub fn socket_cap(&self) -> usize {
        self.max_sockets.unwrap_or_else(|| {
            let reserve = usize::try_from(crate::limits::RESERVED_FDS / 2).unwrap_or(0);
            self.max_connections.saturating_add(reserve)
        })
    }
}

pub use aip_protocol::time::fmt_secs;
