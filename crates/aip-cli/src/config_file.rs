//! `aip serve --config FILE` and `aip device --config FILE` (or `AIP_CONFIG`): a TOML file
//! whose keys are the command's long options in snake_case (`data_dir = "/var/lib/aip"`,
//! `max_connections = 20000`, `tag = ["rack=4", "role=web"]`).
//!
//! Precedence is flag > environment > file > default, and every option already has its
//! `AIP_*` variable: before clap parses, each key of the file is put into its option's
//! variable unless that variable is set. So the file goes through exactly the parsing and
//! validation of the flag, and clap keeps the defaults in one place. An unknown key, or a
//! value that is not a string, number, boolean or list of them, is an error naming the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Command;

/// Subcommands that take `--config`.
const WITH_CONFIG: &[&str] = &["serve", "device"];

/// Applies the `--config` file named on the command line (or in `AIP_CONFIG`) of `args`
/// to the environment. `Ok(None)`: no file for this command.
pub fn apply(cli: &Command, args: &[OsString]) -> Result<Option<PathBuf>, String> {
    let Some(sub) = args.get(1).and_then(|a| a.to_str()) else {
        return Ok(None);
    };
    if !WITH_CONFIG.contains(&sub) {
        return Ok(None);
    }
    let Some(path) = config_path(&args[2..]) else {
        return Ok(None);
    };
    let command = cli
        .find_subcommand(sub)
        .ok_or_else(|| format!("no subcommand {sub}"))?;
    for (env, value) in settings(command, &path)? {
        if std::env::var_os(&env).is_none() {
            // Before any thread exists: main calls this first.
            std::env::set_var(env, value);
        }
    }
    Ok(Some(path))
}

/// `--config X`, `--config=X`, else `AIP_CONFIG`.
fn config_path(rest: &[OsString]) -> Option<PathBuf> {
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("AIP_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `(environment variable, value)` for every key of the file at `path`.
pub fn settings(command: &Command, path: &Path) -> Result<Vec<(String, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                format!(
                    "--config {}: unknown key '{key}' (keys are the long options of `aip {}` in snake_case)",
                    path.display(),
                    command.get_name()
                )
            })?;
        let env = arg.get_env().and_then(|e| e.to_str()).ok_or_else(|| {
            format!(
                "--config {}: '{key}' cannot be set in a file",
                path.display()
            )
        })?;
        let text = scalar_or_list(&value).ok_or_else(|| {
            format!(
                "--config {}: '{key}' must be a string, number, boolean or a list of them",
                path.display()
            )
        })?;
        out.push((env.to_owned(), text));
    }
    Ok(out)
}

fn scalar_or_list(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        other => scalar(other),
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The effective settings of a parsed subcommand as a config file (`--print-config`):
/// every option with its value and where it came from; secrets are not printed.
pub fn print(command: &Command, matches: &clap::ArgMatches) -> String {
    let mut out = String::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "config" | "print-config" | "help" | "version") {
            continue;
        }
        let key = long.replace('-', "_");
        let source = matches.value_source(id);
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let from = match source {
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) => "environment or file",
            Some(clap::parser::ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let secret = arg.is_hide_env_values_set();
        let rendered = if values.is_empty() {
            if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
                "false".to_owned()
            } else {
                out.push_str(&format!("# {key} =   (unset)\n"));
                continue;
            }
        } else if secret {
            "\"<hidden>\"".to_owned()
        } else if values.len() > 1 || matches!(arg.get_action(), clap::ArgAction::Append) {
            format!(
                "[{}]",
                values
                    .iter()
                    .map(|v| toml_value(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            toml_value(&values[0])
        };
        out.push_str(&format!("{key} = {rendered}   # {from}\n"));
    }
    out
}

fn toml_value(v: &str) -> String {
    if v == "true"
        || v == "false"
        || v.parse::<i64>().is_ok()
        || v.parse::<f64>().is_ok_and(f64::is_finite)
    {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}
