//! `aip run` (a fleet job: one request to every device a selector picks) and `aip job`
//! (show, follow or cancel one). Both follow a running job to its end with the live
//! display of `job_view.rs`, then print the summary table; the exit code says whether
//! every device completed ([`Exit::of_job`]).

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::job_view::{summary, Live};
use super::{urlencode, Api, ApiArgs, ApiError};
use crate::common::positive_duration;
use crate::exit::{Exit, Usage};

/// Which devices: `--select`, `--platform`, `--client` (AND).
#[derive(Args)]
pub struct SelectArgs {
    /// A registration tag the device must have: key=value, key=v1,v2 (any of), globs
    /// allowed (role=web*); repeatable (all must match).
    #[arg(long = "select", value_name = "KEY=VALUE")]
    select: Vec<String>,
    /// The platform the device registered with (linux, windows, a glob).
    #[arg(long)]
    platform: Option<String>,
    /// Client ids (globs, comma-separated: web-*,db-1); repeatable.
    #[arg(long = "client", value_name = "GLOB")]
    clients: Vec<String>,
}

impl SelectArgs {
    /// True when no criterion is given.
    fn is_empty(&self) -> bool {
        self.select.is_empty() && self.platform.is_none() && self.clients.is_empty()
    }

    /// The selector object of `POST /api/jobs`.
    fn to_json(&self) -> Result<Value, Usage> {
        let mut tags = serde_json::Map::new();
        for s in &self.select {
            let (k, v) = s
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| Usage(format!("--select '{s}' is not key=value")))?;
            let values: Vec<Value> = v.split(',').map(|x| json!(x)).collect();
            tags.insert(k.to_owned(), Value::Array(values));
        }
        let mut selector = json!({});
        if !tags.is_empty() {
            selector["tags"] = Value::Object(tags);
        }
        if let Some(p) = &self.platform {
            selector["platform"] = json!(p);
        }
        let ids: Vec<&str> = self.clients.iter().flat_map(|c| c.split(',')).collect();
        if !ids.is_empty() {
            selector["client_ids"] = json!(ids);
        }
        Ok(selector)
    }

    /// The query of `GET /api/clients` (`&`-joined, percent-encoded).
    pub fn to_query(&self) -> String {
        let mut q: Vec<String> = self
            .select
            .iter()
            .map(|s| format!("tag={}", urlencode(s)))
            .collect();
        if let Some(p) = &self.platform {
            q.push(format!("platform={}", urlencode(p)));
        }
        q.extend(
            self.clients
                .iter()
                .map(|c| format!("client_id={}", urlencode(c))),
        );
        q.join("&")
    }
}

/// `aip run`: one request to many devices, in batches.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    selector: SelectArgs,
    /// How many devices run at once: a number, or a percentage of them (25%). Default: all.
    #[arg(long)]
    batch: Option<String>,
    /// After this many failed devices, start no more (the rest are skipped).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_failures: Option<u32>,
    /// A device still running after this long is stopped and counts as failed (90s, 15m).
    #[arg(long, value_parser = positive_duration)]
    timeout: Option<Duration>,
    /// Task name of every device's session (default: the job id).
    #[arg(long)]
    task_name: Option<String>,
    /// Print the job id and return at once; follow it later with `aip job ID`.
    #[arg(long)]
    detach: bool,
    /// The request, in natural language (or a JSON plan); or, after `--`, a command line
    /// to run on every device: `aip run --select role=web -- uptime`.
    request: Option<String>,
    /// The command line after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `aip job`: show a job (following it while it runs), or cancel it.
#[derive(Args)]
pub struct JobArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The job id (`aip run` prints it).
    id: String,
    /// Cancel it: running devices are stopped, pending ones skipped.
    #[arg(long)]
    cancel: bool,
    /// Do not follow a running job: show it as it is now.
    #[arg(long)]
    no_wait: bool,
}

