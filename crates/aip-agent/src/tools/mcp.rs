//! The MCP bridge: the tools of local MCP servers, offered as device tools.
//!
//! A TOML file (given to `aip device --tools FILE`) names the servers:
//!
//! ```toml
//! [servers.fs]                       # stdio server, spawned by the agent
//! command = "npx"
//! args = ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]
//! env = { DEBUG = "1" }
//!
//! [servers.search]                   # streamable HTTP server
//! url = "http://127.0.0.1:8080/mcp"
//! headers = { Authorization = "Bearer x" }
//! ```
//!
//! Each server's tools become `server.tool` (and `tool` when unambiguous). A stdio server
//! whose process dies is respawned once on the next call that notices, and that call is
//! retried once. Child processes are killed when the bridge drops them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::McpToolInfo;
use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceError, ServiceExt as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::{Tool, ToolOutcome, ToolSet};

/// How long a server may take to start and answer `initialize` + `tools/list`, unless its
/// config says otherwise (`npx -y …` may have to download the package first).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The MCP tools file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Servers by name; the name qualifies their tools (`name.tool`).
    #[serde(default)]
    pub servers: BTreeMap<String, McpServerConfig>,
}

/// One MCP server: exactly one of `command` (stdio) or `url` (streamable HTTP).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Program to spawn; the server speaks MCP on its stdin/stdout.
    #[serde(default)]
    pub command: Option<String>,
    /// Arguments for `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables for `command` (on top of the agent's own).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory for `command` (default: the agent's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Streamable HTTP endpoint, e.g. `http://127.0.0.1:8080/mcp`.
    #[serde(default)]
    pub url: Option<String>,
    /// HTTP headers sent with every request to `url` (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds allowed for start-up and tool listing (default 60).
    #[serde(default)]
    pub startup_timeout_secs: Option<u64>,
}

impl McpConfig {
    /// Parses and checks the TOML text of a tools file.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        for (name, server) in &config.servers {
            check_server_name(name)?;
            server
                .check()
                .with_context(|| format!("MCP server '{name}'"))?;
        }
        Ok(config)
    }
}

/// Reads the MCP tools file at `path`.
pub fn load(path: &Path) -> anyhow::Result<McpConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read MCP tools file {}", path.display()))?;
    McpConfig::parse(&text).with_context(|| format!("invalid MCP tools file {}", path.display()))
}

fn check_server_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains('.') || name.chars().any(char::is_whitespace) {
        bail!("invalid MCP server name '{name}': it must be non-empty, without dots or spaces");
    }
    Ok(())
}

impl McpServerConfig {
    /// Checks that the fields describe exactly one kind of server.
    pub fn check(&self) -> anyhow::Result<()> {
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => {
                bail!("set either `command` (stdio server) or `url` (HTTP server), not both")
            }
            (None, None) => {
                bail!("set `command` (stdio server) or `url` (HTTP server)")
            }
            (Some(command), None) => {
                if command.trim().is_empty() {
                    bail!("`command` is empty");
                }
                if !self.headers.is_empty() {
                    bail!("`headers` only apply to `url` servers");
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("`url` must start with http:// or https://, got '{url}'");
                }
                if !self.args.is_empty() || !self.env.is_empty() || self.cwd.is_some() {
                    bail!("`args`, `env` and `cwd` only apply to `command` servers");
                }
                header_map(&self.headers)?;
            }
        }
        Ok(())
    }

    fn startup_timeout(&self) -> Duration {
        self.startup_timeout_secs
            .map_or(DEFAULT_STARTUP_TIMEOUT, Duration::from_secs)
    }
}

fn header_map(
    headers: &BTreeMap<String, String>,
) -> anyhow::Result<HashMap<http::HeaderName, http::HeaderValue>> {
    headers
        .iter()
        .map(|(k, v)| {
            let name = http::HeaderName::try_from(k.as_str())
                .map_err(|e| anyhow!("invalid header name '{k}': {e}"))?;
            let value = http::HeaderValue::try_from(v.as_str())
                .map_err(|e| anyhow!("invalid value for header '{k}': {e}"))?;
            Ok((name, value))
        })
        .collect()
}

/// The tools one connected server offers.
pub struct McpServerTools {
    /// The server's name from the config.
    pub server: String,
    /// `(MCP tool name, tool)`; each tool's `info().tool_key` is `mcp.<server>.<tool>`.
    pub tools: Vec<(String, Arc<dyn Tool>)>,
}

