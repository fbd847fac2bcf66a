//! The aip agent server library. Dependencies point one way:
//! `web` → `session` → {`registry`, `storage`} → `aip_protocol`; only `web`, `cluster`
//! and this file take the [`AppState`].
//!
//! - [`web`]: the router, `--local` / API-key guard ([`web::auth`]), HTTP API
//!   ([`web::http`]), its one error type ([`web::error`]), the `/ws` endpoint
//!   ([`web::ws`]: upgrade, reader and writer, registration, disconnect) and one handler per
//!   AIP message type (`web/handlers.rs`). Handlers validate, then call the session layer.
//! - [`session`]: the [`session::SessionManager`] and the one way to open a session
//!   (`session/open.rs`), the acceptance transitions (`session/accept.rs`), each session's
//!   job (`session/job.rs`), the timer of parked sessions (`session/alarm.rs`), drivers
//!   ([`session::driver`]: the plan driver; [`session::llm`]: the LLM agent driver).
//! - [`fleet`]: fleet jobs (one request to the devices a selector picks, rolled out in
//!   batches): the [`fleet::JobManager`], one rollout task per job (in cluster mode on
//!   the node that received the job, its members' sessions opened on their devices'
//!   nodes through [`cluster`]).
//! - [`registry`]: who is connected and what a session keeps of its executor;
//!   [`conn`]: the bounded outgoing queue of a socket.
//! - [`storage`]: session records, `SessionState`, `EndReason`, the store trait;
//!   [`storage::sqlite`] the embedded backend, [`storage::redis`] the shared one.
//! - [`cluster`] (`--cluster`): presence, node heartbeats and loss, the inbox streams
//!   between nodes; beside `web` (it takes the [`AppState`] to open and cancel sessions
//!   other nodes ask for), and called by it for devices connected elsewhere.
//! - [`keys`]: per-client credentials (`--keys`) and the [`keys::Grant`] a request or
//!   connection holds; reloaded on SIGHUP.
//! - [`config`]: every option of `aip serve`; [`state`]: what the web layer shares;
//!   [`metrics`]: the Prometheus counters every layer bumps (a leaf: it takes values);
//!   [`events`]: the live event bus behind `GET /api/events` (a leaf too; the web layer
//!   serves it as Server-Sent Events, `web/events.rs`, and the dashboard, `web/ui.rs`);
//!   [`limits`]: the open-file limit and the connection cap derived from it.
//! - [`web::serve`]: the one accept loop (plain or TLS): socket caps, header and idle
//!   timeouts; [`tls`]: the certificate, reloaded on SIGHUP ([`hangup`]: the one listener
//!   loop for the signal);
//!   [`build`]: what this binary is (version, commit, target, profile).
//!
//! [`run`] serves on a listener it is given until the shutdown future resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

pub mod cluster;
pub mod config;
pub mod conn;
pub mod events;
pub mod fleet;
pub mod hangup;
pub mod keys;
pub mod limits;
pub mod link;
pub mod logsafe;
pub mod metrics;
pub mod registry;
pub mod session;
pub mod state;
pub mod storage;
pub mod tls;
pub mod web;

pub use config::{PlatformMode, ServerConfig};

/// What this build is: version, git commit, target and profile (set by `build.rs`).
pub mod build {
    /// The crate version.
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// Short git commit of the checkout it was built from, or `unknown`.
    pub const COMMIT: &str = env!("AIP_GIT_COMMIT");
    /// Target triple.
    pub const TARGET: &str = env!("AIP_BUILD_TARGET");
    /// `release` or `debug`.
    pub const PROFILE: &str = env!("AIP_BUILD_PROFILE");

    /// `0.1.0 (commit 1a2b3c4d5e6f, x86_64-unknown-linux-gnu, release)`.
    pub fn long_version() -> String {
        format!("{VERSION} (commit {COMMIT}, {TARGET}, {PROFILE})")
    }
}
pub use state::AppState;

/// The hasher of every map keyed by session ids, client ids and task names: foldhash,
/// seeded at random per process (and per map): cheaper per lookup than SipHash on the
/// dispatch path, and still seeded, so colliding keys cannot be prepared offline.
pub(crate) type IdHasher = foldhash::fast::RandomState;
/// A `HashMap` with [`IdHasher`].
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, IdHasher>;
/// A `HashSet` with [`IdHasher`].
pub(crate) type IdSet<K> = std::collections::HashSet<K, IdHasher>;
/// A `DashMap` with [`IdHasher`].
pub(crate) type IdDashMap<K, V> = dashmap::DashMap<K, V, IdHasher>;

