//! Real `redis-server` processes for the cluster tests: each on a free port with its own
//! directory, persistent (`appendonly yes`, `appendfsync always`) unless asked otherwise;
//! killed (`SIGKILL`) on drop. A Redis Cluster of three masters is made with
//! `redis-cli --cluster create`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// Panics with what to install when `redis-server` or `redis-cli` is missing.
fn require_redis() {
    for bin in ["redis-server", "redis-cli"] {
        let found = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{bin} not found: the cluster tests need Redis (Debian: apt-get install redis-server)"
        );
    }
}

/// A `redis-server` child.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// A persistent Redis in `dir` (created), on a free port.
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_with(dir, &[])
    }

    /// [`RedisServer::start`] with more `redis-server` options (`--cluster-enabled yes`).
    pub fn start_with(dir: &Path, extra: &[&str]) -> RedisServer {
        require_redis();
        std::fs::create_dir_all(dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "no", "--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p <port> <args>`: its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -STOP` (`resume` continues it): a Redis that answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT` after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig} redis-server");
        }
    }

    /// Starts again on the same port and directory (after [`RedisServer::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis Cluster of three masters under `dir`; its seed URLs, comma-separated.
pub fn redis_cluster(dir: &Path) -> (Vec<RedisServer>, String) {
    let servers: Vec<RedisServer> = (0..3)
        .map(|i| {
            RedisServer::start_with(
                &dir.join(format!("r{i}")),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !servers
        .iter()
        .all(|s| s.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(
            Instant::now() < deadline,
            "the Redis Cluster did not become ok"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let urls = servers
        .iter()
        .map(|s| s.url())
        .collect::<Vec<_>>()
        .join(",");
    (servers, urls)
}