/// Runs `aip run`.
pub async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    if args.selector.is_empty() {
        return Err(
            Usage("say which devices: --select KEY=VALUE, --platform or --client".into()).into(),
        );
    }
    let mut body = json!({"selector": args.selector.to_json()?});
    match (&args.request, args.command.is_empty()) {
        (Some(_), false) => {
            return Err(Usage("give a request or a command after --, not both".into()).into())
        }
        (None, true) => return Err(Usage("give a request, or a command after --".into()).into()),
        (Some(r), true) => body["request"] = json!(r),
        (None, false) => {
            let line = args.command.join(" ");
            body["request"] = json!(line);
            body["commands"] = json!([{"tool_name": "execute_command", "tool_type": "action",
                                       "parameters": {"command": line}}]);
        }
    }
    if let Some(b) = &args.batch {
        body["batch"] = match b.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => json!(b),
        };
    }
    if let Some(m) = args.max_failures {
        body["max_failures"] = json!(m);
    }
    if let Some(t) = args.timeout {
        body["timeout"] = json!(t.as_secs_f64());
    }
    if let Some(n) = &args.task_name {
        body["task_name"] = json!(n);
    }
    let api = args.api.connect()?;
    let created = api.post("/api/jobs", &body).await?;
    let id = created["job_id"].as_str().unwrap_or_default().to_owned();
    if args.detach {
        if args.api.json {
            println!("{created}");
        } else {
            println!(
                "job {id}: {}\nfollow it with: aip job {id}",
                devices(&created)
            );
        }
        return Ok(Exit::Success);
    }
    if !args.api.json {
        eprintln!("job {id}: {}{}", devices(&created), batch_note(&created));
    }
    follow(&api, &id, args.api.json).await
}

/// `1 device`, `12 devices`.
fn devices(job: &Value) -> String {
    match job["total"].as_u64().unwrap_or(0) {
        1 => "1 device".to_owned(),
        n => format!("{n} devices"),
    }
}

fn batch_note(job: &Value) -> String {
    match &job["batch"] {
        Value::Null => String::new(),
        b => format!(
            ", {} at a time",
            b.as_str().map_or_else(|| b.to_string(), str::to_owned)
        ),
    }
}

/// Runs `aip job`.
pub async fn job(args: JobArgs) -> anyhow::Result<Exit> {
    let api = args.api.connect()?;
    let path = format!("/api/jobs/{}", urlencode(&args.id));
    if args.cancel {
        let view = api.delete(&path).await?;
        return Ok(done(&view, args.api.json));
    }
    let view = api.get(&path).await?;
    if view["state"] != "running" || args.no_wait {
        return Ok(done(&view, args.api.json));
    }
    follow(&api, &args.id, args.api.json).await
}

/// Prints a job's summary (or its JSON); its exit code.
fn done(view: &Value, raw: bool) -> Exit {
    if raw {
        println!("{view}");
    } else {
        print!("{}", summary(view));
    }
    Exit::of_job(view["state"].as_str().unwrap_or(""))
}

/// How long the server may be unreachable while a job is followed (a restart).
const OUTAGE: Duration = Duration::from_secs(30);

/// Follows job `id` until it ends (or Ctrl-C: it keeps running), then prints it.
async fn follow(api: &Api, id: &str, raw: bool) -> anyhow::Result<Exit> {
    let path = format!("/api/jobs/{}", urlencode(id));
    let mut live = Live::new(!raw);
    let mut poll_every = Duration::from_millis(100);
    let mut reached = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let view = match api.get(&path).await {
            Ok(v) => {
                reached = Instant::now();
                v
            }
            Err(e) if e.downcast_ref::<ApiError>().is_none() && reached.elapsed() < OUTAGE => {
                live.note(&format!("{e:#}; retrying"));
                Value::Null
            }
            Err(e) => return Err(e),
        };
        if !view.is_null() {
            live.show(&view);
            if view["state"] != "running" {
                live.finish();
                return Ok(done(&view, raw));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll_every) => {}
            _ = &mut ctrl_c => {
                live.finish();
                eprintln!(
                    "aip: stopped following; job {id} keeps running \
                     (aip job {id} to follow it, aip job {id} --cancel to stop it)"
                );
                return Ok(Exit::Interrupted);
            }
        }
        poll_every = (poll_every * 2).min(Duration::from_millis(500));
    }
}
