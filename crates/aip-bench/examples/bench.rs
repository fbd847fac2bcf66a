//! `aip bench` until the CLI exposes it: the same arguments, through `aip_bench::run`.
//!
//! ```text
//! cargo run --release -p aip-bench --example bench -- heartbeat --clients 50 --seconds 10
//! ```

use clap::Parser;

#[derive(Parser)]
#[command(name = "bench", about = "Load generator for the aip server")]
struct Cli {
    #[command(flatten)]
    bench: aip_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aip_bench::run(Cli::parse().bench).await
}
