//! What the web layer shares: configuration, the registry, the session manager, the
//! store, and the connection limit and shutdown signals. Only `web` and the crate root
//! take it; the layers below take the handles they use.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::fleet::JobManager;
use crate::keys::{KeySet, KeySource, KeyStore};
use crate::registry::Registry;
use crate::session::driver::DriverFactory;
use crate::session::{SessionManager, SessionSettings};
use crate::storage::{JobStore, SessionStore};

/// Everything the server shares: configuration, registry, sessions, storage.
pub struct AppState {
    pub config: ServerConfig,
    /// The credentials in force (swapped whole on SIGHUP).
    pub keys: Arc<KeyStore>,
    pub registry: Arc<Registry>,
    pub sessions: Arc<SessionManager>,
    /// Fleet jobs (`/api/jobs`).
    pub jobs: Arc<JobManager>,
    pub store: Arc<dyn SessionStore>,
    pub started: std::time::Instant,
    /// Set when graceful shutdown begins.
    shutting_down: AtomicBool,
    /// Cancelled to close every connection.
    pub shutdown: CancellationToken,
    /// One permit per WebSocket connection.
    pub conn_limit: Arc<Semaphore>,
    next_conn_id: AtomicU64,
    /// The last store probe of `/api/ready`.
    pub readiness: Readiness,
    /// Warnings about peers (refused authentications, refused upgrades), rate-limited.
    pub peer_warnings: crate::logsafe::PeerThrottle,
    /// Cluster mode (`--cluster`): presence, routing to other nodes; `None` on one node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The outcome of the last write probe, reused for a second so that polling readiness
/// cannot turn into a stream of fsyncs.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), &'static str>)>>,
}

impl Readiness {
    /// `Ok` when the store committed a probe write within the last second (or now).
    pub async fn store_ok(&self, store: &dyn SessionStore) -> Result<(), &'static str> {
        // An async mutex: concurrent polls wait for the one probe in flight.
        let mut last = self.last.lock().await;
        if let Some((at, outcome)) = *last {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return outcome;
            }
        }
        let outcome = match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            store.probe_write(),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(cause = %e, "readiness: the store refused a write");
                Err("failing")
            }
            Err(_) => {
                tracing::error!("readiness: a store write did not finish within 5 s");
                Err("timeout")
            }
        };
        *last = Some((std::time::Instant::now(), outcome));
        outcome
    }
}

impl AppState {
    /// State for `config` on `store`; `drivers` plans natural-language requests (`None`:
    /// they are delegated to the device). Authentication starts from `config.api_key`
    /// alone: a key file is read by [`crate::run`] (or [`KeyStore::reload`]).
    pub fn new(
        config: ServerConfig,
        store: Arc<dyn SessionStore>,
        drivers: Option<Arc<dyn DriverFactory>>,
    ) -> Arc<Self> {
        Self::build(config, store, None, drivers, None)
    }

    /// [`AppState::new`] with fleet jobs kept in `jobs` (`None`: job routes answer 503).
    pub fn with_jobs(
        config: ServerConfig,
        store: Arc<dyn SessionStore>,
        jobs: Option<Arc<dyn JobStore>>,
        drivers: Option<Arc<dyn DriverFactory>>,
    ) -> Arc<Self> {
        Self::build(config, store, jobs, drivers, None)
    }

    /// State for one node of a cluster (`cluster`), or a single server (`None`). Fleet
    /// jobs are kept in the cluster's store (Redis), beside the sessions.
    pub fn with_cluster(
        config: ServerConfig,
        store: Arc<dyn SessionStore>,
        drivers: Option<Arc<dyn DriverFactory>>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Arc<Self> {
        let jobs = cluster.as_ref().map(|c| c.store() as Arc<dyn JobStore>);
        Self::build(config, store, jobs, drivers, cluster)
    }

    fn build(
        config: ServerConfig,
        store: Arc<dyn SessionStore>,
        jobs: Option<Arc<dyn JobStore>>,
        drivers: Option<Arc<dyn DriverFactory>>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Arc<Self> {
        let registry = Arc::new(Registry::default());
        let sessions = SessionManager::new(
            SessionSettings::of(&config),
            Arc::clone(&registry),
            Arc::clone(&store),
            drivers,
        );
        let jobs = JobManager::new(
            Arc::clone(&sessions),
            Arc::clone(&registry),
            jobs,
            cluster.clone(),
        );
        let keys = KeyStore::new(
            KeySource::of(&config),
            KeySet::from_api_key(config.api_key.as_deref()),
        );
        Arc::new(Self {
            keys: Arc::new(keys),
            conn_limit: Arc::new(Semaphore::new(config.max_connections)),
            config,
            registry,
            sessions,
            jobs,
            store,
            started: std::time::Instant::now(),
            shutting_down: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            next_conn_id: AtomicU64::new(1),
            readiness: Readiness::default(),
            peer_warnings: crate::logsafe::PeerThrottle::default(),
            cluster,
        })
    }

    /// A fresh connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the start of graceful shutdown: new work is refused from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// True once graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}
