//! `hold`: N devices register, then stay connected sending a heartbeat every S seconds
//! (phases spread evenly over the clients). Reports the registration rate, heartbeat RTT,
//! and with `--server-pid` the server's RSS per connection and CPU over the hold.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{ramp, Conn};
use crate::report::{round1, Meters, ProcUsage, Recorder, RunResult, Window};
use crate::run::{clients_result, join_tasks};
use crate::{count, secs, Ctx};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct HoldArgs {
    /// Devices to connect and hold.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Seconds between two heartbeats of one client.
    #[arg(long, default_value_t = 1.0)]
    pub heartbeat_every: f64,
    /// Seconds of hold measured (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

pub(crate) async fn run(ctx: &Ctx, args: &HoldArgs) -> anyhow::Result<RunResult> {
    let clients = count("--clients", args.clients)?;
    let every = secs("--heartbeat-every", args.heartbeat_every, false)?;
    let length = secs("--seconds", args.seconds, false)?;
    let mut server = ProcUsage::new(ctx.server_pid);

    let (conns, registration) = ramp(ctx, clients, "").await?.split();
    let connected = conns.len();
    // Let the server finish its per-connection bookkeeping before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(s) = &mut server {
        s.read_after();
        if let (Some(before), Some(after)) = (s.rss_before_kb, s.rss_after_kb) {
            if connected > 0 {
                s.rss_per_conn_kb = Some(round1((after as f64 - before as f64) / connected as f64));
            }
        }
    }

    let rec = Recorder::new()?;
    let begin = Instant::now();
    let window = Window::after(ctx.warmup, length);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, (_, conn))| {
            let first = begin + every.mul_f64(k as f64 / connected as f64);
            tokio::spawn(hold_one(conn, first, every, window, rec.clone()))
        })
        .collect();
    let cpu = Meters::over(&window, ctx.server_pid).await;
    join_tasks(tasks, &rec, "client task died").await;

    Ok(clients_result(
        ctx,
        "heartbeats/s",
        &window,
        &rec,
        registration,
        server,
        cpu,
    ))
}

/// Heartbeats from `first` on, every `every`, until the window closes. A failed round trip
/// ends the client: its connection is in an unknown state.
async fn hold_one(mut conn: Conn, first: Instant, every: Duration, window: Window, rec: Recorder) {
    let mut next = first;
    while next < window.end {
        tokio::time::sleep_until(next.into()).await;
        match conn.heartbeat().await {
            Ok(rtt) if window.contains(Instant::now()) => rec.ok(rtt),
            Ok(_) => {}
            Err(fail) => {
                rec.fail(&fail.0);
                return;
            }
        }
        next = (next + every).max(Instant::now());
    }
    let _ = conn.close().await;
}
