//! `session`: the full round trip of a one-command plan. A worker dispatches over HTTP; the
//! device echoes the `task`, gets the acknowledgement and the `command`, answers
//! `command_results` (one success per action), gets `task_end` `completed`; the worker then
//! reads `GET /api/task_result/{sid}` and checks it is `done`. Latency is dispatch to the
//! result read.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Conn, Fail};
use crate::http::Http;
use crate::http::{dispatch, task_result};
use crate::report::RunResult;
use crate::run::{self, Device, Plan};
use crate::Ctx;

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct SessionArgs {
    /// Devices connected (executors, round-robin).
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Concurrent HTTP workers, each with one session in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds measured (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// A `task_end` as a device saw it.
pub(crate) struct End {
    device: usize,
    completed: bool,
}

type Shared = run::Shared<End>;

pub(crate) async fn run(ctx: &Ctx, args: &SessionArgs) -> anyhow::Result<RunResult> {
    let plan = Plan::new(args.devices, args.concurrency, args.seconds)?;
    let (mut result, registration) =
        run::devices_and_workers(ctx, plan, "s", "sessions/s", device, worker).await?;
    result.detail("registration", registration);
    Ok(result)
}

/// Runs sessions until the window closes, one at a time.
async fn worker(s: Arc<Shared>) {
    let mut http = Http::new(&s.target);
    while !s.window.is_over() {
        let start = Instant::now();
        match one_session(&s, &mut http).await {
            Ok(()) => {
                let done = Instant::now();
                if s.window.contains(done) {
                    s.rec.ok(done - start);
                }
            }
            Err(fail) => {
                s.rec.fail(&fail.0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn one_session(s: &Shared, http: &mut Http) -> Result<(), Fail> {
    let n = s.next.fetch_add(1, Ordering::Relaxed);
    let device = (n % s.devices.len() as u64) as usize;
    let name = format!("b-{}-{n}", s.run_id);
    let ended = s.pending.insert(&name);
    let session_id = match dispatch(http, &s.devices[device], &name).await {
        Ok(sid) => sid,
        Err(fail) => {
            s.pending.forget(&name);
            return Err(fail);
        }
    };
    let end = match tokio::time::timeout(s.target.timeout, ended).await {
        Ok(Ok(end)) => end,
        Ok(Err(_)) | Err(_) => {
            s.pending.forget(&name);
            return Err(Fail::timeout("task_end"));
        }
    };
    if end.device != device {
        return Err(Fail::new("misrouted"));
    }
    if !end.completed {
        return Err(Fail::new("task_end not completed"));
    }
    let result = task_result(http, &session_id).await?;
    match (result.status.as_deref(), result.state.as_deref()) {
        (Some("done"), Some("completed")) => Ok(()),
        (Some("done"), _) => Err(Fail::new("task_result: not completed")),
        _ => Err(Fail::new("task_result: not done after task_end")),
    }
}

/// The device's echo of a `task`: it accepts the session.
#[derive(Serialize)]
struct Echo<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    status: &'static str,
    client_type: &'static str,
    client_id: &'a str,
    session_id: &'a str,
    task_name: &'a str,
    request: Option<&'a str>,
}

/// `command_results`: one success per action of the `command`.
#[derive(Serialize)]
struct Results<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    status: &'static str,
    client_type: &'static str,
    client_id: &'a str,
    session_id: Option<&'a str>,
    prev_response_id: Option<&'a str>,
    action_results: Vec<Success<'a>>,
}

#[derive(Serialize)]
struct Success<'a> {
    status: &'static str,
    /// Always `null`.
    result: (),
    call_id: Option<&'a str>,
}

/// Plays a cooperative device until told to stop; returns the connection if still open.
pub(crate) async fn device(mut conn: Conn, mut d: Device<End>) -> Option<Conn> {
    // session id -> task name, from the task assignment to its task_end.
    let mut names: HashMap<String, String> = HashMap::new();
    loop {
        let frame = match d.next_frame(&mut conn).await {
            Ok((frame, _)) => frame,
            Err(end) => return end.still_open(conn),
        };
        let reply = match frame.ty.as_str() {
            "task" => {
                let (Some(sid), Some(name)) = (&frame.session_id, &frame.task_name) else {
                    d.rec.fail("device: task without session_id or task_name");
                    continue;
                };
                names.insert(sid.clone(), name.clone());
                serde_json::to_string(&Echo {
                    ty: "task",
                    status: "continue",
                    client_type: "device",
                    client_id: &conn.client_id,
                    session_id: sid,
                    task_name: name,
                    request: frame.user_request.as_deref(),
                })
            }
            "command" => {
                let action_results = frame
                    .actions
                    .iter()
                    .flatten()
                    .map(|a| Success {
                        status: "success",
                        result: (),
                        call_id: a.call_id.as_deref(),
                    })
                    .collect();
                serde_json::to_string(&Results {
                    ty: "command_results",
                    status: "continue",
                    client_type: "device",
                    client_id: &conn.client_id,
                    session_id: frame.session_id.as_deref(),
                    prev_response_id: frame.response_id.as_deref(),
                    action_results,
                })
            }
            "task_end" => {
                let name = frame
                    .session_id
                    .as_ref()
                    .and_then(|sid| names.remove(sid))
                    .or(frame.task_name);
                if let Some(name) = name {
                    let end = End {
                        device: d.index,
                        completed: frame.status.as_deref() == Some("completed"),
                    };
                    d.pending.deliver(&name, end);
                }
                continue;
            }
            "error" => {
                d.rec.fail("device: error frame");
                continue;
            }
            _ => continue,
        };
        let Ok(reply) = reply else {
            d.rec.fail("device: unserialisable reply");
            continue;
        };
        if let Err(fail) = conn.send(reply.into()).await {
            d.rec.fail(&format!("device: {}", fail.0));
            return None;
        }
    }
}
