//! `aip device`: the device agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aip_agent::device::{Device, DeviceConfig};
use aip_agent::policy::{CommandPolicy, ToolPolicy};
use aip_agent::tools::builtin::{add_builtins, BuiltinOptions};
use aip_agent::tools::{mcp, ToolSet};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::common::{duration, positive_duration, shutdown_signal, LlmArgs, LogArgs};
use crate::exit::Usage;

#[derive(Clone, Copy, ValueEnum)]
enum PlatformArg {
    Auto,
    Linux,
    Windows,
    Macos,
}

/// Options of `aip device`; each can also be set as an `AIP_*` environment variable.
#[derive(Args)]
pub struct DeviceArgs {
    /// TOML file of options (keys: these long options in snake_case); flags and AIP_*
    /// variables win over it.
    #[arg(long, env = "AIP_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Print the effective settings (as a config file, with where each came from) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    llm: LlmArgs,
    /// WebSocket URL of the server: ws://… or wss://… (TLS). Repeatable (or
    /// comma-separated): the nodes of a cluster, tried in turn after a lost connection.
    #[arg(
        long,
        env = "AIP_SERVER",
        default_value = "ws://127.0.0.1:5000/ws",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// For wss://: trust only the CA certificates in this PEM file instead of the system roots.
    #[arg(long, env = "AIP_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Identity of this device (default: the host name).
    #[arg(long, env = "AIP_CLIENT_ID")]
    client_id: Option<String>,
    /// API key of the server (sent as ?token=).
    #[arg(long, env = "AIP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Platform to register with.
    #[arg(long, env = "AIP_DEVICE_PLATFORM", value_enum, default_value = "auto")]
    platform: PlatformArg,
    /// A tag (key=value) sent in metadata.tags and system_info.custom_metadata; repeatable.
    #[arg(long = "tag", env = "AIP_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// TOML file listing MCP servers whose tools this device offers.
    #[arg(long, env = "AIP_TOOLS")]
    tools: Option<PathBuf>,
    /// Time between heartbeats.
    #[arg(long, env = "AIP_HEARTBEAT_INTERVAL", default_value = "20", value_parser = positive_duration)]
    heartbeat_interval: Duration,
    /// Only tools matching one of these patterns may run (`*`, `?` wildcards); repeatable.
    #[arg(long = "allow-tool", env = "AIP_ALLOW_TOOLS", value_delimiter = ',')]
    allow_tool: Vec<String>,
    /// Tools matching these patterns never run; repeatable. Wins over --allow-tool.
    #[arg(long = "deny-tool", env = "AIP_DENY_TOOLS", value_delimiter = ',')]
    deny_tool: Vec<String>,
    /// TOML file bounding what execute_command may run (allowed/denied commands, argument rules).
    #[arg(long, env = "AIP_COMMAND_POLICY")]
    command_policy: Option<PathBuf>,
    /// Disable execute_command entirely.
    #[arg(long, env = "AIP_NO_SHELL")]
    no_shell: bool,
    /// Largest timeout an execute_command call may ask for.
    #[arg(long, env = "AIP_MAX_COMMAND_TIMEOUT", default_value = "600", value_parser = positive_duration)]
    max_command_timeout: Duration,
    /// Bytes of stdout/stderr (and read_file content) kept per call.
    #[arg(long, env = "AIP_OUTPUT_CAP", default_value_t = 1024 * 1024)]
    output_cap: usize,
    /// On SIGINT/SIGTERM, how long running commands may finish before they are aborted.
    #[arg(long, env = "AIP_SHUTDOWN_GRACE", default_value = "10", value_parser = duration)]
    shutdown_grace: Duration,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not key=value")),
    }
}

/// Runs the device agent until SIGINT/SIGTERM.
pub async fn device(args: DeviceArgs) -> anyhow::Result<()> {
    if let Some(bad) = args
        .server
        .iter()
        .find(|s| !(s.starts_with("ws://") || s.starts_with("wss://")))
    {
        return Err(Usage(format!("--server '{bad}' is not a ws:// or wss:// URL")).into());
    }
    args.log.init();
    if let Some(file) = &args.config {
        tracing::info!(config = %file.display(), "options read from the config file (flags and AIP_* variables win)");
    }
    let platform = match args.platform {
        PlatformArg::Auto => aip_agent::system::host_platform(),
        PlatformArg::Linux => "linux",
        PlatformArg::Windows => "windows",
        PlatformArg::Macos => "macos",
    }
    .to_owned();
    let client_id = args
        .client_id
        .filter(|c| !c.is_empty())
        .unwrap_or_else(aip_agent::system::hostname);
    let tags: BTreeMap<String, String> = args.tags.into_iter().collect();
    let command_policy = match &args.command_policy {
        Some(p) => Some(CommandPolicy::load(p)?),
        None => None,
    };
    let policy = ToolPolicy::new(
        args.allow_tool,
        args.deny_tool,
        args.no_shell,
        command_policy,
    );
    let shell = policy.shell_enabled();
    let call_limit = args.max_command_timeout + Duration::from_secs(30);
    let mut tools = ToolSet::new(Arc::new(policy), call_limit);
    add_builtins(
        &mut tools,
        &BuiltinOptions {
            device_id: client_id.clone(),
            platform: platform.clone(),
            tags: tags.clone(),
            shell,
            max_command_timeout: args.max_command_timeout,
            output_cap: args.output_cap,
        },
    );
    if let Some(path) = &args.tools {
        let config = mcp::load(path)?;
        // Servers that start are offered; the others are reported and skipped.
        if let Err(e) = mcp::register(&mut tools, &config).await {
            tracing::error!(cause = %format!("{e:#}"), "some MCP servers are unavailable");
        }
    }
    let tls = if args.ca_cert.is_some() || args.server.iter().any(|s| s.starts_with("wss://")) {
        let config = aip_agent::tls::client_config(args.ca_cert.as_deref())
            .map_err(|e| Usage(e.to_string()))?;
        Some(config)
    } else {
        None
    };
    let mut servers = args.server.into_iter();
    let first = servers.next().unwrap_or_default();
    let mut config = DeviceConfig::new(first, client_id);
    config.fallback_servers = servers.collect();
    config.tls = tls;
    config.api_key = args.api_key.filter(|k| !k.is_empty());
    config.platform = platform;
    config.tags = tags;
    config.heartbeat_interval = args.heartbeat_interval;
    config.shutdown_grace = args.shutdown_grace;
    if let Some(llm) = args.llm.to_config()? {
        tracing::info!(model = %llm.model, base_url = %llm.base_url, "delegated tasks run with a local model");
        config.llm = Some(aip_llm::LlmClient::new(std::sync::Arc::new(llm))?);
    }
    let agent = Device::new(config, tools);
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    agent.run(stop).await;
    Ok(())
}
