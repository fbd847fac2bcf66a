//! One function per client subcommand, each returning the [`Exit`] of its outcome.

use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::render;
use super::wait::{follow, Waited};
use super::{urlencode, Api, ApiArgs, ApiError};
use crate::common::{duration, positive_duration};
use crate::exit::Exit;

/// `aip dispatch`: send a task to a device.
#[derive(Args)]
pub struct DispatchArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Target device id.
    #[arg(long)]
    target: String,
    /// Name for the task (letters, digits, `.`, `_`, `-`).
    #[arg(long)]
    task_name: Option<String>,
    /// A shell command to run as one plan step (execute_command); repeatable, in order.
    #[arg(long = "command")]
    commands: Vec<String>,
    /// Wait for the session to end and print its result; the exit code says how it ended.
    #[arg(long)]
    wait: bool,
    /// With --wait: stop waiting after this long (90, 90s, 15m); exit 3, the session keeps running.
    #[arg(long, requires = "wait", value_parser = positive_duration)]
    timeout: Option<Duration>,
    /// With --wait: print whole outputs instead of cutting long ones.
    #[arg(long)]
    full: bool,
    /// The request: natural language, or a JSON plan (default with --command: the commands).
    #[arg(required_unless_present = "commands")]
    request: Option<String>,
}

/// `aip result`: print a session's outcome.
#[derive(Args)]
pub struct ResultArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Session id or task name (the newest session with that name).
    id: String,
    /// Wait for the session to end if it is still running.
    #[arg(long)]
    wait: bool,
    /// With --wait: stop waiting after this long (90, 90s, 15m); exit 3.
    #[arg(long, requires = "wait", value_parser = positive_duration)]
    timeout: Option<Duration>,
    /// Print whole outputs instead of cutting long ones.
    #[arg(long)]
    full: bool,
}

/// A session state, as `--state` takes it.
#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Created,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl StateArg {
    fn as_str(self) -> &'static str {
        match self {
            StateArg::Created => "created",
            StateArg::Running => "running",
            StateArg::Completed => "completed",
            StateArg::Failed => "failed",
            StateArg::Cancelled => "cancelled",
        }
    }
}

/// `aip sessions`: list stored sessions, newest first.
#[derive(Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only sessions in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Only sessions this client ran or requested.
    #[arg(long = "device", visible_alias = "client-id")]
    client_id: Option<String>,
    /// Only sessions created within this long (90s, 15m, 12h, 7d).
    #[arg(long, value_parser = duration)]
    since: Option<Duration>,
    /// Most sessions listed (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
}

/// `aip cancel`: cancel a live session.
#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Session id or task name (the newest session with that name).
    id: String,
}

/// `aip health`: is the server up?
#[derive(Args)]
pub struct HealthArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// `aip clients`: list connected clients (with a selector: the devices it picks).
#[derive(Args)]
pub struct ClientsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    selector: super::jobs::SelectArgs,
}

/// Runs `aip dispatch`.
pub async fn dispatch(args: DispatchArgs) -> anyhow::Result<Exit> {
    let api = args.api.connect()?;
    let request = args
        .request
        .clone()
        .unwrap_or_else(|| args.commands.join("; "));
    let mut body = json!({"target_id": args.target, "request": request});
    if let Some(n) = &args.task_name {
        body["task_name"] = json!(n);
    }
    if !args.commands.is_empty() {
        body["commands"] = json!(args
            .commands
            .iter()
            .map(|c| json!({"tool_name": "execute_command", "tool_type": "action", "parameters": {"command": c}}))
            .collect::<Vec<_>>());
    }
    let answer = api.post("/api/dispatch", &body).await?;
    let sid = answer["session_id"].as_str().unwrap_or_default().to_owned();
    if !args.wait {
        if args.api.json {
            println!("{answer}");
        } else {
            println!(
                "dispatched: session {sid} (task {})\nfollow it with: aip result {sid} --wait",
                answer["task_name"].as_str().unwrap_or("")
            );
        }
        return Ok(Exit::Success);
    }
    waited(&api, &sid, args.timeout, args.api.json, args.full).await
}

/// Runs `aip result`.
pub async fn result(args: ResultArgs) -> anyhow::Result<Exit> {
    let api = args.api.connect()?;
    if args.wait {
        return waited(&api, &args.id, args.timeout, args.api.json, args.full).await;
    }
    let view = api
        .get(&format!("/api/task_result/{}", urlencode(&args.id)))
        .await?;
    Ok(show(&view, args.api.json, args.full))
}

/// Follows a session and prints how it ended.
async fn waited(
    api: &Api,
    id: &str,
    timeout: Option<Duration>,
    raw: bool,
    full: bool,
) -> anyhow::Result<Exit> {
    match follow(api, id, timeout).await? {
        Waited::Done(view) => Ok(show(&view, raw, full)),
        Waited::TimedOut => {
            eprintln!(
                "aip: gave up waiting after {}; session {id} is still running \
                 (aip result {id} --wait to keep following it, aip cancel {id} to stop it)",
                render::human_duration(timeout.unwrap_or_default())
            );
            Ok(Exit::Stopped)
        }
        Waited::Interrupted => {
            eprintln!(
                "aip: interrupted; session {id} is still running \
                 (aip result {id} --wait to keep following it, aip cancel {id} to stop it)"
            );
            Ok(Exit::Interrupted)
        }
    }
}

