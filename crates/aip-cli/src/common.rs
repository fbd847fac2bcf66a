//! What the subcommands share: logging options, the duration syntax, signals, model options.

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
    /// Installs the global subscriber (stderr). A non-empty `RUST_LOG` (tracing's filter
    /// syntax, e.g. `info,aip_server::session=debug`) replaces `--log-level`. The access log
    /// (one line per HTTP request, target `aip_access`) is on at INFO in JSON mode and
    /// at DEBUG in text mode.
    pub fn init(&self) {
        let level = self.log_level.as_str();
        let access = match (self.log_format, level) {
            (LogFormat::Json, _) | (_, "debug") => level,
            _ => "off",
        };
        let filter = match std::env::var("RUST_LOG") {
            Ok(custom) if !custom.trim().is_empty() => match EnvFilter::try_new(&custom) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("aip: RUST_LOG={custom:?} is not a valid filter: {e}");
                    std::process::exit(2);
                }
            },
            _ if level == "off" => EnvFilter::new("off"),
            _ => EnvFilter::new(format!(
                "warn,aip_server={level},aip_agent={level},aip_cli={level},aip_protocol={level},aip={level},aip_access={access}"
            )),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.event_format(crate::logfmt::JsonLines).init(),
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

/// The one duration syntax of every option: a plain number is seconds (fractions allowed:
/// `90`, `0.5`), anything else a number with a unit (`90s`, `15m`, `12h`, `7d`, `1h 30m`,
/// `500ms`). Never negative.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        if !v.is_finite() || v < 0.0 {
            return Err(format!(
                "'{s}' is negative or not finite: a duration is 0 or more"
            ));
        }
        return Duration::try_from_secs_f64(v).map_err(|_| format!("'{s}' is too large"));
    }
    humantime::parse_duration(t).map_err(|_| {
        format!("'{s}' is not a duration: give seconds (90, 0.5) or a number with a unit (90s, 15m, 12h, 7d)")
    })
}

/// A duration greater than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A duration option (any [`duration`] syntax) whose default, taken from a config type,
/// `--help` shows in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Secs(pub Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&aip_protocol::time::fmt_secs(self.0))
    }
}

/// [`duration`] as a [`Secs`] option.
pub fn secs_arg(s: &str) -> Result<Secs, String> {
    duration(s).map(Secs)
}

/// [`positive_duration`] as a [`Secs`] option.
pub fn positive_secs_arg(s: &str) -> Result<Secs, String> {
    positive_duration(s).map(Secs)
}

/// A duration option (any [`duration`] syntax) whose default `--help` shows in its largest
/// whole unit (`7d`).
#[derive(Clone, Copy, Debug)]
pub struct Span(pub Duration);

impl std::fmt::Display for Span {
    /// In the largest whole unit: `7d`, `12h`, `90m`, else seconds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        if self.0.subsec_nanos() != 0 || secs == 0 {
            return f
                .write_str(&aip_protocol::time::fmt_secs(self.0))
                .and(f.write_str("s"));
        }
        match [(86_400, "d"), (3_600, "h"), (60, "m")]
            .into_iter()
            .find(|(unit, _)| secs.is_multiple_of(*unit))
        {
            Some((unit, suffix)) => write!(f, "{}{suffix}", secs / unit),
            None => write!(f, "{secs}s"),
        }
    }
}

