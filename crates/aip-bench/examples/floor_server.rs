//! The raw floor for `aip bench` (see `aip_bench::floor`): a minimal tokio-tungstenite
//! server answering `register` and `heartbeat` with a fixed `heartbeat`/`ok` frame, and on
//! the same port a bare hyper `POST /api/dispatch` / `GET /api/task_result/{id}` with the
//! frames of a one-command session (no storage, no checks).
//!
//! ```text
//! cargo run --release -p aip-bench --example floor_server -- --port 5099
//! ```

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Raw floor for aip bench: register/heartbeat, dispatch and one-command sessions, nothing else"
)]
struct Args {
    /// Port to listen on.
    #[arg(long, default_value_t = 5099)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Accept backlog (128 is what `TcpListener::bind`, hence `aip serve`, uses).
    #[arg(long, default_value_t = 128)]
    backlog: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    aip_bench::raise_nofile_limit();
    let listener = aip_bench::listen(&args.host, args.port, args.backlog, true).await?;
    let addr = listener.local_addr()?;
    println!(
        "floor listening on ws://{addr}/ws and http://{addr}/api/ (pid {})",
        std::process::id()
    );
    aip_bench::floor::serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
