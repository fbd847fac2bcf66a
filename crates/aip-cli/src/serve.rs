//! `aip serve`: the agent server.

use std::path::PathBuf;

use aip_server::{PlatformMode, ServerConfig};
use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::common::{
    positive_secs_arg, secs_arg, shutdown_signal, span_arg, LlmArgs, LogArgs, Secs, Span,
};
use crate::exit::Usage;

/// Default bind address.
const HOST: &str = "127.0.0.1";
/// Default port.
const PORT: u16 = 5000;

/// The defaults of every server option: the config type's.
fn defaults() -> ServerConfig {
    ServerConfig::default()
}

#[derive(Clone, Copy, ValueEnum)]
enum PlatformArg {
    Auto,
    Windows,
    Linux,
}

/// Options of `aip serve`; each can also be set as an `AIP_*` environment variable.
#[derive(Args)]
pub struct ServeArgs {
    /// TOML file of options (keys: these long options in snake_case); flags and AIP_*
    /// variables win over it.
    #[arg(long, env = "AIP_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective settings (as a config file, with where each came from) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    llm: LlmArgs,
    /// Bind address; 0.0.0.0 or :: for all interfaces.
    #[arg(long, env = "AIP_HOST", default_value = HOST)]
    host: String,
    /// Listening port (HTTP and WebSocket).
    #[arg(long, env = "AIP_PORT", default_value_t = PORT)]
    port: u16,
    /// Platform handed to session drivers; auto = the device's registered platform.
    #[arg(long, env = "AIP_PLATFORM", value_enum, default_value = "auto")]
    platform: PlatformArg,
    /// Accept only loopback peers (127.0.0.0/8, ::1) on HTTP and WebSocket.
    #[arg(long, env = "AIP_LOCAL")]
    local: bool,
    /// API key for HTTP (X-API-Key or Bearer) and WebSocket (?token=). Unset: no auth.
    /// With --keys it is one more operator credential. At least 16 characters.
    #[arg(long, env = "AIP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Per-client credentials: a TOML file of [[key]] entries (operator, device,
    /// constellation; see `aip keys new`). Reloaded on SIGHUP.
    #[arg(long, env = "AIP_KEYS")]
    keys: Option<PathBuf>,
    /// Accept an --api-key or key-file token shorter than 16 characters.
    #[arg(long, env = "AIP_ALLOW_WEAK_KEY")]
    allow_weak_key: bool,
    /// Directory of the SQLite result store.
    #[arg(long, env = "AIP_DATA_DIR", default_value_os_t = defaults().data_dir)]
    data_dir: PathBuf,
    /// Most WebSocket connections; more are refused with 503. Default: the open-file limit
    /// (raised to its hard value at start) less 256 kept for everything else.
    #[arg(long, env = "AIP_MAX_CONNECTIONS", value_parser = at_least_one)]
    max_connections: Option<usize>,
    /// Largest WebSocket message, in bytes (HTTP bodies: --max-http-body).
    #[arg(long, env = "AIP_MAX_MESSAGE_SIZE", default_value_t = defaults().max_message_size, value_parser = message_size)]
    max_message_size: usize,
    /// Most sessions in created/running state.
    #[arg(long, env = "AIP_MAX_ACTIVE_SESSIONS", default_value_t = defaults().max_active_sessions, value_parser = at_least_one)]
    max_active_sessions: usize,
    /// Time allowed for the first (register) frame.
    #[arg(long, env = "AIP_REGISTRATION_TIMEOUT", default_value_t = Secs(defaults().registration_timeout), value_parser = positive_secs_arg)]
    registration_timeout: Secs,
    /// Time between server WebSocket pings.
    #[arg(long, env = "AIP_PING_INTERVAL", default_value_t = Secs(defaults().ping_interval), value_parser = positive_secs_arg)]
    ping_interval: Secs,
    /// Silence after which a client is considered dead.
    #[arg(long, env = "AIP_CLIENT_TIMEOUT", default_value_t = Secs(defaults().client_timeout), value_parser = positive_secs_arg)]
    client_timeout: Secs,
    /// Session lifetime limit; 0 disables it.
    #[arg(long, env = "AIP_SESSION_TIMEOUT", default_value_t = Secs(defaults().session_timeout.unwrap_or_default()), value_parser = secs_arg)]
    session_timeout: Secs,
    /// Wait for one round's command results.
    #[arg(long, env = "AIP_COMMAND_TIMEOUT", default_value_t = Secs(defaults().command_timeout), value_parser = positive_secs_arg)]
    command_timeout: Secs,
    /// Wait for a device to accept an HTTP-dispatched task.
    #[arg(long, env = "AIP_ACCEPT_TIMEOUT", default_value_t = Secs(defaults().accept_timeout), value_parser = positive_secs_arg)]
    accept_timeout: Secs,
    /// How long ended sessions are kept.
    #[arg(long, env = "AIP_RETENTION", default_value_t = Span(defaults().retention), value_parser = span_arg)]
    retention: Span,
    /// Most ended sessions kept; the oldest-finished go first.
    #[arg(long, env = "AIP_MAX_RESULTS", default_value_t = defaults().max_results, value_parser = clap::value_parser!(u64).range(1..))]
    max_results: u64,
    /// Certificate chain (PEM) for HTTPS and WSS on the same port; needs --tls-key.
    /// Reloaded on SIGHUP without dropping connections.
    #[arg(long, env = "AIP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "AIP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus) without the API key.
    #[arg(long, env = "AIP_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Time for a request's headers to arrive; slower connections are closed.
    #[arg(long, env = "AIP_HEADER_TIMEOUT", default_value_t = Secs(defaults().header_timeout), value_parser = positive_secs_arg)]
    header_timeout: Secs,
    /// Time for a request's body to arrive once its headers are in; then 408.
    #[arg(long, env = "AIP_BODY_TIMEOUT", default_value_t = Secs(defaults().body_timeout), value_parser = positive_secs_arg)]
    body_timeout: Secs,
    /// An HTTP connection without a request for this long is closed (not a WebSocket).
    #[arg(long, env = "AIP_IDLE_TIMEOUT", default_value_t = Secs(defaults().idle_timeout), value_parser = positive_secs_arg)]
    idle_timeout: Secs,
    /// Most open TCP connections, HTTP and WebSocket together; more are closed at accept.
    /// Default: --max-connections + 128.
    #[arg(long, env = "AIP_MAX_SOCKETS", value_parser = at_least_one)]
    max_sockets: Option<usize>,
    /// Most open TCP connections from one address (loopback included).
    #[arg(long, env = "AIP_MAX_SOCKETS_PER_IP", default_value_t = defaults().max_sockets_per_ip, value_parser = at_least_one)]
    max_sockets_per_ip: usize,
    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "AIP_MAX_HTTP_BODY", default_value_t = defaults().max_http_body, value_parser = at_least_one)]
    max_http_body: usize,
    /// Bytes queued for one WebSocket before it counts as not reading.
    #[arg(long, env = "AIP_MAX_QUEUED_BYTES", default_value_t = defaults().outgoing_queue_bytes, value_parser = at_least_one)]
    max_queued_bytes: usize,
    /// Bytes of recently ended sessions kept in memory for reads.
    #[arg(long, env = "AIP_RECENT_CACHE_BYTES", default_value_t = defaults().recent_cache_bytes)]
    recent_cache_bytes: usize,
    /// Cluster mode: redis://HOST:PORT[/DB] shared by every node (several URLs,
    /// comma-separated, for Redis Cluster seeds); results, presence and routing live
    /// there instead of --data-dir.
    #[arg(long, env = "AIP_CLUSTER")]
    cluster: Option<String>,
    /// This node's id in the cluster. Default: generated, unique per process (logged).
    #[arg(long, env = "AIP_NODE_ID", requires = "cluster", value_parser = node_id)]
    node_id: Option<String>,
}

