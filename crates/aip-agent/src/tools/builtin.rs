//! Built-in tools: `execute_command`, `get_system_info`, `read_file`, `write_file`,
//! `list_dir`. Result keys follow the reference's Linux tools where it has them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aip_protocol::McpToolInfo;
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{opt_str_param, str_param, Tool, ToolOutcome};

/// Namespace of the built-in tools in results and advertisements.
pub const NAMESPACE: &str = "aip";

fn info(name: &str, description: &str, schema: Value) -> McpToolInfo {
    McpToolInfo {
        tool_key: aip_protocol::tool_key("action", name),
        tool_name: name.to_owned(),
        title: None,
        namespace: NAMESPACE.to_owned(),
        tool_type: "action".to_owned(),
        description: Some(description.to_owned()),
        input_schema: schema.as_object().cloned(),
        output_schema: None,
        meta: None,
        annotations: None,
    }
}

macro_rules! try_param {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return ToolOutcome::fail(e),
        }
    };
}

/// Runs a shell command (`sh -c` on Unix, PowerShell on Windows).
pub struct ExecuteCommand {
    /// Default timeout when the call gives none.
    pub default_timeout: Duration,
    /// Largest timeout a call may ask for; larger ones are clamped.
    pub max_timeout: Duration,
    /// Bytes of stdout and of stderr kept each; the rest is dropped and marked truncated.
    pub output_cap: usize,
}

impl Default for ExecuteCommand {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(600),
            output_cap: 1024 * 1024,
        }
    }
}

/// Reads a stream to its end, keeping the first `cap` bytes.
async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// Kills the whole process group of a child if it is still running when dropped
/// (timeout, or the session was ended while the command ran).
struct GroupKiller {
    pid: Option<u32>,
}

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            #[cfg(unix)]
            {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            #[cfg(not(unix))]
            {
                let _ = std::process::Command::new("taskkill")
                    .args(["/T", "/F", "/PID", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

#[async_trait]
impl Tool for ExecuteCommand {
    fn info(&self) -> McpToolInfo {
        let shell = if cfg!(windows) { "PowerShell" } else { "sh -c" };
        info(
            "execute_command",
            &format!("Run a shell command ({shell}) and return its exit code, stdout and stderr. A non-zero exit code is a failure; at the timeout the whole process group is killed."),
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line to run."},
                    "timeout": {"type": "number", "description": format!("Seconds before the command is killed (default {}, at most {}).", self.default_timeout.as_secs(), self.max_timeout.as_secs())},
                    "cwd": {"type": "string", "description": "Working directory."},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables."}
                },
                "required": ["command"]
            }),
        )
    }

    async fn call(&self, params: Map<String, Value>) -> ToolOutcome {
        let call = match self.read_call(&params) {
            Ok(call) => call,
            Err(error) => return ToolOutcome::fail(error),
        };
        let mut cmd = shell_command(&call);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return ToolOutcome::fail(format!("Failed to start the command: {e}")),
        };
        let mut killer = GroupKiller { pid: child.id() };
        let cap = self.output_cap;
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_capped(s, cap)));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_capped(s, cap)));

        let (status, timed_out) = match tokio::time::timeout(call.timeout, child.wait()).await {
            Ok(status) => (status.ok(), false),
            Err(_) => {
                killer.kill();
                (child.wait().await.ok(), true)
            }
        };
        killer.pid = None;
        let collect = |h: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>| async move {
            match h {
                // A grandchild that left the group may hold the pipe open: do not wait forever.
                Some(h) => match tokio::time::timeout(Duration::from_secs(2), h).await {
                    Ok(Ok(v)) => v,
                    _ => (Vec::new(), true),
                },
                None => (Vec::new(), false),
            }
        };
        let (out, out_trunc) = collect(stdout).await;
        let (err, err_trunc) = collect(stderr).await;
        let exit_code = status.and_then(|s| s.code());
        let success = !timed_out && exit_code == Some(0);
        let result = json!({
            "command": call.command,
            "success": success,
            "exit_code": exit_code,
            "stdout": String::from_utf8_lossy(&out),
            "stderr": String::from_utf8_lossy(&err),
            "duration_ms": started.elapsed().as_millis() as u64,
            "stdout_truncated": out_trunc,
            "stderr_truncated": err_trunc,
            "timed_out": timed_out,
        });
        command_outcome(result, success, timed_out, exit_code, call.timeout)
    }
}

/// The parameters of one `execute_command` call, checked.
struct ShellCall<'a> {
    command: &'a str,
    timeout: Duration,
    cwd: Option<&'a str>,
    env: BTreeMap<String, String>,
}

