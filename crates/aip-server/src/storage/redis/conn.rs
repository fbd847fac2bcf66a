//! One Redis, or a Redis Cluster, behind one connection type.
//!
//! `--cluster` takes one URL or several (comma-separated); whether they name a single
//! Redis or the seeds of a Redis Cluster is asked of the first one (`INFO cluster`), so
//! the same flag serves both. Commands go through a [`Redis`]: a `ConnectionManager`
//! (single) or a cluster connection, both reconnecting by themselves. Blocking reads
//! (`XREAD … BLOCK`) get a connection of their own ([`RedisTarget::connect_blocking`]):
//! on a multiplexed connection they would hold every other command behind them.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How long a command may wait for its answer: a Redis that does not answer fails the
/// request fast (a dispatch gets 503) rather than holding it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Blocking reads wait up to this long in Redis; their connection's timeout is above it.
pub const BLOCK: Duration = Duration::from_secs(1);

/// Where the cluster state lives: the URLs given and whether they are a Redis Cluster.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    urls: Vec<String>,
    sharded: bool,
}

/// A connection to the single Redis or to the Redis Cluster; cheap to clone (one
/// multiplexed connection underneath).
#[derive(Clone)]
pub enum Redis {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisTarget {
    /// Reads `spec` (`redis://host:port[/db]`, several comma-separated) and asks the first
    /// server whether it is part of a Redis Cluster.
    pub async fn resolve(spec: &str) -> RedisResult<Self> {
        let urls: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        let Some(first) = urls.first() else {
            return Err((redis::ErrorKind::InvalidClientConfig, "no Redis URL given").into());
        };
        let client = redis::Client::open(first.as_str())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await?;
        let sharded = info.contains("cluster_enabled:1");
        Ok(Self { urls, sharded })
    }

    /// True for a Redis Cluster.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// A connection for commands.
    pub async fn connect(&self) -> RedisResult<Redis> {
        self.open(RESPONSE_TIMEOUT).await
    }

    /// A connection of its own for blocking reads.
    pub async fn connect_blocking(&self) -> RedisResult<Redis> {
        self.open(BLOCK + RESPONSE_TIMEOUT).await
    }

    async fn open(&self, response_timeout: Duration) -> RedisResult<Redis> {
        if self.sharded {
            let client = ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response_timeout)
                .retries(2)
                .build()?;
            return Ok(Redis::Cluster(client.get_async_connection().await?));
        }
        let client = redis::Client::open(self.urls[0].as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Redis::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
