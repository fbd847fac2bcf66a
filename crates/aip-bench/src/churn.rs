//! `churn`: N concurrent loops of connect, register, one heartbeat round trip, close.
//! Reports cycles per second, cycle latency, and with `--server-pid` the server's RSS before,
//! right after, and 2 s after the run (it should not grow).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Conn, Target};
use crate::procstat::rss_kb;
use crate::report::{Meters, ProcUsage, Recorder, RunResult, Window};
use crate::run::join_tasks;
use crate::{count, secs, Ctx};

/// How long the server is left alone before its memory is read again.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct ChurnArgs {
    /// Concurrent connect/register/heartbeat/close loops.
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// Seconds measured (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

pub(crate) async fn run(ctx: &Ctx, args: &ChurnArgs) -> anyhow::Result<RunResult> {
    let clients = count("--clients", args.clients)?;
    let length = secs("--seconds", args.seconds, false)?;
    let mut server = ProcUsage::new(ctx.server_pid);

    let rec = Recorder::new()?;
    let window = Window::after(ctx.warmup, length);
    let next_id = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let prefix = format!("bench-{}-c", ctx.run_id);
            tokio::spawn(cycles(
                ctx.target.clone(),
                prefix,
                next_id.clone(),
                window,
                rec.clone(),
            ))
        })
        .collect();
    let cpu = Meters::over(&window, ctx.server_pid).await;
    join_tasks(tasks, &rec, "client task died").await;
    if let Some(s) = &mut server {
        s.read_after();
        tokio::time::sleep(SETTLE).await;
        s.rss_settled_kb = rss_kb(Some(s.pid));
    }

    let mut result = RunResult::new(ctx.label, &ctx.target.url, "cycles/s", &window, &rec);
    result.server = server;
    result.cpu(cpu);
    result.detail("cycles_started", next_id.load(Ordering::Relaxed));
    Ok(result)
}

/// Cycles until the window closes, each with a fresh client id.
async fn cycles(
    target: Arc<Target>,
    prefix: String,
    next_id: Arc<AtomicU64>,
    window: Window,
    rec: Recorder,
) {
    while !window.is_over() {
        let id = format!("{prefix}{}", next_id.fetch_add(1, Ordering::Relaxed));
        let start = Instant::now();
        match cycle(&target, id).await {
            Ok(()) => {
                let done = Instant::now();
                if window.contains(done) {
                    rec.ok(done - start);
                }
            }
            Err(fail) => {
                rec.fail(&fail.0);
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn cycle(target: &Target, id: String) -> Result<(), crate::client::Fail> {
    let mut conn = Conn::open(target, id).await?;
    conn.heartbeat().await?;
    conn.close().await
}
