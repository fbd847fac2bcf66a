//! A minimal AIP device for trying the server out: it registers, echoes every task
//! assignment like the reference device, and answers each `command` by reporting every
//! action as a success whose result echoes the tool name and parameters.
//!
//! cargo run -p aip-server --example demo_device -- ws://127.0.0.1:5000/ws demo-device

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:5000/ws".into());
    let id = args.next().unwrap_or_else(|| "demo-device".into());
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let register = json!({"type": "register", "status": "ok", "client_type": "device", "client_id": id,
        "metadata": {"platform": std::env::consts::OS, "system_info": {"hostname": id, "cpu_count": 1}}});
    ws.send(Message::Text(register.to_string().into())).await?;
    println!("connected to {url} as {id}");
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let msg: Value = serde_json::from_str(text.as_str())?;
        println!("<- {msg}");
        let reply = match msg["type"].as_str() {
            Some("task") => json!({"type": "task", "status": "continue", "client_type": "device",
                "client_id": id, "task_name": msg["task_name"], "request": msg["user_request"]}),
            Some("command") => {
                let results: Vec<Value> = msg["actions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| {
                        json!({"status": "success", "namespace": "demo", "call_id": a["call_id"],
                        "result": {"tool": a["tool_name"], "parameters": a["parameters"]}})
                    })
                    .collect();
                json!({"type": "command_results", "status": "continue", "client_type": "device",
                    "client_id": id, "session_id": msg["session_id"],
                    "prev_response_id": msg["response_id"], "action_results": results})
            }
            _ => continue,
        };
        println!("-> {reply}");
        ws.send(Message::Text(reply.to_string().into())).await?;
    }
    Ok(())
}
