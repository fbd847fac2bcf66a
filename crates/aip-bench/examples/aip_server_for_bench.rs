//! The real aip server with limits suited to `aip bench` (thousands of connections, many
//! sessions left unaccepted by the `dispatch` scenario), for when `aip serve` is not at hand.
//!
//! ```text
//! cargo run --release -p aip-bench --example aip_server_for_bench -- --port 5000
//! ```

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "aip server for benchmarks")]
struct Args {
    /// Port to listen on.
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Accept backlog (128 is what `TcpListener::bind`, hence `aip serve`, uses).
    #[arg(long, default_value_t = 128)]
    backlog: u32,
    /// TCP_NODELAY on the listening socket (inherited by accepted sockets on Linux); the
    /// server itself does not set it.
    #[arg(long)]
    nodelay: bool,
    /// Data directory (SQLite store); default: a fresh temporary directory.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Seconds a device has to accept a dispatched task.
    #[arg(long, default_value_t = 600)]
    accept_timeout: u64,
    /// WebSocket connection limit.
    #[arg(long, default_value_t = 19_000)]
    max_connections: usize,
    /// Active-session limit.
    #[arg(long, default_value_t = 1_000_000)]
    max_active_sessions: usize,
    /// API key (none: authentication off).
    #[arg(long)]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    aip_bench::raise_nofile_limit();
    let temp = tempfile::tempdir()?;
    let data_dir = args.data_dir.unwrap_or_else(|| temp.path().to_path_buf());
    let config = aip_server::ServerConfig {
        data_dir,
        api_key: args.api_key,
        accept_timeout: Duration::from_secs(args.accept_timeout),
        max_connections: args.max_connections,
        max_active_sessions: args.max_active_sessions,
        ..Default::default()
    };
    let listener = aip_bench::listen(&args.host, args.port, args.backlog, args.nodelay).await?;
    println!(
        "aip server listening on ws://{}/ws (pid {})",
        listener.local_addr()?,
        std::process::id()
    );
    aip_server::run(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
