//! Serves a scripted OpenAI-compatible endpoint for trying the agent loop without a model:
//! the first request gets a call to `execute_command` with the given command, the second
//! a `finish` with the given answer.
//!
//! cargo run -p aip-llm --features scripted --example scripted_endpoint -- "df -h / | tail -1" "See the df output."

use aip_llm::scripted::{call, finish, Mock};
use serde_json::json;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "uname -a".into());
    let answer = args.next().unwrap_or_else(|| "Done.".into());
    let mock = Mock::start(vec![
        call("call_1", "execute_command", json!({"command": command})),
        finish("completed", &answer),
    ])
    .await?;
    println!("scripted endpoint: http://{}/v1", mock.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