/// A node id: 1 to 64 of [A-Za-z0-9._-].
fn node_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected 1 to 64 characters of A-Z a-z 0-9 . _ -".to_owned())
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.log.init();
    check_keys(&args)?;
    if let Some(file) = &args.config {
        tracing::info!(config = %file.display(), "options read from the config file (flags and AIP_* variables win)");
    }
    let nofile = aip_server::limits::raise_nofile_limit();
    let derived_max_connections = aip_server::limits::default_max_connections(nofile.map(|l| l.0));
    match nofile {
        Some((soft, hard)) => tracing::info!(
            open_files = soft,
            hard_limit = hard,
            max_connections = args.max_connections.unwrap_or(derived_max_connections),
            "open-file limit"
        ),
        None => tracing::info!(
            max_connections = args.max_connections.unwrap_or(derived_max_connections),
            "open-file limit unknown"
        ),
    }
    if let (Some(cap), Some((soft, _))) = (args.max_connections, nofile) {
        if cap as u64 + aip_server::limits::RESERVED_FDS > soft {
            tracing::warn!(max_connections = cap, open_files = soft, "--max-connections is above what the open-file limit allows: accepts will fail before the cap is reached (raise LimitNOFILE / ulimit -n)");
        }
    }
    let config = ServerConfig {
        platform: match args.platform {
            PlatformArg::Auto => PlatformMode::Auto,
            PlatformArg::Windows => PlatformMode::Windows,
            PlatformArg::Linux => PlatformMode::Linux,
        },
        local_only: args.local,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        keys_file: args.keys,
        allow_weak_key: args.allow_weak_key,
        data_dir: args.data_dir,
        max_connections: args.max_connections.unwrap_or(derived_max_connections),
        max_message_size: args.max_message_size,
        max_active_sessions: args.max_active_sessions,
        registration_timeout: args.registration_timeout.0,
        ping_interval: args.ping_interval.0,
        client_timeout: args.client_timeout.0,
        session_timeout: (!args.session_timeout.0.is_zero()).then_some(args.session_timeout.0),
        command_timeout: args.command_timeout.0,
        accept_timeout: args.accept_timeout.0,
        retention: args.retention.0,
        max_results: args.max_results,
        metrics_public: args.metrics_public,
        header_timeout: args.header_timeout.0,
        body_timeout: args.body_timeout.0,
        idle_timeout: args.idle_timeout.0,
        max_sockets: args.max_sockets,
        max_sockets_per_ip: args.max_sockets_per_ip,
        max_http_body: args.max_http_body,
        outgoing_queue_bytes: args.max_queued_bytes,
        recent_cache_bytes: args.recent_cache_bytes,
        cluster: args.cluster.filter(|c| !c.trim().is_empty()),
        node_id: args.node_id,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(aip_server::tls::TlsPaths { cert, key }),
            _ => None,
        },
        llm: match args.llm.to_config() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("aip serve: {e:#}");
                std::process::exit(2);
            }
        },
        ..ServerConfig::default()
    };
    let listener = bind(&args.host, args.port)
        .await
        .with_context(|| format!("cannot bind {}:{}", args.host, args.port))?;
    aip_server::run(listener, config, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Refuses, as a usage error (exit 2), a weak `--api-key` and a key file that does not
/// load (the server reads it again when it starts, and on SIGHUP).
fn check_keys(args: &ServeArgs) -> Result<(), Usage> {
    let min = aip_server::keys::MIN_TOKEN_LEN;
    let api_key = args.api_key.as_deref().filter(|k| !k.is_empty());
    if let Some(k) = api_key {
        if k.chars().count() < min && !args.allow_weak_key {
            return Err(Usage(format!(
                "--api-key is shorter than {min} characters; use a longer one (`aip keys new --role operator` makes one) or pass --allow-weak-key"
            )));
        }
    }
    if let Some(path) = &args.keys {
        aip_server::keys::KeySet::load(api_key, path, args.allow_weak_key)
            .map_err(|e| Usage(format!("{e:#}")))?;
    }
    Ok(())
}

/// Listen backlog: reconnection bursts after a restart must not overflow the accept queue
/// (the default of 128 makes the 129th simultaneous client wait for a SYN retry).
const BACKLOG: u32 = 4096;

async fn bind(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host name resolved to no address")))
}

/// A count that must be at least 1 (0 would refuse everything).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The largest message: at least 64 KiB, or no registration with its metadata would fit.
fn message_size(s: &str) -> Result<usize, String> {
    const MIN: usize = 64 * 1024;
    match s.parse::<usize>() {
        Ok(n) if n < MIN => Err(format!("must be at least {MIN} bytes")),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::*;

    /// The book's `aip serve` table (docs/src/configuration.md) shows every option's
    /// default as `--help` does, which takes them from `ServerConfig::default()`.
    #[test]
    fn the_book_s_table_shows_the_defaults_of_the_config_type() {
        let readme = include_str!("../../../docs/src/configuration.md");
        let cmd = ServeArgs::augment_args(Command::new("serve"));
        let mut checked = 0;
        for arg in cmd.get_arguments() {
            let (Some(long), Some(default)) = (arg.get_long(), arg.get_default_values().first())
            else {
                continue;
            };
            if long.starts_with("llm-") {
                continue; // described in prose, not in the table
            }
            let default = default.to_string_lossy();
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}` |")))
                .unwrap_or_else(|| panic!("no row in docs/src/configuration.md for --{long}"));
            let cell = row.split('|').nth(2).unwrap_or("").trim().trim_matches('`');
            assert_eq!(
                cell, default,
                "--{long}: the book says {cell}, --help {default}"
            );
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} options checked");
    }
}
