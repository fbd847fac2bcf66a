//! Load generator for the aip server: `aip bench <scenario> ...`.
//!
//! Map of the crate:
//!
//! - [`BenchArgs`] / [`Scenario`] / [`CommonArgs`]: the clap surface the CLI flattens;
//!   [`run`] prints a human summary (or one JSON object with `--json`), [`run_report`]
//!   returns the [`Report`] itself (used by the tests).
//! - `client`: where to connect (WebSocket URL, host and port, API key, per-await
//!   timeout), one simulated client (connect, `register`, heartbeat round trip, close), the
//!   connection ramp shared by every scenario, the server frames the generator reads.
//! - `http`: one keep-alive HTTP/1.1 connection per worker (hyper's client connection)
//!   and the two HTTP calls (`dispatch`, `task_result`).
//! - One module per scenario, each measuring one server: `hold` (N idle clients with
//!   periodic heartbeats: RTT, RSS per connection, CPU), `heartbeat` (closed-loop round
//!   trips), `dispatch` (HTTP dispatch to the `task` frame on the device), `session` (the
//!   full one-command session up to a readable result), `churn` (connect, register, one
//!   round trip, close).
//! - `run`: the orchestration scenarios share: `dispatch` and `session`'s devices and HTTP
//!   workers around a measured window, and the end of a run on ramped clients.
//! - `report`: latency histograms (hdrhistogram, microseconds) and failure counters, the
//!   report types and the human summary.
//! - `procstat`: RSS and CPU of a process from `/proc`, and raising `RLIMIT_NOFILE`.
//! - [`floor`]: the raw floor, a minimal tokio-tungstenite server answering `register` and
//!   `heartbeat` with a fixed frame, plus a bare hyper `POST /api/dispatch` /
//!   `GET /api/task_result` and the frames of a one-command session
//!   (`examples/floor_server.rs` runs it).
//!
//! Timing: every scenario measures a window of `--seconds` that starts `--warmup` seconds
//! after its clients are connected; only operations completing inside it count towards
//! throughput and latency, while failures count whenever they happen. Every await on the
//! network is bounded by `--timeout`: a timeout is a counted failure, never a hang.
//!
//! Floor comparison: with `--floor-url`, the same scenario first runs against the floor,
//! then against `--url`, and the report gives `ratio` = target / floor (every scenario).

mod churn;
mod client;
mod dispatch;
pub mod floor;
mod heartbeat;
mod hold;
mod http;
mod procstat;
mod report;
mod run;
mod session;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use churn::ChurnArgs;
pub use dispatch::DispatchArgs;
pub use heartbeat::HeartbeatArgs;
pub use hold::HoldArgs;
pub use procstat::Limit as NofileLimit;
pub use report::{Latency, ProcUsage, Ratio, Report, RunResult};
pub use session::SessionArgs;

use client::Target;