impl ExecuteCommand {
    /// Reads `command`, `timeout` (clamped to the maximum), `cwd` and `env`; `Err` is the
    /// failure text naming the bad parameter.
    fn read_call<'a>(&self, params: &'a Map<String, Value>) -> Result<ShellCall<'a>, String> {
        let command = str_param(params, "command")?;
        if command.trim().is_empty() {
            return Err("parameter 'command' is empty".into());
        }
        let timeout = match params.get("timeout") {
            None | Some(Value::Null) => self.default_timeout,
            Some(v) => match v.as_f64().filter(|t| t.is_finite() && *t > 0.0) {
                Some(t) => Duration::from_secs_f64(t).min(self.max_timeout),
                None => {
                    return Err("parameter 'timeout' must be a positive number of seconds".into())
                }
            },
        };
        let cwd = opt_str_param(params, "cwd")?;
        let mut env = BTreeMap::new();
        match params.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let Some(s) = v.as_str() else {
                        return Err(format!("parameter 'env.{k}' must be a string"));
                    };
                    env.insert(k.clone(), s.to_owned());
                }
            }
            Some(_) => return Err("parameter 'env' must be an object of strings".into()),
        }
        Ok(ShellCall {
            command,
            timeout,
            cwd,
            env,
        })
    }
}

/// The platform's shell running `call`, in its own process group, output piped.
fn shell_command(call: &ShellCall<'_>) -> tokio::process::Command {
    let mut cmd = if cfg!(windows) {
        let mut c = tokio::process::Command::new("powershell");
        c.args(["-NoProfile", "-NonInteractive", "-Command", call.command]);
        c
    } else {
        let mut c = tokio::process::Command::new("sh");
        c.args(["-c", call.command]);
        c
    };
    #[cfg(unix)]
    cmd.process_group(0);
    if let Some(dir) = call.cwd {
        cmd.current_dir(dir);
    }
    cmd.envs(&call.env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Success, or the failure naming the timeout, the exit code or the signal.
fn command_outcome(
    result: Value,
    success: bool,
    timed_out: bool,
    exit_code: Option<i32>,
    timeout: Duration,
) -> ToolOutcome {
    if success {
        return ToolOutcome::Success(result);
    }
    let error = if timed_out {
        format!(
            "Command timed out after {} s; its process group was killed",
            crate::fmt_secs(timeout)
        )
    } else {
        match exit_code {
            Some(code) => format!("Command exited with code {code}"),
            None => "Command was killed by a signal".to_owned(),
        }
    };
    ToolOutcome::Failure {
        error,
        result: Some(result),
    }
}

/// Returns a fresh `system_info`.
pub struct GetSystemInfo {
    pub device_id: String,
    pub platform: String,
    pub tags: BTreeMap<String, String>,
}

#[async_trait]
impl Tool for GetSystemInfo {
    fn info(&self) -> McpToolInfo {
        info(
            "get_system_info",
            "Return this machine's system information (OS, CPU count, memory, host name, IP address).",
            json!({"type": "object", "properties": {}}),
        )
    }

    async fn call(&self, _: Map<String, Value>) -> ToolOutcome {
        let (id, platform, tags) = (
            self.device_id.clone(),
            self.platform.clone(),
            self.tags.clone(),
        );
        match tokio::task::spawn_blocking(move || crate::system::system_info(&id, &platform, &tags))
            .await
        {
            Ok(v) => ToolOutcome::Success(v),
            Err(e) => ToolOutcome::fail(format!("Could not read system information: {e}")),
        }
    }
}

/// Reads a text file.
pub struct ReadFile {
    /// Default and largest `max_bytes`.
    pub max_bytes: usize,
}

#[async_trait]
impl Tool for ReadFile {
    fn info(&self) -> McpToolInfo {
        info(
            "read_file",
            "Read a file as UTF-8 text (invalid bytes replaced), up to max_bytes.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "max_bytes": {"type": "integer", "description": format!("Bytes to read at most (default and limit {}).", self.max_bytes)}
                },
                "required": ["path"]
            }),
        )
    }

    async fn call(&self, params: Map<String, Value>) -> ToolOutcome {
        let path = try_param!(str_param(&params, "path"));
        let limit = match params.get("max_bytes") {
            None | Some(Value::Null) => self.max_bytes,
            Some(v) => match v.as_u64() {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(self.max_bytes),
                None => {
                    return ToolOutcome::fail(
                        "parameter 'max_bytes' must be a non-negative integer",
                    )
                }
            },
        };
        let file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) => return ToolOutcome::fail(format!("Cannot open '{path}': {e}")),
        };
        let size = file.metadata().await.map(|m| m.len()).ok();
        let mut data = Vec::new();
        if let Err(e) = file.take(limit as u64).read_to_end(&mut data).await {
            return ToolOutcome::fail(format!("Cannot read '{path}': {e}"));
        }
        let truncated = size.is_some_and(|s| s > data.len() as u64);
        ToolOutcome::Success(json!({
            "path": path,
            "size": size,
            "content": String::from_utf8_lossy(&data),
            "truncated": truncated,
        }))
    }
}

