//! `dispatch`: D devices connected; K HTTP workers in closed loop `POST /api/dispatch` a
//! one-command plan to the devices round-robin and time it until the `task` frame reaches
//! the device. Devices do not echo, so every session stays `created` on the server until its
//! accept timeout (30 s by default) fails it: run the server with a large accept timeout and
//! active-session limit, or expect `dispatch: HTTP 503` (too many active sessions).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Conn;
use crate::http::dispatch;
use crate::http::Http;
use crate::report::RunResult;
use crate::run::{self, Device, Plan};
use crate::Ctx;

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct DispatchArgs {
    /// Devices connected (targets, round-robin).
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Concurrent HTTP workers, each with one dispatch in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds measured (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// A `task` frame as a device saw it.
struct Delivery {
    device: usize,
    session_id: Option<String>,
    at: Instant,
}

type Shared = run::Shared<Delivery>;

pub(crate) async fn run(ctx: &Ctx, args: &DispatchArgs) -> anyhow::Result<RunResult> {
    let plan = Plan::new(args.devices, args.concurrency, args.seconds)?;
    let late = Arc::new(AtomicU64::new(0));
    let (mut result, registration) = run::devices_and_workers(
        ctx,
        plan,
        "d",
        "dispatches/s",
        |conn, d| device(conn, d, late.clone()),
        worker,
    )
    .await?;

    let kinds = result.failure_kinds.clone();
    let of = |k: &str| kinds.get(k).copied().unwrap_or(0);
    let http_errors: serde_json::Map<String, serde_json::Value> = kinds
        .iter()
        .filter_map(|(k, n)| Some((k.strip_prefix("dispatch: HTTP ")?.to_owned(), (*n).into())))
        .collect();
    result.detail("undelivered", of("undelivered"));
    result.detail("misrouted", of("misrouted"));
    result.detail("http_errors", http_errors);
    result.detail("late_deliveries", late.load(Ordering::Relaxed));
    result.detail("registration", registration);
    result.detail(
        "note",
        "devices do not accept: each session stays `created` until the server's accept timeout fails it",
    );
    Ok(result)
}

/// Dispatches until the window closes, one at a time.
async fn worker(s: Arc<Shared>) {
    let mut http = Http::new(&s.target);
    while !s.window.is_over() {
        let n = s.next.fetch_add(1, Ordering::Relaxed);
        let device = (n % s.devices.len() as u64) as usize;
        let name = format!("b-{}-{n}", s.run_id);
        let delivered = s.pending.insert(&name);
        let start = Instant::now();
        let session_id = match dispatch(&mut http, &s.devices[device], &name).await {
            Ok(sid) => sid,
            Err(fail) => {
                s.pending.forget(&name);
                s.rec.fail(&fail.0);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        match tokio::time::timeout(s.target.timeout, delivered).await {
            Ok(Ok(d)) if d.device != device => s.rec.fail("misrouted"),
            Ok(Ok(d)) if d.session_id.as_deref() != Some(session_id.as_str()) => {
                s.rec.fail("wrong session_id")
            }
            Ok(Ok(d)) => {
                if s.window.contains(d.at) {
                    s.rec.ok(d.at - start);
                }
            }
            Ok(Err(_)) | Err(_) => {
                s.pending.forget(&name);
                s.rec.fail("undelivered");
            }
        }
    }
}

/// Reads until told to stop, reporting every `task` frame; returns the connection if it
/// is still open.
async fn device(mut conn: Conn, mut d: Device<Delivery>, late: Arc<AtomicU64>) -> Option<Conn> {
    loop {
        let (frame, at) = match d.next_frame(&mut conn).await {
            Ok(read) => read,
            Err(end) => return end.still_open(conn),
        };
        if frame.ty != "task" {
            continue;
        }
        let Some(name) = frame.task_name.clone() else {
            continue;
        };
        let delivery = Delivery {
            device: d.index,
            session_id: frame.session_id,
            at,
        };
        if !d.pending.deliver(&name, delivery) {
            late.fetch_add(1, Ordering::Relaxed);
        }
    }
}
