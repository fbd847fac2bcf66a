//! `dispatch`: D devices connected; K HTTP workers in closed loop `POST /api/dispatch` a
//! one-command plan to the devices round-robin and time it until the `task` frame reaches
//! the device. Devices do not echo, so every session stays `created` on the server until its
//! accept timeout (30 s by default) fails it: run the server with a large accept timeout and
//! active-session limit, or expect `dispatch: HTTP 503` (too many active sessions).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{close_all, dispatch, ramp, Conn, Frame, Pending, Target};
use crate::report::{Meters, ProcUsage, Recorder, RunResult, Window};
use crate::{count, secs, Ctx};

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

/// Shared by the workers of one run.
struct Shared {
    target: Arc<Target>,
    http: reqwest::Client,
    devices: Vec<String>,
    pending: Arc<Pending<Delivery>>,
    next: AtomicU64,
    run_id: String,
    window: Window,
    rec: Recorder,
}

pub(crate) async fn run(ctx: &Ctx, args: &DispatchArgs) -> anyhow::Result<RunResult> {
    let devices = count("--devices", args.devices)?;
    let workers = count("--concurrency", args.concurrency)?;
    let length = secs("--seconds", args.seconds, false)?;
    let mut server = ProcUsage::new(ctx.server_pid);

    let ramp = ramp(ctx, devices, "d").await?;
    anyhow::ensure!(
        !ramp.conns.is_empty(),
        "no device could register: {:?}",
        ramp.failures
    );
    let registration = ramp.details();
    let rec = Recorder::new()?;
    let pending = Pending::new();
    let late = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let mut ids = Vec::new();
    let mut device_tasks = Vec::new();
    for (k, (_, conn)) in ramp.conns.into_iter().enumerate() {
        ids.push(conn.client_id.clone());
        device_tasks.push(tokio::spawn(device(
            conn,
            k,
            pending.clone(),
            stopped.clone(),
            rec.clone(),
            late.clone(),
        )));
    }

    let shared = Arc::new(Shared {
        target: ctx.target.clone(),
        http: ctx.target.http_client(workers)?,
        devices: ids,
        pending,
        next: AtomicU64::new(0),
        run_id: ctx.run_id.clone(),
        window: Window::after(ctx.warmup, length),
        rec: rec.clone(),
    });
    let window = shared.window;
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let meters = Meters::at_start(&window, ctx.server_pid).await;
    let cpu = meters.at_end(&window).await;
    if let Some(s) = &mut server {
        s.read_after();
    }
    for task in tasks {
        if task.await.is_err() {
            rec.fail("worker task died");
        }
    }
    let _ = stop.send(true);
    let mut conns = Vec::new();
    for task in device_tasks {
        if let Ok(Some(conn)) = task.await {
            conns.push(conn);
        }
    }
    close_all(conns).await;

    let mut result = RunResult::new(ctx.label, &ctx.target.url, "dispatches/s", &window, &rec);
    result.add_failures(&ramp.failures);
    let kinds = result.failure_kinds.clone();
    let of = |k: &str| kinds.get(k).copied().unwrap_or(0);
    let http_errors: serde_json::Map<String, serde_json::Value> = kinds
        .iter()
        .filter_map(|(k, n)| Some((k.strip_prefix("dispatch: HTTP ")?.to_owned(), (*n).into())))
        .collect();
    result.server = server;
    result.cpu(cpu);
    result.detail("devices", shared.devices.len());
    result.detail("dispatched", shared.next.load(Ordering::Relaxed));
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
    while !s.window.is_over() {
        let n = s.next.fetch_add(1, Ordering::Relaxed);
        let device = (n % s.devices.len() as u64) as usize;
        let name = format!("b-{}-{n}", s.run_id);
        let delivered = s.pending.insert(&name);
        let start = Instant::now();
        let session_id = match dispatch(&s.http, &s.target, &s.devices[device], &name).await {
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
async fn device(
    mut conn: Conn,
    index: usize,
    pending: Arc<Pending<Delivery>>,
    mut stop: watch::Receiver<bool>,
    rec: Recorder,
    late: Arc<AtomicU64>,
) -> Option<Conn> {
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return Some(conn),
            msg = conn.rx.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                rec.fail("device disconnected");
                return None;
            }
            Some(Ok(_)) => continue,
        };
        let at = Instant::now();
        let frame = match Frame::parse(&text) {
            Ok(frame) => frame,
            Err(fail) => {
                rec.fail(&fail.0);
                continue;
            }
        };
        if frame.ty != "task" {
            continue;
        }
        let Some(name) = frame.task_name.clone() else {
            continue;
        };
        let delivery = Delivery {
            device: index,
            session_id: frame.session_id,
            at,
        };
        if !pending.deliver(&name, delivery) {
            late.fetch_add(1, Ordering::Relaxed);
        }
    }
}