/// Connects to one server and lists its tools. Errors name the server.
pub async fn connect(name: &str, config: &McpServerConfig) -> anyhow::Result<McpServerTools> {
    let result = async {
        check_server_name(name)?;
        config.check()?;
        let server = Arc::new(Server {
            name: name.to_owned(),
            config: config.clone(),
            conn: tokio::sync::Mutex::new(Conn {
                generation: 0,
                client: None,
            }),
        });
        let client = Arc::new(server.start().await?);
        let listed = tokio::time::timeout(config.startup_timeout(), client.list_all_tools())
            .await
            .map_err(|_| anyhow!("tools/list timed out"))?
            .context("tools/list failed")?;
        server.conn.lock().await.client = Some(client);
        let tools = listed
            .iter()
            .map(|t| {
                let tool: Arc<dyn Tool> = Arc::new(McpTool {
                    server: server.clone(),
                    name: t.name.to_string(),
                    info: tool_info(name, t),
                });
                (t.name.to_string(), tool)
            })
            .collect();
        anyhow::Ok(McpServerTools {
            server: name.to_owned(),
            tools,
        })
    }
    .await;
    result.with_context(|| format!("MCP server '{name}'"))
}

/// Connects to every server of `config` at once; one result per server, in name order.
pub async fn connect_all(config: &McpConfig) -> Vec<anyhow::Result<McpServerTools>> {
    futures_util::future::join_all(
        config
            .servers
            .iter()
            .map(|(name, server)| connect(name, server)),
    )
    .await
}

/// Connects to every server and adds its tools to `set` as `server.tool` (with `tool` as
/// alias when unambiguous). Servers that fail are skipped: the others are still added,
/// and the error then names each server that failed and why.
pub async fn register(set: &mut ToolSet, config: &McpConfig) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for result in connect_all(config).await {
        match result {
            Ok(server) => {
                tracing::info!(
                    server = %server.server,
                    tools = server.tools.len(),
                    "MCP server connected"
                );
                for (name, tool) in server.tools {
                    set.add_qualified(format!("{}.{name}", server.server), name, tool);
                }
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

fn to_map<T: Serialize>(value: &T) -> Option<Map<String, Value>> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn tool_info(server: &str, tool: &rmcp::model::Tool) -> McpToolInfo {
    McpToolInfo {
        tool_key: aip_protocol::tool_key("action", &format!("{server}.{}", tool.name)),
        tool_name: tool.name.to_string(),
        title: tool
            .title
            .clone()
            .or_else(|| tool.annotations.as_ref().and_then(|a| a.title.clone())),
        namespace: server.to_owned(),
        tool_type: "action".to_owned(),
        description: tool.description.as_ref().map(|d| d.to_string()),
        input_schema: Some(tool.input_schema.as_ref().clone()),
        output_schema: tool.output_schema.as_ref().map(|s| s.as_ref().clone()),
        meta: tool.meta.as_ref().and_then(to_map),
        annotations: tool.annotations.as_ref().and_then(to_map),
    }
}

type Client = RunningService<RoleClient, ClientConfig>;

/// One configured server and its current connection.
struct Server {
    name: String,
    config: McpServerConfig,
    /// Only (re)connection takes this for long; calls clone the client out and release it.
    conn: tokio::sync::Mutex<Conn>,
}

struct Conn {
    /// Bumped on every new connection, so that concurrent failures restart only once.
    generation: u64,
    client: Option<Arc<Client>>,
}

impl Server {
    /// Spawns / connects and runs the MCP handshake, within the start-up timeout.
    async fn start(&self) -> anyhow::Result<Client> {
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("aip-agent", env!("CARGO_PKG_VERSION")),
        );
        let limit = self.config.startup_timeout();
        let started = if let Some(program) = &self.config.command {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(&self.config.args)
                .envs(&self.config.env)
                .kill_on_drop(true);
            if let Some(cwd) = &self.config.cwd {
                cmd.current_dir(cwd);
            }
            let (transport, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot start `{program}`"))?;
            if let Some(stderr) = stderr {
                let server = self.name.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::info!(server = %server, "MCP server stderr: {line}");
                    }
                });
            }
            tokio::time::timeout(limit, info.serve(transport))
                .await
                .map_err(|_| anyhow!("no MCP handshake within {} s", limit.as_secs()))?
                .context("MCP handshake failed")?
        } else if let Some(url) = &self.config.url {
            let transport_config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(header_map(&self.config.headers)?);
            let transport = StreamableHttpClientTransport::from_config(transport_config);
            tokio::time::timeout(limit, info.serve(transport))
                .await
                .map_err(|_| anyhow!("no MCP handshake within {} s", limit.as_secs()))?
                .with_context(|| format!("MCP handshake with {url} failed"))?
        } else {
            bail!("neither `command` nor `url` is set");
        };
        Ok(started)
    }

    /// The current client, connecting first if there is none; `true` if it just connected.
    async fn client(&self) -> anyhow::Result<(u64, Arc<Client>, bool)> {
        let mut conn = self.conn.lock().await;
        if let Some(client) = &conn.client {
            if !client.is_closed() {
                return Ok((conn.generation, client.clone(), false));
            }
        }
        conn.client = None;
        let client = Arc::new(self.start().await?);
        conn.generation += 1;
        conn.client = Some(client.clone());
        Ok((conn.generation, client, true))
    }

    /// Replaces the connection of `generation`, unless another call already did.
    async fn restart(&self, generation: u64) -> anyhow::Result<Arc<Client>> {
        let mut conn = self.conn.lock().await;
        if conn.generation != generation {
            if let Some(client) = &conn.client {
                return Ok(client.clone());
            }
        }
        // Dropping the old client closes its transport and kills its process.
        conn.client = None;
        tracing::warn!(server = %self.name, "MCP server connection lost; restarting it");
        let client = Arc::new(self.start().await?);
        conn.generation += 1;
        conn.client = Some(client.clone());
        Ok(client)
    }
}