/// Prints a session view; its exit code.
fn show(view: &Value, raw: bool, full: bool) -> Exit {
    if raw {
        println!("{view}");
    } else {
        print!("{}", render::session(view, full));
    }
    Exit::of_session(
        view["state"].as_str().unwrap_or(""),
        view["reason"].as_str(),
    )
}

/// Runs `aip sessions`.
pub async fn sessions(args: SessionsArgs) -> anyhow::Result<Exit> {
    let api = args.api.connect()?;
    let mut query = format!("/api/sessions?limit={}", args.limit);
    if let Some(s) = args.state {
        query.push_str(&format!("&state={}", s.as_str()));
    }
    if let Some(c) = &args.client_id {
        query.push_str(&format!("&client_id={}", urlencode(c)));
    }
    let answer = api.get(&query).await?;
    let now = SystemTime::now();
    let list: Vec<Value> = answer["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| match args.since {
            None => true,
            Some(since) => s["created_at"]
                .as_str()
                .and_then(|c| humantime::parse_rfc3339(c).ok())
                .is_some_and(|c| now.duration_since(c).unwrap_or_default() <= since),
        })
        .collect();
    if args.api.json {
        println!("{}", json!({"sessions": list}));
    } else if list.is_empty() {
        println!("no sessions");
    } else {
        print!("{}", render::sessions_table(&list, now));
    }
    Ok(Exit::Success)
}

/// Runs `aip cancel`.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<Exit> {
    let api = args.api.connect()?;
    // A task name is resolved to its newest session first; the cancel itself is by id.
    let found = api
        .get(&format!("/api/task_result/{}", urlencode(&args.id)))
        .await?;
    let sid = found["session_id"].as_str().unwrap_or(&args.id).to_owned();
    match api
        .delete(&format!("/api/sessions/{}", urlencode(&sid)))
        .await
    {
        Ok(view) => {
            if args.api.json {
                println!("{view}");
            } else {
                println!(
                    "cancelled session {sid} (task {})",
                    view["task_name"].as_str().unwrap_or("-")
                );
            }
            Ok(Exit::Success)
        }
        Err(e) if is_conflict(&e) => {
            let view = api
                .get(&format!("/api/task_result/{}", urlencode(&sid)))
                .await
                .unwrap_or(Value::Null);
            anyhow::bail!(
                "session {sid} already ended: {}",
                view["state"].as_str().unwrap_or("finished")
            )
        }
        Err(e) => Err(e),
    }
}

fn is_conflict(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|a| a.status == StatusCode::CONFLICT)
}

/// Runs `aip clients`.
pub async fn clients(args: ClientsArgs) -> anyhow::Result<Exit> {
    let api = args.api.connect()?;
    let query = args.selector.to_query();
    let path = if query.is_empty() {
        "/api/clients".to_owned()
    } else {
        format!("/api/clients?{query}")
    };
    let r = api.get(&path).await?;
    if args.api.json {
        println!("{r}");
        return Ok(Exit::Success);
    }
    for c in r["clients"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<13} platform={:<8} since {}  last seen {}{}{}",
            c["client_id"].as_str().unwrap_or(""),
            c["type"].as_str().unwrap_or(""),
            c["platform"].as_str().unwrap_or("-"),
            c["connected_at"].as_str().unwrap_or(""),
            c["last_seen"].as_str().unwrap_or(""),
            c["target_id"]
                .as_str()
                .map(|t| format!("  target={t}"))
                .unwrap_or_default(),
            tags_of(c),
        );
    }
    Ok(Exit::Success)
}

/// `  tags role=web,rack=4`, or nothing.
fn tags_of(c: &Value) -> String {
    let Some(tags) = c["tags"].as_object().filter(|t| !t.is_empty()) else {
        return String::new();
    };
    let pairs: Vec<String> = tags
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            )
        })
        .collect();
    format!("  tags {}", pairs.join(","))
}

/// Runs `aip health`: exit 0 when the server answers healthy (container health checks).
pub async fn health(args: HealthArgs) -> anyhow::Result<Exit> {
    let api = args.api.connect()?;
    let r = api.get("/api/health").await?;
    if args.api.json {
        println!("{r}");
    } else {
        println!(
            "{}: up {}, {} clients, {} active sessions",
            r["status"].as_str().unwrap_or("?"),
            render::human_duration(Duration::from_secs(
                r["uptime_seconds"].as_u64().unwrap_or(0)
            )),
            r["connected_clients"],
            r["active_sessions"],
        );
    }
    Ok(if r["status"] == "healthy" {
        Exit::Success
    } else {
        Exit::Failed
    })
}
