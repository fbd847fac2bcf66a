//! `aip completions` and `aip man`: shell completions and manual pages, generated from
//! the same clap definition the binary parses with, so they cannot drift from it.

use std::path::PathBuf;

use clap::{Args, Command};
use clap_complete::Shell;

/// `aip completions SHELL`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// `aip man`.
#[derive(Args)]
pub struct ManArgs {
    /// Write one page per command (aip.1, aip-serve.1, …) into this directory instead of
    /// printing aip(1).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell`.
pub fn completions(args: &CompletionsArgs, mut cmd: Command) {
    clap_complete::generate(args.shell, &mut cmd, "aip", &mut std::io::stdout());
}

/// Prints aip(1), or writes every page into `--dir`.
pub fn man(args: &ManArgs, cmd: Command) -> anyhow::Result<()> {
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                anyhow::anyhow!("cannot write the pages into {}: {e}", dir.display())
            })?;
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(())
}