/// Writes (or appends to) a text file.
pub struct WriteFile;

#[async_trait]
impl Tool for WriteFile {
    fn info(&self) -> McpToolInfo {
        info(
            "write_file",
            "Write text to a file, replacing it, or appending when append is true.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "append": {"type": "boolean", "default": false}
                },
                "required": ["path", "content"]
            }),
        )
    }

    async fn call(&self, params: Map<String, Value>) -> ToolOutcome {
        let path = try_param!(str_param(&params, "path"));
        let content = try_param!(str_param(&params, "content"));
        let append = match params.get("append") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return ToolOutcome::fail("parameter 'append' must be a boolean"),
        };
        let mut opts = tokio::fs::OpenOptions::new();
        opts.create(true);
        if append {
            opts.append(true);
        } else {
            opts.write(true).truncate(true);
        }
        let result = async {
            let mut f = opts.open(path).await?;
            f.write_all(content.as_bytes()).await?;
            f.flush().await
        }
        .await;
        match result {
            Ok(()) => ToolOutcome::Success(
                json!({"path": path, "bytes_written": content.len(), "appended": append}),
            ),
            Err(e) => ToolOutcome::fail(format!("Cannot write '{path}': {e}")),
        }
    }
}

/// Lists a directory.
pub struct ListDir {
    pub max_entries: usize,
}

#[async_trait]
impl Tool for ListDir {
    fn info(&self) -> McpToolInfo {
        info(
            "list_dir",
            "List a directory: name, type (file, dir, symlink, other) and size of each entry.",
            json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        )
    }

    async fn call(&self, params: Map<String, Value>) -> ToolOutcome {
        let path = try_param!(str_param(&params, "path"));
        let mut dir = match tokio::fs::read_dir(path).await {
            Ok(d) => d,
            Err(e) => return ToolOutcome::fail(format!("Cannot list '{path}': {e}")),
        };
        let mut entries = Vec::new();
        let mut truncated = false;
        loop {
            match dir.next_entry().await {
                Ok(Some(e)) => {
                    if entries.len() >= self.max_entries {
                        truncated = true;
                        break;
                    }
                    let meta = e.metadata().await.ok();
                    let kind = match e.file_type().await {
                        Ok(t) if t.is_symlink() => "symlink",
                        Ok(t) if t.is_dir() => "dir",
                        Ok(t) if t.is_file() => "file",
                        _ => "other",
                    };
                    entries.push(json!({
                        "name": e.file_name().to_string_lossy(),
                        "type": kind,
                        "size": meta.map(|m| m.len()),
                    }));
                }
                Ok(None) => break,
                Err(e) => return ToolOutcome::fail(format!("Cannot list '{path}': {e}")),
            }
        }
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        ToolOutcome::Success(json!({"path": path, "entries": entries, "truncated": truncated}))
    }
}

/// Options of the built-in tools.
#[derive(Debug, Clone)]
pub struct BuiltinOptions {
    pub device_id: String,
    pub platform: String,
    pub tags: BTreeMap<String, String>,
    /// Offer `execute_command` (off with `--no-shell`).
    pub shell: bool,
    pub max_command_timeout: Duration,
    pub output_cap: usize,
}

/// Adds every built-in tool to `set`.
pub fn add_builtins(set: &mut super::ToolSet, o: &BuiltinOptions) {
    use std::sync::Arc;
    if o.shell {
        set.add(Arc::new(ExecuteCommand {
            default_timeout: Duration::from_secs(30).min(o.max_command_timeout),
            max_timeout: o.max_command_timeout,
            output_cap: o.output_cap,
        }));
    }
    set.add(Arc::new(GetSystemInfo {
        device_id: o.device_id.clone(),
        platform: o.platform.clone(),
        tags: o.tags.clone(),
    }));
    set.add(Arc::new(ReadFile {
        max_bytes: o.output_cap,
    }));
    set.add(Arc::new(WriteFile));
    set.add(Arc::new(ListDir {
        max_entries: 10_000,
    }));
}
