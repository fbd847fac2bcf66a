//! `aip`: the command line of the aip agent server and its device agent.

use clap::{Parser, Subcommand};

mod common;
mod device;
mod serve;

#[derive(Parser)]
#[command(
    name = "aip",
    version,
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