/// `aip bench <scenario> [options]`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What to measure.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N devices stay connected with periodic heartbeats: registration rate, heartbeat RTT,
    /// server RSS per connection and CPU.
    Hold(HoldArgs),
    /// Closed loop: each client sends a heartbeat, waits for the ack, repeats.
    Heartbeat(HeartbeatArgs),
    /// HTTP POST /api/dispatch until the `task` frame reaches the device (no echo).
    Dispatch(DispatchArgs),
    /// Full one-command session: dispatch, echo, command, results, task_end, result read.
    Session(SessionArgs),
    /// Connect, register, one heartbeat round trip, close; over and over.
    Churn(ChurnArgs),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Hold(_) => "hold",
            Scenario::Heartbeat(_) => "heartbeat",
            Scenario::Dispatch(_) => "dispatch",
            Scenario::Session(_) => "session",
            Scenario::Churn(_) => "churn",
        }
    }

    fn params(&self) -> serde_json::Value {
        let value = match self {
            Scenario::Hold(a) => serde_json::to_value(a),
            Scenario::Heartbeat(a) => serde_json::to_value(a),
            Scenario::Dispatch(a) => serde_json::to_value(a),
            Scenario::Session(a) => serde_json::to_value(a),
            Scenario::Churn(a) => serde_json::to_value(a),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

/// Options shared by every scenario (accepted before or after the scenario name).
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct CommonArgs {
    /// WebSocket URL of the server; the HTTP API is on the same host and port.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:5000/ws")]
    pub url: String,
    /// API key: appended as ?token= to the WebSocket URL, sent as X-API-Key over HTTP.
    #[arg(long, global = true)]
    #[serde(skip)]
    pub api_key: Option<String>,
    /// WebSocket URL the devices (and other WebSocket clients) connect to, when it is not
    /// --url: another node of a cluster, so that `dispatch` and `session` measure the
    /// route between nodes. The HTTP side stays on --url.
    #[arg(long, global = true)]
    pub devices_url: Option<String>,
    /// Pid of the server, to report its RSS and CPU from /proc.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// WebSocket URL of a floor server (examples/floor_server.rs): the scenario runs against
    /// it first and every figure is also given as a ratio to it.
    #[arg(long, global = true)]
    pub floor_url: Option<String>,
    /// Pid of the floor server, to report its RSS and CPU.
    #[arg(long, global = true)]
    pub floor_pid: Option<u32>,
    /// Seconds after the clients are connected before measuring starts.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub warmup: f64,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// How many connections are opened at the same time during a ramp.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds allowed for every single await (connect, answer, HTTP); a timeout is a failure.
    #[arg(long, global = true, default_value_t = 5.0)]
    pub timeout: f64,
}

/// What a scenario needs to know about the run it is part of.
pub(crate) struct Ctx {
    pub target: Arc<Target>,
    /// Where the devices connect: `target`, or `--devices-url`.
    pub devices: Arc<Target>,
    /// `target` or `floor`.
    pub label: &'static str,
    /// Makes client ids and task names of this run unique.
    pub run_id: String,
    pub warmup: Duration,
    pub connect_concurrency: usize,
    pub server_pid: Option<u32>,
}

/// Runs the scenario (against the floor first when `--floor-url` is given) and prints the
/// human summary, or the JSON report with `--json`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.common.json;
    let report = run_report(args).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

/// Runs the scenario and returns its report without printing anything.
pub async fn run_report(args: BenchArgs) -> anyhow::Result<Report> {
    let common = &args.common;
    let timeout = secs("--timeout", common.timeout, false)?;
    let warmup = secs("--warmup", common.warmup, true)?;
    let mut notes = Vec::new();
    if let Some((soft, hard)) = raise_nofile_limit() {
        if soft < hard {
            notes.push(format!(
                "open-file limit stays at {soft} (hard limit {hard})"
            ));
        }
    }

    let mut floor = None;
    if let Some(url) = &common.floor_url {
        let target = Target::new(url, common.api_key.as_deref(), timeout)?;
        let ctx = ctx(target, None, "floor", warmup, common, common.floor_pid);
        floor = Some(run_one(&args.scenario, &ctx).await?);
        // Let the floor's sockets go before the real run starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let target = Target::new(&common.url, common.api_key.as_deref(), timeout)?;
    let devices = match &common.devices_url {
        Some(url) => Some(Target::new(url, common.api_key.as_deref(), timeout)?),
        None => None,
    };
    let ctx = ctx(target, devices, "target", warmup, common, common.server_pid);
    let target = run_one(&args.scenario, &ctx).await?;
    let ratio = floor.as_ref().map(|f| Ratio::of(&target, f));
    Ok(Report {
        scenario: args.scenario.name(),
        params: args.scenario.params(),
        common: common.clone(),
        target,
        floor,
        ratio,
        notes,
    })
}

fn ctx(
    target: Target,
    devices: Option<Target>,
    label: &'static str,
    warmup: Duration,
    common: &CommonArgs,
    server_pid: Option<u32>,
) -> Ctx {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let target = Arc::new(target);
    Ctx {
        devices: devices.map_or_else(|| Arc::clone(&target), Arc::new),
        target,
        label,
        run_id: format!("{:08x}", nanos ^ std::process::id().rotate_left(16)),
        warmup,
        connect_concurrency: common.connect_concurrency.max(1),
        server_pid,
    }
}

async fn run_one(scenario: &Scenario, ctx: &Ctx) -> anyhow::Result<RunResult> {
    match scenario {
        Scenario::Hold(a) => hold::run(ctx, a).await,
        Scenario::Heartbeat(a) => heartbeat::run(ctx, a).await,
        Scenario::Dispatch(a) => {
            ctx.target.require_plain("dispatch")?;
            dispatch::run(ctx, a).await
        }
        Scenario::Session(a) => {
            ctx.target.require_plain("session")?;
            session::run(ctx, a).await
        }
        Scenario::Churn(a) => churn::run(ctx, a).await,
    }
}

/// Raises this process's soft open-file limit to the hard limit (the examples' servers
/// hold thousands of sockets); returns the (soft, hard) limits now in force.
pub fn raise_nofile_limit() -> Option<(NofileLimit, NofileLimit)> {
    procstat::raise_nofile_limit()
}

/// Binds a listener with an explicit accept backlog. `TcpListener::bind` uses 128, which
/// a burst of more concurrent connects than that overflows: the excess waits for the 1 s
/// SYN retransmission. `nodelay` sets TCP_NODELAY on the listening socket, which Linux
/// copies to the sockets it accepts (a way to try a server without Nagle's algorithm).
pub async fn listen(
    host: &str,
    port: u16,
    backlog: u32,
    nodelay: bool,
) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} does not resolve"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(nodelay)?;
    socket.bind(addr)?;
    Ok(socket.listen(backlog)?)
}

/// A duration given in (fractional) seconds on the command line.
pub(crate) fn secs(flag: &str, value: f64, zero_ok: bool) -> anyhow::Result<Duration> {
    let d = Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds"))?;
    anyhow::ensure!(zero_ok || !d.is_zero(), "{flag} must be greater than 0");
    Ok(d)
}

/// A count given on the command line.
pub(crate) fn count(flag: &str, value: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(value > 0, "{flag} must be at least 1");
    Ok(value)
}
