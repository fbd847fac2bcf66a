//! HTTP client commands: `aip dispatch`, `aip result`, `aip clients`.

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

/// Where the server's HTTP API is.
#[derive(Args)]
pub struct ApiArgs {
    /// Base URL of the server's HTTP API.
    #[arg(long, env = "AIP_URL", default_value = "http://127.0.0.1:5000")]
    url: String,
    /// API key (sent as X-API-Key).
    #[arg(long, env = "AIP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

impl ApiArgs {
    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let req = match &self.api_key {
            Some(k) => req.header("X-API-Key", k),
            None => req,
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = body["detail"].as_str().unwrap_or("no detail");
            anyhow::bail!("{status}: {detail}");
        }
        Ok(body)
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

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
    /// Wait for the result and print it.
    #[arg(long)]
    wait: bool,
    /// The request: natural language, or a JSON plan.
    request: String,
}

/// `aip result`: print a session's result.
#[derive(Args)]
pub struct ResultArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Session id or task name.
    id: String,
}

/// `aip clients`: list connected clients.
#[derive(Args)]
pub struct ClientsArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs `aip dispatch`.
pub async fn dispatch(args: DispatchArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut body = json!({"target_id": args.target, "request": args.request});
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
    let answer = args
        .api
        .call(http.post(args.api.endpoint("/api/dispatch")).json(&body))
        .await?;
    let sid = answer["session_id"].as_str().unwrap_or_default().to_owned();
    if !args.wait {
        if args.api.json {
            println!("{answer}");
        } else {
            println!(
                "dispatched: session {sid} (task {})",
                answer["task_name"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    let path = format!("/api/task_result/{}", urlencode(&sid));
    loop {
        let r = args.api.call(http.get(args.api.endpoint(&path))).await?;
        if r["status"] == "done" {
            print_result(&r, args.api.json);
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// Runs `aip result`.
pub async fn result(args: ResultArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let path = format!("/api/task_result/{}", urlencode(&args.id));
    let r = args.api.call(http.get(args.api.endpoint(&path))).await?;
    print_result(&r, args.api.json);
    Ok(())
}

/// Runs `aip clients`.
pub async fn clients(args: ClientsArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let r = args
        .api
        .call(http.get(args.api.endpoint("/api/clients")))
        .await?;
    if args.api.json {
        println!("{r}");
        return Ok(());
    }
    for c in r["clients"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<13} platform={:<8} since {}  last seen {}{}",
            c["client_id"].as_str().unwrap_or(""),
            c["type"].as_str().unwrap_or(""),
            c["platform"].as_str().unwrap_or("-"),
            c["connected_at"].as_str().unwrap_or(""),
            c["last_seen"].as_str().unwrap_or(""),
            c["target_id"]
                .as_str()
                .map(|t| format!("  target={t}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn short(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let s = s.trim_end();
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Prints a task result readably: state, answer, and each step or round.
fn print_result(r: &Value, raw: bool) {
    if raw {
        println!("{r}");
        return;
    }
    println!(
        "session {}  task {}  device {}",
        r["session_id"].as_str().unwrap_or(""),
        r["task_name"].as_str().unwrap_or(""),
        r["client_id"].as_str().unwrap_or("")
    );
    println!(
        "state: {}{}",
        r["state"].as_str().unwrap_or(""),
        r["reason"]
            .as_str()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default()
    );
    if let Some(e) = r["error"].as_str() {
        println!("error: {e}");
    }
    let result = &r["result"];
    if let Some(steps) = result["transcript"].as_array() {
        let (mut prompt, mut completion) = (0, 0);
        for step in steps {
            println!("\nstep {}", step["step"]);
            if let Some(t) = step["text"].as_str().filter(|t| !t.trim().is_empty()) {
                println!("  model: {}", short(&json!(t), 400));
            }
            let calls = step["tool_calls"].as_array().cloned().unwrap_or_default();
            let results = step["results"].as_array().cloned().unwrap_or_default();
            for (i, c) in calls.iter().enumerate() {
                println!(
                    "  → {} {}",
                    c["name"].as_str().unwrap_or(""),
                    short(&c["arguments"], 200)
                );
                if let Some(res) = results.get(i) {
                    print_action_result(res, "    ");
                }
            }
            prompt += step["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            completion += step["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        }
        println!("\ntokens: {prompt} prompt + {completion} completion");
    } else if let Some(rounds) = result["rounds"].as_array() {
        for (i, round) in rounds.iter().enumerate() {
            println!("\nround {}", i + 1);
            for res in round["action_results"].as_array().into_iter().flatten() {
                print_action_result(res, "  ");
            }
        }
    }
    if let Some(a) = result["answer"].as_str() {
        println!("\nanswer: {a}");
    } else if let Some(a) = result.get("result").filter(|v| !v.is_null()) {
        println!("\nresult: {}", short(a, 2000));
    }
}

fn print_action_result(res: &Value, indent: &str) {
    let status = res["status"].as_str().unwrap_or("?");
    match res["error"].as_str() {
        Some(e) => println!("{indent}{status}: {e}"),
        None => println!("{indent}{status}"),
    }
    let out = &res["result"];
    if let Some(stdout) = out["stdout"].as_str().filter(|s| !s.is_empty()) {
        for line in short(&json!(stdout), 1000).lines() {
            println!("{indent}| {line}");
        }
    } else if !out.is_null() && out.get("stdout").is_none() {
        println!("{indent}| {}", short(out, 1000));
    }
}
