//! The orchestration scenarios share: [`devices_and_workers`] for `dispatch` and `session`
//! (devices stay connected, each read by its own task, while HTTP workers drive them), and
//! the end of a run on ramped clients ([`join_tasks`], [`ramped_result`], [`clients_result`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{close_all, ramp, Conn, Frame, Pending, Registration, Target};
use crate::report::{Meters, ProcUsage, Recorder, RunResult, Window};
use crate::{count, secs, Ctx};

/// Waits for a scenario's tasks; one that died counts as the failure `died`.
pub(crate) async fn join_tasks(tasks: Vec<JoinHandle<()>>, rec: &Recorder, died: &str) {
    for task in tasks {
        if task.await.is_err() {
            rec.fail(died);
        }
    }
}

/// The result of a run on ramped clients: what `rec` saw in `window` plus the ramp's
/// failures, with the server's usage and the CPU over the window.
pub(crate) fn ramped_result(
    ctx: &Ctx,
    unit: &'static str,
    window: &Window,
    rec: &Recorder,
    registration: &Registration,
    server: Option<ProcUsage>,
    cpu: (Option<f64>, Option<f64>),
) -> RunResult {
    let mut result = RunResult::new(ctx.label, &ctx.target.url, unit, window, rec);
    result.add_failures(&registration.failures);
    result.server = server;
    result.cpu(cpu);
    result
}

/// [`ramped_result`] for clients that each ran one task, with the `connected` and
/// `registration` details.
pub(crate) fn clients_result(
    ctx: &Ctx,
    unit: &'static str,
    window: &Window,
    rec: &Recorder,
    registration: Registration,
    server: Option<ProcUsage>,
    cpu: (Option<f64>, Option<f64>),
) -> RunResult {
    let mut result = ramped_result(ctx, unit, window, rec, &registration, server, cpu);
    result.detail("connected", registration.connected);
    result.detail("registration", registration.details);
    result
}

/// How many devices and workers, measured for how long.
pub(crate) struct Plan {
    devices: usize,
    workers: usize,
    length: Duration,
}

impl Plan {
    /// Checks `--devices`, `--concurrency` and `--seconds`.
    pub fn new(devices: usize, concurrency: usize, seconds: f64) -> anyhow::Result<Self> {
        Ok(Self {
            devices: count("--devices", devices)?,
            workers: count("--concurrency", concurrency)?,
            length: secs("--seconds", seconds, false)?,
        })
    }
}

/// Shared by the workers of one run.
pub(crate) struct Shared<T> {
    pub target: Arc<Target>,
    /// Client ids of the devices, in index order.
    pub devices: Vec<String>,
    /// What the devices report, by task name.
    pub pending: Arc<Pending<T>>,
    /// Operations started (numbers the task names).
    pub next: AtomicU64,
    pub run_id: String,
    pub window: Window,
    pub rec: Recorder,
}

/// What a device task gets besides its connection.
pub(crate) struct Device<T> {
    /// Its position in [`Shared::devices`].
    pub index: usize,
    /// Where it reports what it sees.
    pub pending: Arc<Pending<T>>,
    /// Changes once the workers are done.
    pub stop: watch::Receiver<bool>,
    pub rec: Recorder,
}

/// Why a device task stops reading.
pub(crate) enum Ended {
    /// Told to stop: the connection is still open.
    Stopped,
    /// The connection ended (counted as `device disconnected`).
    Disconnected,
}

impl Ended {
    /// `conn` if it is still open, to be closed cleanly.
    pub fn still_open(self, conn: Conn) -> Option<Conn> {
        match self {
            Ended::Stopped => Some(conn),
            Ended::Disconnected => None,
        }
    }
}