use session::CancelReason;
use storage::sqlite::SqliteStore;
use storage::{JobStore, SessionStore};

/// Opens the embedded store under `config.data_dir` and serves until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Everything that can fail on a bad file is opened before anything is served.
    let tls = match &config.tls {
        Some(paths) => Some(tls::TlsFiles::load(paths.clone())?),
        None => None,
    };
    let keys = keys::KeySource::of(&config).load()?;
    if let Some(spec) = config.cluster.clone() {
        return run_node(listener, config, &spec, keys, tls, shutdown).await;
    }
    let _lock = storage::lock::DataDirLock::acquire(&config.data_dir)?;
    metrics::install();
    let dir = config.data_dir.clone();
    let recent_bytes = config.recent_cache_bytes;
    let store =
        tokio::task::spawn_blocking(move || SqliteStore::open_with_cache(&dir, recent_bytes))
            .await?
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let drivers = drivers_of(&config)?;
    // A store that opens but cannot be written (a read-only file) fails here, by name.
    let interrupted = store
        .mark_interrupted(chrono::Utc::now())
        .await
        .with_context(|| format!("writing the store in {}", config.data_dir.display()))?;
    if interrupted > 0 {
        tracing::warn!(
            sessions = interrupted,
            "sessions live at the last stop are now failed (server_restarted)"
        );
    }
    let jobs = store
        .interrupt_jobs(chrono::Utc::now())
        .await
        .with_context(|| format!("writing the store in {}", config.data_dir.display()))?;
    if jobs > 0 {
        tracing::warn!(
            jobs,
            "jobs running at the last stop are now failed (server_restarted)"
        );
    }
    log_listening(&listener, &config, &keys);
    let store = Arc::new(store);
    let job_store: Arc<dyn JobStore> = store.clone();
    let state = AppState::with_jobs(config, store, Some(job_store), drivers);
    start(listener, state, keys, tls, shutdown).await
}

/// The model that plans natural-language requests, if one is configured.
fn drivers_of(
    config: &ServerConfig,
) -> anyhow::Result<Option<Arc<dyn session::driver::DriverFactory>>> {
    Ok(match &config.llm {
        Some(llm) => Some(Arc::new(
            session::llm::LlmDriverFactory::new(llm.clone()).context("configuring the model")?,
        )),
        None => None,
    })
}

/// Cluster mode: one node of many sharing the Redis `spec` (the store, presence, the
/// routes between nodes); no data directory.
async fn run_node(
    listener: TcpListener,
    config: ServerConfig,
    spec: &str,
    keys: keys::KeySet,
    tls: Option<Arc<tls::TlsFiles>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    metrics::install();
    let drivers = drivers_of(&config)?;
    let node = config
        .node_id
        .clone()
        .unwrap_or_else(cluster::generated_node_id);
    let cluster = cluster::Cluster::connect(spec, node.clone()).await?;
    let store = cluster.store();
    let interrupted = store
        .mark_interrupted(chrono::Utc::now())
        .await
        .context("writing the cluster's store")?;
    if interrupted > 0 {
        tracing::warn!(
            sessions = interrupted,
            "this node's sessions live at its last stop are now failed (server_restarted)"
        );
    }
    tracing::info!(node = %node, redis = %redacted(spec), sharded = cluster.is_sharded(), "cluster mode: joined");
    log_listening(&listener, &config, &keys);
    let state = AppState::with_cluster(config, store, drivers, Some(Arc::clone(&cluster)));
    cluster.start(Arc::clone(&state));
    // After the sessions' own interruption (a member takes its session's end), and
    // once the inbox runs (members still live on other nodes are cancelled there).
    let jobs = cluster
        .end_jobs_of(&state, &node, storage::JobReason::ServerRestarted)
        .await;
    if jobs > 0 {
        tracing::warn!(
            jobs,
            "this node's jobs running at its last stop are now failed (server_restarted)"
        );
    }
    start(listener, state, keys, tls, shutdown).await
}