/// One tool of one MCP server.
struct McpTool {
    server: Arc<Server>,
    name: String,
    info: McpToolInfo,
}

/// Whether an error means the connection itself is gone (worth a restart).
fn is_disconnect(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::TransportClosed | ServiceError::TransportSend(_)
    )
}

impl McpTool {
    async fn call_on(
        &self,
        client: &Client,
        params: &Map<String, Value>,
    ) -> Result<CallToolResult, ServiceError> {
        client
            .call_tool(CallToolRequestParams::new(self.name.clone()).with_arguments(params.clone()))
            .await
    }
}

#[async_trait]
impl Tool for McpTool {
    fn info(&self) -> McpToolInfo {
        self.info.clone()
    }

    async fn call(&self, params: Map<String, Value>) -> ToolOutcome {
        let (server, tool) = (&self.server.name, &self.name);
        let (generation, client, fresh) = match self.server.client().await {
            Ok(c) => c,
            Err(e) => {
                return ToolOutcome::fail(format!(
                    "MCP server '{server}' is not available for '{tool}': {e:#}"
                ))
            }
        };
        let first = self.call_on(&client, &params).await;
        drop(client);
        let error = match first {
            Ok(result) => return outcome(result),
            Err(e) if is_disconnect(&e) && !fresh => e,
            Err(e) => {
                return ToolOutcome::fail(format!(
                    "MCP server '{server}': call to '{tool}' failed: {e}"
                ))
            }
        };
        tracing::warn!(server = %server, tool = %tool, error = %error, "MCP call lost its server");
        let client = match self.server.restart(generation).await {
            Ok(client) => client,
            Err(e) => {
                return ToolOutcome::fail(format!(
                    "MCP server '{server}' stopped during the call to '{tool}' ({error}) \
                     and could not be restarted: {e:#}"
                ))
            }
        };
        match self.call_on(&client, &params).await {
            Ok(result) => outcome(result),
            Err(e) => ToolOutcome::fail(format!(
                "MCP server '{server}' stopped during the call to '{tool}' ({error}); \
                 it was restarted but the retried call failed too: {e}"
            )),
        }
    }
}

/// Maps an MCP `tools/call` result to a tool outcome.
fn outcome(result: CallToolResult) -> ToolOutcome {
    let json = result_json(&result);
    if result.is_error == Some(true) {
        let text = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        let error = if text.trim().is_empty() {
            "MCP tool reported an error".to_owned()
        } else {
            text
        };
        ToolOutcome::Failure {
            error,
            result: Some(json),
        }
    } else {
        ToolOutcome::Success(json)
    }
}

/// The text items joined with newlines, or `None` if some item is not text.
fn texts(result: &CallToolResult) -> Option<String> {
    let parts: Option<Vec<&str>> = result
        .content
        .iter()
        .map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    parts.map(|p| p.join("\n"))
}

/// Structured content if any; else all-text content as one string; else the content list.
fn result_json(result: &CallToolResult) -> Value {
    if let Some(structured) = &result.structured_content {
        return structured.clone();
    }
    if let Some(text) = texts(result) {
        return Value::String(text);
    }
    serde_json::to_value(&result.content).unwrap_or(Value::Null)
}
