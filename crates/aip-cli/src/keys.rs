//! `aip keys new`: a fresh random token and the key-file entry for it (`token_sha256`
//! only: the token itself is printed once and stored nowhere). The entry is checked by the
//! server's own key-file parser before it is printed.

use std::path::Path;

use aip_server::keys::{sha256, to_hex, KeySet};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};

use crate::exit::Usage;

/// Random bytes per token (43 URL-safe characters, 256 bits).
const TOKEN_BYTES: usize = 32;

#[derive(Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random token, then the [[key]] entry (with its SHA-256) for `aip serve --keys`.
    New(NewArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    /// The HTTP API, and WebSocket as a constellation addressing any device.
    Operator,
    /// WebSocket as a device, under one of its --client-id only.
    Device,
    /// WebSocket as a constellation, addressing its --target devices only (all if none).
    Constellation,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            RoleArg::Operator => "operator",
            RoleArg::Device => "device",
            RoleArg::Constellation => "constellation",
        }
    }
}

#[derive(Args)]
struct NewArgs {
    /// What the credential may do.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Device keys: a client id it may register as (globs: lab-*); repeatable.
    #[arg(long = "client-id")]
    client_ids: Vec<String>,
    /// Constellation keys: a device id (glob) it may address; repeatable; none: any.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// The entry's name, shown in the server's logs. Default: the first --client-id, else the role.
    #[arg(long)]
    name: Option<String>,
}

/// Runs `aip keys …`.
pub fn keys(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::New(a) => {
            let token = new_token()?;
            let entry = entry(&a, &token)?;
            println!("{token}");
            println!();
            println!("# Give the token above to the client (it is not stored anywhere); add this to the key file:");
            print!("{entry}");
            Ok(())
        }
    }
}

/// A fresh token: `aip_` and 32 random bytes from the OS, base64url without padding.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(format!(
        "aip_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The `[[key]]` entry of `token`, as the server would parse it.
fn entry(a: &NewArgs, token: &str) -> Result<String, Usage> {
    let name = a
        .name
        .clone()
        .or_else(|| a.client_ids.first().cloned())
        .unwrap_or_else(|| a.role.as_str().to_owned());
    let quoted = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let list = |vs: &[String]| vs.iter().map(|v| quoted(v)).collect::<Vec<_>>().join(", ");
    let mut text = format!(
        "[[key]]\nname = {}\nrole = {}\ntoken_sha256 = {}\n",
        quoted(&name),
        quoted(a.role.as_str()),
        quoted(&to_hex(&sha256(token)))
    );
    if !a.client_ids.is_empty() {
        text.push_str(&format!("client_ids = [{}]\n", list(&a.client_ids)));
    }
    if !a.targets.is_empty() {
        text.push_str(&format!("targets = [{}]\n", list(&a.targets)));
    }
    // One definition of a valid entry: the server's.
    KeySet::parse(None, Path::new("(new key)"), &text, false).map_err(|e| {
        Usage(format!("{:#}", e).replace("--keys (new key): [[key]] #1", "aip keys new"))
    })?;
    Ok(text)
}