impl<T> Device<T> {
    /// The next server frame on `conn` and when it arrived; other messages are skipped,
    /// unparseable frames counted and skipped.
    pub async fn next_frame(&mut self, conn: &mut Conn) -> Result<(Frame, Instant), Ended> {
        loop {
            let msg = tokio::select! {
                _ = self.stop.changed() => return Err(Ended::Stopped),
                msg = conn.rx.next() => msg,
            };
            let text = match msg {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    self.rec.fail("device disconnected");
                    return Err(Ended::Disconnected);
                }
                Some(Ok(_)) => continue,
            };
            let at = Instant::now();
            match Frame::parse(&text) {
                Ok(frame) => return Ok((frame, at)),
                Err(fail) => self.rec.fail(&fail.0),
            }
        }
    }
}

/// Ramps the devices (client ids `bench-<run>-<tag><i>`), runs `device` on each until the
/// workers are done and `--concurrency` copies of `worker` over the measured window, then
/// closes the connections still open. Returns the result (operations as `unit`) with the
/// `devices` and `dispatched` details, and the `registration` detail for the caller to add
/// after its own.
pub(crate) async fn devices_and_workers<T, D, W>(
    ctx: &Ctx,
    plan: Plan,
    tag: &str,
    unit: &'static str,
    device: impl Fn(Conn, Device<T>) -> D,
    worker: impl Fn(Arc<Shared<T>>) -> W,
) -> anyhow::Result<(RunResult, serde_json::Value)>
where
    T: Send + 'static,
    D: Future<Output = Option<Conn>> + Send + 'static,
    W: Future<Output = ()> + Send + 'static,
{
    let Plan {
        devices,
        workers,
        length,
    } = plan;
    let mut server = ProcUsage::new(ctx.server_pid);

    let ramp = ramp(ctx, devices, tag).await?;
    anyhow::ensure!(
        !ramp.conns.is_empty(),
        "no device could register: {:?}",
        ramp.failures
    );
    let (conns, registration) = ramp.split();
    let rec = Recorder::new()?;
    let pending = Pending::new();
    let (stop, stopped) = watch::channel(false);
    let mut ids = Vec::new();
    let mut device_tasks = Vec::new();
    for (k, (_, conn)) in conns.into_iter().enumerate() {
        ids.push(conn.client_id.clone());
        let d = Device {
            index: k,
            pending: pending.clone(),
            stop: stopped.clone(),
            rec: rec.clone(),
        };
        device_tasks.push(tokio::spawn(device(conn, d)));
    }

    let shared = Arc::new(Shared {
        target: ctx.target.clone(),
        devices: ids,
        pending,
        next: AtomicU64::new(0),
        run_id: ctx.run_id.clone(),
        window: Window::after(ctx.warmup, length),
        rec: rec.clone(),
    });
    let window = shared.window;
    let cpu = work_then_close(
        ctx,
        &shared,
        &window,
        workers,
        worker,
        (&mut server, &rec),
        stop,
        device_tasks,
    )
    .await;

    let mut result = ramped_result(ctx, unit, &window, &rec, &registration, server, cpu);
    result.detail("devices", shared.devices.len());
    result.detail("dispatched", shared.next.load(Ordering::Relaxed));
    Ok((result, registration.details))
}

/// Runs `workers` copies of `worker` over `window` (the server's and the generator's CPU
/// measured meanwhile, its RSS read after), then stops the device tasks and closes the
/// connections they still hold. Returns the CPU figures.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn work_then_close<S, W>(
    ctx: &Ctx,
    shared: &Arc<S>,
    window: &Window,
    workers: usize,
    worker: impl Fn(Arc<S>) -> W,
    (server, rec): (&mut Option<ProcUsage>, &Recorder),
    stop: watch::Sender<bool>,
    device_tasks: Vec<JoinHandle<Option<Conn>>>,
) -> (Option<f64>, Option<f64>)
where
    W: Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(Arc::clone(shared))))
        .collect();
    let cpu = Meters::over(window, ctx.server_pid).await;
    if let Some(s) = server {
        s.read_after();
    }
    join_tasks(tasks, rec, "worker task died").await;
    let _ = stop.send(true);
    let mut conns = Vec::new();
    for task in device_tasks {
        if let Ok(Some(conn)) = task.await {
            conns.push(conn);
        }
    }
    close_all(conns).await;
    cpu
}