/// A Redis URL for the log: any password replaced.
fn redacted(spec: &str) -> String {
    spec.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &u[..scheme], &u[at + 1..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the credentials and the SIGHUP handling, then serves.
async fn start(
    listener: TcpListener,
    state: Arc<AppState>,
    keys: keys::KeySet,
    tls: Option<Arc<tls::TlsFiles>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    state.keys.install(keys);
    if state.config.keys_file.is_some() {
        keys::reload_on_sighup(state.keys.clone(), state.shutdown.clone());
    } else if tls.is_none() {
        // SIGHUP's default action ends the process: an operator's "reload" must not.
        ignore_sighup(state.shutdown.clone());
    }
    serve_with(listener, state, tls, shutdown).await
}

/// Catches SIGHUP when there is nothing to reload (no key file, no certificate), saying
/// so in the log, until `stop`.
fn ignore_sighup(stop: tokio_util::sync::CancellationToken) {
    hangup::on_sighup("nothing", stop, || {
        tracing::info!("SIGHUP: nothing to reload (no --keys, no --tls-cert); still serving");
    });
}

/// Serves `state` on `listener` (plain HTTP/WS) until `shutdown`, then shuts down
/// gracefully.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// Serves `state` on `listener` until `shutdown`, over TLS when `tls` is given (the
/// certificate is then reloaded on SIGHUP), then shuts down gracefully.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<tls::TlsFiles>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    let acceptor = match tls {
        Some(files) => {
            let acceptor = files.acceptor()?;
            tls::reload_on_sighup(files, stop.clone());
            Some(acceptor)
        }
        None => None,
    };
    let purger = tokio::spawn(purge_loop(state.clone()));
    let graceful_state = state.clone();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        begin_shutdown(&graceful_state).await;
        stopper.cancel();
    });
    let cfg = &state.config;
    let limits = web::serve::ConnLimits {
        header_timeout: cfg.header_timeout,
        idle_timeout: cfg.idle_timeout,
    };
    let slots = web::serve::Slots::new(cfg.socket_cap(), cfg.max_sockets_per_ip);
    let app = web::router(state.clone());
    let result = web::serve::serve(
        listener,
        app,
        acceptor,
        limits,
        slots,
        stop,
        Duration::from_secs(5),
    )
    .await;
    purger.abort();
    result
}

/// The start-up line, once everything is open (server.md §9).
fn log_listening(listener: &TcpListener, config: &ServerConfig, keys: &keys::KeySet) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    tracing::info!(
        address = %addr,
        tls = config.tls.is_some(),
        auth = keys.required(),
        credentials = keys.len(),
        local_only = config.local_only,
        platform = ?config.platform,
        driver = %match &config.llm {
            Some(l) => format!("plan; LLM agent {} at {}", l.model, l.base_url),
            None => "plan; natural language is delegated to the device".to_owned(),
        },
        data_dir = %config.data_dir.display(),
        "aip server listening"
    );
    if !keys.required() && !addr.ip().is_loopback() {
        tracing::warn!("authentication is off on a non-loopback address: anyone on the network can dispatch commands to devices (set --api-key or --keys)");
    }
}

/// Graceful shutdown (server.md §9): refuse new work, cancel live sessions with their
/// `task_end`s, close every WebSocket with 1001.
async fn begin_shutdown(state: &Arc<AppState>) {
    tracing::info!("shutting down");
    state.begin_shutdown();
    // Jobs first, so that they start no member while the sessions are cancelled; each
    // ends once its running sessions have (cancelled below).
    let jobs = state.jobs.clone();
    let stopping = tokio::spawn(async move { jobs.shutdown(Duration::from_secs(6)).await });
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        state.sessions.cancel_all(CancelReason::Shutdown),
    )
    .await;
    let _ = stopping.await;
    let unsaved = state.sessions.wait_saved(Duration::from_secs(5)).await;
    if unsaved > 0 {
        tracing::error!(
            unsaved,
            "the store refused the final state of sessions until shutdown; they will show as failed (server_restarted)"
        );
    }
    state.shutdown.cancel();
    // Give connections a moment to send their close frames.
    let max = state.config.max_connections;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while state.conn_limit.available_permits() < max && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(cluster) = &state.cluster {
        let _ = tokio::time::timeout(Duration::from_secs(3), cluster.leave()).await;
        tracing::info!(node = %cluster.node(), "left the cluster");
    }
}

/// Removes expired results and jobs every minute (server.md §6).
async fn purge_loop(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let retention =
            chrono::Duration::from_std(state.config.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        match state.store.purge(cutoff, state.config.max_results).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired session results removed"),
            Err(e) => tracing::error!(cause = %e, "purging results failed"),
        }
        match state.jobs.purge(cutoff).await {
            Ok(0) | Err(fleet::JobError::Unavailable) => {}
            Ok(n) => tracing::info!(purged = n, "expired jobs removed"),
            Err(e) => tracing::error!(cause = %e, "purging jobs failed"),
        }
    }
}
