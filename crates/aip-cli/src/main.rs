//! `aip`: the command line of the aip agent server and its device agent.
//!
//! `serve` and `device` run the two long-lived processes; `dispatch`, `result`,
//! `sessions`, `cancel`, `clients`, `health`, `run` and `job` are HTTP clients of a
//! server (`client/`); `bench`
//! is the load generator; `keys new` makes a credential for `serve --keys`; `completions` and `man` describe the command line itself.
//! How every command ends is one of the exit codes in `exit.rs`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod client;
mod common;
mod config_file;
mod device;
mod docs;
mod exit;
mod keys;
mod logfmt;
mod serve;

use exit::{Exit, Usage};

static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(aip_server::build::long_version);

#[derive(Parser)]
#[command(
    name = "aip",
    version,
    long_version = LONG_VERSION.as_str(),
    about = "aip: an AIP agent server and its tools",
    after_help = "Durations: a plain number is seconds (90, 0.5); or 90s, 15m, 12h, 7d.\n\
                  Exit codes: 0 completed, 1 failed or error, 2 usage, 3 cancelled or timed out, \
                  4 still running (aip result), 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent server: WebSocket hub on /ws, REST API on /api.
    Serve(serve::ServeArgs),
    /// Run a device agent: connect to a server and execute its commands on this machine.
    Device(device::DeviceArgs),
    /// Dispatch a task to a device over the HTTP API (--wait: follow it to its end).
    Dispatch(client::DispatchArgs),
    /// Print a session's outcome (by session id or task name), with the agent's transcript.
    Result(client::ResultArgs),
    /// List stored sessions, newest first (filters: --state, --device, --since).
    Sessions(client::SessionsArgs),
    /// Cancel a live session (by session id or task name).
    Cancel(client::CancelArgs),
    /// List the connected clients.
    Clients(client::ClientsArgs),
    /// Run one request on many devices (a fleet job): --select role=web --batch 10 -- uptime.
    Run(client::RunArgs),
    /// Show a fleet job (following it while it runs), or cancel it (--cancel).
    Job(client::JobArgs),
    /// Check that the server is up and healthy (exit 0), e.g. as a container health check.
    Health(client::HealthArgs),
    /// Make credentials for `aip serve --keys` (`aip keys new --role device --client-id ID`).
    Keys(keys::KeysArgs),
    /// Load-test any AIP server over the wire protocol (hold, heartbeat, dispatch, session, churn, job).
    Bench(aip_bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the manual page aip(1), or write every page with --dir.
    Man(docs::ManArgs),
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Before clap parses: the file's keys become the options' AIP_* variables.
    if let Err(e) = config_file::apply(&Cli::command(), &args) {
        eprintln!("aip: {e}");
        return Exit::Usage.into();
    }
    let matches = Cli::command().get_matches_from(&args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let print_config = match &cli.command {
        Command::Serve(a) => a.print_config.then_some("serve"),
        Command::Device(a) => a.print_config.then_some("device"),
        _ => None,
    };
    if let Some(name) = print_config {
        let command = Cli::command();
        if let (Some(sub), Some((_, sub_matches))) =
            (command.find_subcommand(name), matches.subcommand())
        {
            print!("{}", config_file::print(sub, sub_matches));
        }
        return Exit::Success.into();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aip: cannot start the runtime: {e}");
            return Exit::Failed.into();
        }
    };
    let result = runtime.block_on(async move {
        let done = |r: anyhow::Result<()>| r.map(|()| Exit::Success);
        match cli.command {
            Command::Serve(args) => done(serve::serve(args).await),
            Command::Device(args) => done(device::device(args).await),
            Command::Dispatch(args) => client::dispatch(args).await,
            Command::Result(args) => client::result(args).await,
            Command::Sessions(args) => client::sessions(args).await,
            Command::Cancel(args) => client::cancel(args).await,
            Command::Clients(args) => client::clients(args).await,
            Command::Health(args) => client::health(args).await,
            Command::Run(args) => client::run(args).await,
            Command::Job(args) => client::job(args).await,
            Command::Keys(args) => done(keys::keys(args)),
            Command::Bench(args) => done(aip_bench::run(args).await),
            Command::Completions(args) => {
                docs::completions(&args, Cli::command());
                Ok(Exit::Success)
            }
            Command::Man(args) => done(docs::man(&args, Cli::command())),
        }
    });
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("aip: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                Exit::Usage.into()
            } else {
                Exit::Failed.into()
            }
        }
    }
}
