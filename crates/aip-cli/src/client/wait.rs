//! Following a session to its end (`--wait`): polls its result, shows a live progress
//! line on a terminal (spinner, elapsed time, what the session is doing), gives up at
//! `--timeout`, and on Ctrl-C asks whether to cancel it (terminal) or says how to
//! (otherwise). The session is never cancelled without a "y".

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::time::Instant;

use super::{urlencode, Api, ApiError};

/// How the wait ended.
pub enum Waited {
    /// The session ended (by itself, or cancelled after the operator said yes).
    Done(Value),
    /// `--timeout` ran out; the session keeps running.
    TimedOut,
    /// Ctrl-C, and the session was not cancelled.
    Interrupted,
}

/// How long the server may be unreachable while a session is followed (a restart).
const OUTAGE: Duration = Duration::from_secs(30);

/// Polls `id` until it is done, `timeout` runs out or the operator interrupts.
pub async fn follow(api: &Api, id: &str, timeout: Option<Duration>) -> anyhow::Result<Waited> {
    let mut path = format!("/api/task_result/{}", urlencode(id));
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut interrupt = Interrupt::install()?;
    let progress = Progress::new();
    if progress.0.is_none() {
        eprintln!(
            "waiting for session {id} to end (Ctrl-C stops waiting; the session keeps running)"
        );
    }
    let mut poll_every = Duration::from_millis(100);
    let mut reached = Instant::now();
    loop {
        let view = match api.get(&path).await {
            Ok(view) => {
                reached = Instant::now();
                view
            }
            // Not an answer at all (a refusal is an ApiError): retry for a while.
            Err(e) if e.downcast_ref::<ApiError>().is_none() && reached.elapsed() < OUTAGE => {
                progress.note(&format!("{e:#}; retrying"));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = interrupt.recv() => {
                        progress.finish();
                        return Ok(Waited::Interrupted);
                    }
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(sid) = view["session_id"].as_str() {
            // A task name could name a newer session later: follow this one.
            path = format!("/api/task_result/{}", urlencode(sid));
        }
        if view["status"] == "done" {
            progress.finish();
            return Ok(Waited::Done(view));
        }
        progress.show(&view);
        let sleep = match deadline {
            Some(d) if Instant::now() + poll_every >= d => {
                tokio::time::sleep_until(d).await;
                progress.finish();
                return Ok(Waited::TimedOut);
            }
            _ => tokio::time::sleep(poll_every),
        };
        tokio::select! {
            () = sleep => {}
            () = interrupt.recv() => {
                progress.finish();
                if !ask_to_cancel(id, &mut interrupt).await {
                    return Ok(Waited::Interrupted);
                }
                let sid = view["session_id"].as_str().unwrap_or(id);
                return match api.delete(&format!("/api/sessions/{}", urlencode(sid))).await {
                    Ok(view) => Ok(Waited::Done(view)),
                    // It ended meanwhile: show how.
                    Err(_) => Ok(Waited::Done(api.get(&path).await?)),
                };
            }
        }
        poll_every = (poll_every * 2).min(Duration::from_millis(500));
    }
}

/// On a terminal, asks `Cancel session X? [y/N]` (a second Ctrl-C means no); elsewhere
/// there is nobody to ask: no.
async fn ask_to_cancel(id: &str, interrupt: &mut Interrupt) -> bool {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return false;
    }
    eprint!("\nCancel session {id}? [y/N] ");
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread: a blocked stdin read must not keep the runtime from shutting down.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(line);
    });
    tokio::select! {
        line = rx => matches!(line.as_deref().map(str::trim), Ok("y" | "Y" | "yes")),
        () = interrupt.recv() => {
            eprintln!();
            false
        }
    }
}

/// Ctrl-C, caught from the moment it is installed (no gap between two waits).
struct Interrupt {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
    #[cfg(windows)]
    signal: tokio::signal::windows::CtrlC,
}

impl Interrupt {
    fn install() -> std::io::Result<Interrupt> {
        #[cfg(unix)]
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        #[cfg(windows)]
        let signal = tokio::signal::windows::ctrl_c()?;
        Ok(Interrupt { signal })
    }

    async fn recv(&mut self) {
        self.signal.recv().await;
    }
}

/// The live line on stderr; plain lines instead when stderr is not a terminal it can
/// draw on.
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        // A terminal indicatif will not draw on (`TERM` unset or `dumb`) gets plain lines.
        if bar.is_hidden() {
            return Progress(None);
        }
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    fn show(&self, view: &Value) {
        let Some(bar) = &self.0 else { return };
        let device = view["client_id"].as_str().unwrap_or("?");
        let doing = match view["state"].as_str() {
            Some("created") => format!("waiting for {device} to accept the task"),
            Some("running") => match (
                view["step"]["round"].as_u64(),
                view["step"]["tools"].as_array(),
            ) {
                (Some(round), Some(tools)) => {
                    let tools: Vec<&str> = tools.iter().filter_map(Value::as_str).collect();
                    format!("running on {device} · step {round}: {}", tools.join(", "))
                }
                _ => format!("running on {device}"),
            },
            Some(other) => other.to_owned(),
            None => "…".to_owned(),
        };
        let sid = view["session_id"].as_str().unwrap_or("");
        let short: String = sid.chars().take(8).collect();
        bar.set_message(format!(
            "{doing} · session {short}… · Ctrl-C: cancel or detach"
        ));
    }

    /// A passing problem: on the live line, or one line on stderr.
    fn note(&self, what: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(what.to_owned()),
            None => eprintln!("aip: {what}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
