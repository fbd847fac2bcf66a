//! `aip`: the command line of the aip agent server and its device agent.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

mod client;
mod common;
mod device;
mod logfmt;
mod serve;

static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(aip_server::build::long_version);

#[derive(Parser)]
#[command(
    name = "aip",
    version,
    long_version = LONG_VERSION.as_str(),
    about = "aip: an AIP agent server and its tools"
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
    /// Dispatch a task to a device over the HTTP API.
    Dispatch(client::DispatchArgs),
    /// Print a session's result (by session id or task name), with the agent's transcript.
    Result(client::ResultArgs),
    /// List the connected clients.
    Clients(client::ClientsArgs),
    /// Load-test any AIP server over the wire protocol (hold, heartbeat, dispatch, session, churn).
    Bench(aip_bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aip: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Device(args) => device::device(args).await,
            Command::Dispatch(args) => client::dispatch(args).await,
            Command::Result(args) => client::result(args).await,
            Command::Clients(args) => client::clients(args).await,
            Command::Bench(args) => aip_bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aip: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
