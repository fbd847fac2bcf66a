//! `job`: fleet job fan-out. `--devices` cooperative devices connect (as in `session`:
//! echo, one success per action); workers each create a job over all of them (`POST
//! /api/jobs`, selector `client_ids: bench-<run>-j*`, a one-command plan, `--batch`) and
//! poll it (`GET /api/jobs/{id}?members=none`) until it ends. One operation is one job;
//! its latency is creation to end. The fan-out figure is the `sessions_per_second`
//! detail: members of the jobs completed in the window over the time those jobs took.
//!
//! With `--server-pid`, before any job runs (the server's allocator not yet warmed by
//! them), a job is created over the still-idle devices with batch 1 and nobody reading:
//! all but one member wait. The server's RSS growth divided by the members is the
//! `rss_per_waiting_member_bytes` detail (it includes the store's page cache for their
//! rows); that job is then cancelled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::client::{ramp, Fail, Pending, Target};
use crate::http::Http;
use crate::report::{ProcUsage, Recorder, Window};
use crate::run::{ramped_result, work_then_close, Device};
use crate::{count, procstat, secs, Ctx, RunResult};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct JobArgs {
    /// Devices connected; every job addresses all of them.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Devices each job runs at once: a number or a percentage ("25%"); default all.
    #[arg(long)]
    pub batch: Option<String>,
    /// Jobs in flight at once (each worker waits for its job's end).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Seconds measured (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// Most time one job may take before it counts as timed out.
const JOB_LIMIT: Duration = Duration::from_secs(300);

/// What the workers share.
struct Shared {
    target: Arc<Target>,
    selector: String,
    batch: Option<String>,
    window: Window,
    rec: Recorder,
    /// Members of the jobs completed inside the window, and the microseconds they took.
    members: AtomicU64,
    job_micros: AtomicU64,
}

pub(crate) async fn run(ctx: &Ctx, args: &JobArgs) -> anyhow::Result<RunResult> {
    let devices = count("--devices", args.devices)?;
    let workers = count("--concurrency", args.concurrency)?;
    let length = secs("--seconds", args.seconds, false)?;
    let mut server = ProcUsage::new(ctx.server_pid);
    let ramp = ramp(ctx, devices, "j").await?;
    anyhow::ensure!(
        !ramp.conns.is_empty(),
        "no device could register: {:?}",
        ramp.failures
    );
    let (conns, registration) = ramp.split();
    let selector = format!("bench-{}-j*", ctx.run_id);
    let memory = match ctx.server_pid {
        Some(pid) => Some(waiting_members_rss(&ctx.target, &selector, pid, conns.len()).await),
        None => None,
    };

    let rec = Recorder::new()?;
    let pending = Pending::new();
    let (stop, stopped) = watch::channel(false);
    let mut device_tasks = Vec::new();
    for (k, (_, conn)) in conns.into_iter().enumerate() {
        let d = Device {
            index: k,
            pending: pending.clone(),
            stop: stopped.clone(),
            rec: rec.clone(),
        };
        device_tasks.push(tokio::spawn(crate::session::device(conn, d)));
    }
    let shared = Arc::new(Shared {
        target: ctx.target.clone(),
        selector,
        batch: args.batch.clone(),
        window: Window::after(ctx.warmup, length),
        rec: rec.clone(),
        members: AtomicU64::new(0),
        job_micros: AtomicU64::new(0),
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

    let mut result = ramped_result(ctx, "jobs", &window, &rec, &registration, server, cpu);
    let members = shared.members.load(Ordering::Relaxed);
    let micros = shared.job_micros.load(Ordering::Relaxed);
    result.detail("devices", registration.connected);
    result.detail("members_completed", members);
    if micros > 0 {
        let rate = members as f64 * 1e6 / micros as f64;
        result.detail("sessions_per_second", (rate * 10.0).round() / 10.0);
    }
    if let Some(bytes) = memory {
        result.detail("rss_per_waiting_member_bytes", bytes);
    }
    result.detail("registration", registration.details);
    Ok(result)
}

/// Runs jobs back to back until the window closes.
async fn worker(s: Arc<Shared>) {
    let mut http = Http::new(&s.target);
    while !s.window.is_over() {
        let start = Instant::now();
        match one_job(&s, &mut http).await {
            Ok(total) => {
                let done = Instant::now();
                if s.window.contains(done) {
                    s.rec.ok(done - start);
                    let micros = u64::try_from((done - start).as_micros()).unwrap_or(u64::MAX);
                    s.members.fetch_add(total, Ordering::Relaxed);
                    s.job_micros.fetch_add(micros, Ordering::Relaxed);
                }
            }
            Err(fail) => {
                s.rec.fail(&fail.0);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[derive(Deserialize)]
struct JobView {
    job_id: Option<String>,
    state: Option<String>,
    total: Option<u64>,
}

/// Creates a job over every device and waits for its end; its member count.
async fn one_job(s: &Shared, http: &mut Http) -> Result<u64, Fail> {
    let id = create(http, &s.selector, s.batch.as_deref()).await?;
    let deadline = Instant::now() + JOB_LIMIT;
    let path = format!("/api/jobs/{id}?members=none");
    let mut every = Duration::from_millis(5);
    loop {
        let body = http.get(&path, "job").await?;
        let view: JobView =
            serde_json::from_slice(&body).map_err(|_| Fail::new("job: bad body"))?;
        match view.state.as_deref() {
            Some("running") => {}
            Some("completed") => return Ok(view.total.unwrap_or(0)),
            _ => return Err(Fail::new("job not completed")),
        }
        if Instant::now() > deadline {
            return Err(Fail::timeout("job"));
        }
        tokio::time::sleep(every).await;
        every = (every * 2).min(Duration::from_millis(50));
    }
}

/// `POST /api/jobs` over `selector` (a client id glob) with a one-command plan; its id.
async fn create(http: &mut Http, selector: &str, batch: Option<&str>) -> Result<String, Fail> {
    let mut body = serde_json::json!({
        "selector": {"client_ids": selector},
        "request": "bench",
        "commands": [{"tool_name": "noop", "tool_type": "action"}],
    });
    if let Some(b) = batch {
        body["batch"] = b.parse::<u64>().map_or_else(|_| b.into(), Into::into);
    }
    let body = serde_json::to_vec(&body).map_err(|_| Fail::new("job: bad body"))?;
    let answer = http.post_json("/api/jobs", body, "create job").await?;
    serde_json::from_slice::<JobView>(&answer)
        .map_err(|_| Fail::new("create job: bad body"))?
        .job_id
        .ok_or_else(|| Fail::new("create job: no job_id"))
}

/// The server's RSS growth per member of a job whose members wait (batch 1, nobody
/// reading), then cancels that job. `None` parts of the reading give 0.
async fn waiting_members_rss(target: &Target, selector: &str, pid: u32, n: usize) -> u64 {
    let mut http = Http::new(target);
    let before = procstat::rss_kb(Some(pid)).unwrap_or(0);
    let Ok(id) = create(&mut http, selector, Some("1")).await else {
        return 0;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = procstat::rss_kb(Some(pid)).unwrap_or(0);
    let _ = http_delete(target, &id).await;
    after.saturating_sub(before) * 1024 / n.max(1) as u64
}

/// `DELETE /api/jobs/{id}` (its answer is not needed).
async fn http_delete(target: &Target, id: &str) -> Result<(), Fail> {
    Http::new(target)
        .delete(&format!("/api/jobs/{id}"), "cancel job")
        .await
        .map(|_| ())
}
