//! `heartbeat`: closed loop; each client sends a heartbeat, waits for the ack, repeats.
//! Reports round trips per second and RTT percentiles.

use std::time::Instant;

use serde::Serialize;

use crate::client::{ramp, Conn};
use crate::report::{Meters, ProcUsage, Recorder, RunResult, Window};
use crate::run::{clients_result, join_tasks};
use crate::{count, secs, Ctx};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct HeartbeatArgs {
    /// Concurrent clients, each with one heartbeat in flight.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Seconds measured (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

pub(crate) async fn run(ctx: &Ctx, args: &HeartbeatArgs) -> anyhow::Result<RunResult> {
    let clients = count("--clients", args.clients)?;
    let length = secs("--seconds", args.seconds, false)?;
    let mut server = ProcUsage::new(ctx.server_pid);

    let (conns, registration) = ramp(ctx, clients, "").await?.split();
    let rec = Recorder::new()?;
    let window = Window::after(ctx.warmup, length);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(_, conn)| tokio::spawn(round_trips(conn, window, rec.clone())))
        .collect();
    let cpu = Meters::over(&window, ctx.server_pid).await;
    if let Some(s) = &mut server {
        s.read_after();
    }
    join_tasks(tasks, &rec, "client task died").await;

    Ok(clients_result(
        ctx,
        "round trips/s",
        &window,
        &rec,
        registration,
        server,
        cpu,
    ))
}

/// Round trips until the window closes; a failure ends the client.
async fn round_trips(mut conn: Conn, window: Window, rec: Recorder) {
    while !window.is_over() {
        match conn.heartbeat().await {
            Ok(rtt) if window.contains(Instant::now()) => rec.ok(rtt),
            Ok(_) => {}
            Err(fail) => {
                rec.fail(&fail.0);
                return;
            }
        }
    }
    let _ = conn.close().await;
}