/// [`duration`] as a [`Span`] option.
pub fn span_arg(s: &str) -> Result<Span, String> {
    duration(s).map(Span)
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

/// `--llm-*`: the model that plans natural-language tasks (server) or runs delegated ones
/// (device). All unset: no model.
#[derive(Args, Clone)]
pub struct LlmArgs {
    /// OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://localhost:11434/v1.
    #[arg(long, env = "AIP_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// Model name (the deployment name for Azure OpenAI).
    #[arg(long, env = "AIP_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Name of the environment variable holding the API key (the key itself is never logged).
    #[arg(long, env = "AIP_LLM_API_KEY_ENV")]
    pub llm_api_key_env: Option<String>,
    /// Most model calls per task.
    #[arg(long, env = "AIP_LLM_MAX_STEPS")]
    pub llm_max_steps: Option<u32>,
    /// Sampling temperature.
    #[arg(long, env = "AIP_LLM_TEMPERATURE")]
    pub llm_temperature: Option<f32>,
    /// Time allowed per model call.
    #[arg(long, env = "AIP_LLM_TIMEOUT", value_parser = positive_duration)]
    pub llm_timeout: Option<Duration>,
    /// Azure OpenAI api-version (turns on Azure style: api-key header, deployment URL).
    #[arg(long, env = "AIP_LLM_AZURE_API_VERSION")]
    pub llm_azure_api_version: Option<String>,
    /// TOML file with the same settings (base_url, model, api_key_env, max_steps,
    /// temperature, timeout, azure_api_version); flags override it.
    #[arg(long, env = "AIP_LLM_CONFIG")]
    pub llm_config: Option<std::path::PathBuf>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LlmFile {
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    max_steps: Option<u32>,
    temperature: Option<f32>,
    timeout: Option<FileDuration>,
    azure_api_version: Option<String>,
}

/// A time in a TOML file: a number of seconds, or a string in the one duration syntax.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum FileDuration {
    Secs(f64),
    Text(String),
}

impl FileDuration {
    fn parse(&self) -> Result<Duration, String> {
        match self {
            FileDuration::Secs(v) => duration(&v.to_string()),
            FileDuration::Text(s) => duration(s),
        }
    }
}

impl LlmArgs {
    /// The model configuration, or `None` when no model is configured.
    pub fn to_config(&self) -> anyhow::Result<Option<aip_llm::LlmConfig>> {
        let file: LlmFile = match &self.llm_config {
            None => LlmFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("invalid model config {}: {e}", path.display()))?
            }
        };
        let base_url = self.llm_base_url.clone().or(file.base_url);
        let model = self.llm_model.clone().or(file.model);
        let (base_url, model) = match (base_url, model) {
            (None, None) => return Ok(None),
            (Some(b), Some(m)) => (b, m),
            _ => anyhow::bail!("--llm-base-url and --llm-model must be given together"),
        };
        let mut config = aip_llm::LlmConfig::new(base_url, model);
        if let Some(var) = self.llm_api_key_env.clone().or(file.api_key_env) {
            let key = std::env::var(&var)
                .map_err(|_| anyhow::anyhow!("--llm-api-key-env names {var}, which is not set"))?;
            config.api_key = Some(key);
        }
        if let Some(n) = self.llm_max_steps.or(file.max_steps) {
            anyhow::ensure!(n > 0, "--llm-max-steps must be at least 1");
            config.max_steps = n;
        }
        config.temperature = self.llm_temperature.or(file.temperature);
        if let Some(t) = self.llm_timeout {
            config.call_timeout = t;
        } else if let Some(t) = &file.timeout {
            let t = t.parse().map_err(|e| {
                let path = self
                    .llm_config
                    .as_deref()
                    .unwrap_or(std::path::Path::new("?"));
                anyhow::anyhow!("invalid timeout in {}: {e}", path.display())
            })?;
            if !t.is_zero() {
                config.call_timeout = t;
            }
        }
        config.azure_api_version = self
            .llm_azure_api_version
            .clone()
            .or(file.azure_api_version);
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_syntax_for_every_option() {
        let ok = [
            ("90", 90_000),
            ("0.5", 500),
            ("0", 0),
            ("90s", 90_000),
            ("15m", 900_000),
            ("12h", 43_200_000),
            ("7d", 604_800_000),
            ("1h 30m", 5_400_000),
            ("500ms", 500),
            (" 3 ", 3_000),
        ];
        for (text, ms) in ok {
            assert_eq!(duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "-1", "abc", "5 parsecs", "NaN", "inf", "1e400"] {
            let err = duration(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}");
        }
        assert_eq!(
            positive_duration("0s"),
            Err("must be greater than zero".into())
        );
        assert_eq!(positive_duration("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn a_model_config_file_takes_the_same_durations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |timeout: &str| {
            let path = dir.path().join("llm.toml");
            let text = format!(
                "base_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\ntimeout = {timeout}\n"
            );
            std::fs::write(&path, text).expect("write");
            let args = LlmArgs {
                llm_base_url: None,
                llm_model: None,
                llm_api_key_env: None,
                llm_max_steps: None,
                llm_temperature: None,
                llm_timeout: None,
                llm_azure_api_version: None,
                llm_config: Some(path),
            };
            args.to_config().map(|c| c.map(|c| c.call_timeout))
        };
        assert_eq!(config("45").ok().flatten(), Some(Duration::from_secs(45)));
        assert_eq!(
            config("2.5").ok().flatten(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            config("\"2m\"").ok().flatten(),
            Some(Duration::from_secs(120))
        );
        let err = config("\"soon\"").expect_err("not a duration");
        assert!(err.to_string().contains("invalid timeout in"), "{err}");
    }
}
