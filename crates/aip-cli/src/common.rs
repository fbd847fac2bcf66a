//! What the subcommands share: logging options, duration parsing, signals.

use std::time::Duration;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--log-level` and `--log-format`.
#[derive(Args)]
pub struct LogArgs {
    /// DEBUG, INFO, WARNING, ERROR, CRITICAL or OFF (case-insensitive).
    #[arg(long, env = "AIP_LOG_LEVEL", default_value = "INFO", value_parser = parse_level)]
    pub log_level: String,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, env = "AIP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber (stderr).
    pub fn init(&self) {
        let level = self.log_level.as_str();
        let filter = if level == "off" {
            EnvFilter::new("off")
        } else {
            EnvFilter::new(format!(
                "warn,aip_server={level},aip_agent={level},aip_cli={level},aip_protocol={level},aip={level}"
            ))
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .init(),
        }
    }
}

/// Maps the seed's level names to tracing's.
pub fn parse_level(s: &str) -> Result<String, String> {
    let level = match s.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" => "error",
        "OFF" => "off",
        _ => return Err("expected DEBUG, INFO, WARNING, ERROR, CRITICAL or OFF".into()),
    };
    Ok(level.into())
}

/// A non-negative number of seconds (fractions allowed).
pub fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err("must be a non-negative number of seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

/// A positive number of seconds.
pub fn positive_secs(s: &str) -> Result<Duration, String> {
    let d = secs(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
