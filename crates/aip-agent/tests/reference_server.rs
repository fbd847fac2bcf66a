//! `aip device` behind the reference server (protocol.md §3.1 step 4, §3.6 step 2): a test
//! double of the reference's server logic on a real socket — it acknowledges the
//! registration with `result: null`, pushes every task with `agent_name: null`, expects
//! the echo, then opens the session with `list_tools` as the reference's LinuxAgent does,
//! then runs `execute_command`. The device has a model configured and must not use it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aip_agent::tools::AllowAll;
use aip_llm::scripted::{finish, Mock};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);

struct Peer(WebSocketStream<TcpStream>);

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the device connects")
            .expect("accept");
        Peer(
            tokio_tungstenite::accept_async(tcp)
                .await
                .expect("handshake"),
        )
    }

    async fn send(&mut self, v: Value) {
        self.0
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// The next frame that is not a heartbeat.
    async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("read");
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] != "heartbeat" {
                    return v;
                }
            }
        }
    }
}

/// A `ServerMessage` as the reference server builds it (every key present).
fn server_message(kind: &str, status: &str, extra: Value) -> Value {
    let mut m = json!({
        "type": kind, "status": status, "user_request": null, "agent_name": null,
        "process_name": null, "root_name": null, "actions": null, "messages": null,
        "error": null, "session_id": null, "task_name": null,
        "timestamp": "2026-12-01T10:00:00.000000+00:00",
        "response_id": uuid::Uuid::new_v4().to_string(), "result": null,
    });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    m
}

fn command(session: &str, actions: Value) -> Value {
    server_message(
        "command",
        "continue",
        json!({"session_id": session, "task_name": "t", "agent_name": "LinuxAgent",
               "actions": actions}),
    )
}

#[tokio::test]
async fn device_with_a_model_echoes_the_reference_servers_task_and_serves_list_tools_then_commands()
{
    // A model the device must NOT use behind the reference: it would finish at once.
    let mock = Mock::start(vec![finish("completed", "ran it myself")])
        .await
        .expect("mock");
    let client = aip_llm::LlmClient::new(Arc::new(mock.config())).expect("llm client");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = start_device_with(
        port,
        "linux-box",
        tools("linux-box", Arc::new(AllowAll), true),
        |c| c.llm = Some(client),
    );

    let mut dev = Peer::accept(&listener).await;
    let register = dev.recv().await;
    assert_eq!(register["type"], "register");
    let tool_list = register["metadata"]["tools"]
        .as_array()
        .expect("tools")
        .clone();
    let exec = tool_list
        .iter()
        .find(|t| t["tool_name"] == "execute_command")
        .expect("execute_command advertised");
    assert_eq!(exec["tool_key"], "action::execute_command");
    // The reference's acknowledgement: no `result`.
    dev.send(server_message("heartbeat", "ok", json!({}))).await;

    // The reference pushes the task with agent_name null and expects the echo.
    let sid = "3f4a2b1c-9d8e-4f3a-b2c1-9a8b7c6d5e4f";
    dev.send(server_message(
        "task",
        "continue",
        json!({"user_request": "say hi", "session_id": sid, "task_name": "t"}),
    ))
    .await;
    let echo = dev.recv().await;
    assert_eq!(echo["type"], "task", "{echo}");
    assert_eq!(echo["status"], "continue");
    assert_eq!(echo["request"], "say hi");

    // Step 0 of the reference's LinuxAgent: list_tools.
    dev.send(command(
        sid,
        json!([{"tool_name": "list_tools", "tool_type": "action",
                "parameters": {"tool_type": "action"}, "call_id": "l1"}]),
    ))
    .await;
    let listed = dev.recv().await;
    assert_eq!(listed["type"], "command_results", "{listed}");
    let r = &listed["action_results"][0];
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["call_id"], "l1");
    assert_eq!(r["namespace"], "aip");
    let tools = r["result"].as_array().expect("a list of MCPToolInfo");
    assert!(!tools.is_empty());
    for t in tools {
        // Every key of the reference's MCPToolInfo, as its model_dump() writes it.
        for key in [
            "tool_key",
            "tool_name",
            "title",
            "namespace",
            "tool_type",
            "description",
            "input_schema",
            "output_schema",
            "meta",
            "annotations",
        ] {
            assert!(t.get(key).is_some(), "{key} missing in {t}");
        }
        assert_eq!(t["tool_type"], "action");
        assert_eq!(
            t["tool_key"],
            format!("action::{}", t["tool_name"].as_str().unwrap_or_default())
        );
        assert_ne!(t["tool_name"], "list_tools", "meta-tools are not listed");
    }
    assert_eq!(tools.len(), tool_list.len(), "the same tools as advertised");
    assert!(tools.iter().any(|t| t["tool_name"] == "execute_command"
        && t["input_schema"]["properties"]["command"].is_object()));

    // Filters: a namespace nobody has gives an empty list; data_collection gives none here.
    dev.send(command(
        sid,
        json!([{"tool_name": "list_tools", "tool_type": "action",
                "parameters": {"tool_type": "data_collection"}}]),
    ))
    .await;
    assert_eq!(dev.recv().await["action_results"][0]["result"], json!([]));
    dev.send(command(
        sid,
        json!([{"tool_name": "list_tools", "tool_type": "action",
                "parameters": {"namespace": "aip"}}]),
    ))
    .await;
    assert_eq!(
        dev.recv().await["action_results"][0]["result"]
            .as_array()
            .map(Vec::len),
        Some(tools.len())
    );

    // Then the model's command.
    dev.send(command(
        sid,
        json!([{"tool_name": "execute_command", "tool_type": "action",
                "parameters": {"command": "echo hi"}, "call_id": "c1"}]),
    ))
    .await;
    let ran = dev.recv().await;
    assert_eq!(ran["action_results"][0]["status"], "success", "{ran}");
    assert_eq!(ran["action_results"][0]["result"]["stdout"], "hi\n");
    dev.send(server_message(
        "task_end",
        "completed",
        json!({"session_id": sid}),
    ))
    .await;
    // Nothing else from the device (no task_end of its own), and the model was never asked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mock.seen().is_empty(),
        "the local model must not run a reference task"
    );
    stop.cancel();
}

#[tokio::test]
async fn device_runs_a_null_agent_task_itself_only_when_delegation_was_announced_and_stamps_its_own_frames_when_sent(
) {
    let mock = Mock::start(vec![
        aip_llm::scripted::call("c1", "execute_command", json!({"command": "sleep 0.5"})),
        finish("completed", "slept"),
    ])
    .await
    .expect("mock");
    let client = aip_llm::LlmClient::new(Arc::new(mock.config())).expect("llm client");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = start_device_with(port, "edge", tools("edge", Arc::new(AllowAll), true), |c| {
        c.llm = Some(client)
    });
    let mut dev = Peer::accept(&listener).await;
    assert_eq!(dev.recv().await["type"], "register");
    // An aip server's acknowledgement.
    dev.send(server_message(
        "heartbeat",
        "ok",
        json!({"result": {"server": "aip", "version": "9.9.9", "features": ["delegation"]}}),
    ))
    .await;
    let sid = "5b1d8f0e-0c44-4f5e-9a55-0d8c1b7e2f10";
    let sent = chrono::Utc::now();
    dev.send(server_message(
        "task",
        "continue",
        json!({"user_request": "sleep a bit", "session_id": sid, "task_name": "t"}),
    ))
    .await;
    let results = dev.recv().await;
    assert_eq!(
        results["type"], "command_results",
        "run here, not echoed: {results}"
    );
    assert_eq!(results["action_results"][0]["status"], "success");
    let end = dev.recv().await;
    assert_eq!(end["type"], "task_end", "{end}");
    assert_eq!(end["status"], "completed");
    assert_eq!(end["metadata"]["result"]["answer"], "slept");
    let stamped = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().expect("timestamp"))
            .expect("RFC 3339")
            .with_timezone(&chrono::Utc)
    };
    let elapsed = stamped(&end) - sent;
    assert!(
        elapsed >= chrono::Duration::milliseconds(450),
        "task_end stamped {elapsed} after the task was sent: it must carry the time it was sent"
    );
    assert!(stamped(&results) - sent >= chrono::Duration::milliseconds(450));
    stop.cancel();
}

#[tokio::test]
async fn backoff_restarts_from_the_initial_delay_after_every_accepted_registration() {
    // A server that accepts each registration and then goes away at once (a rolling
    // restart, many times over): the device must come back each time within the initial
    // delay, not after a doubling one.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = start_device_with(
        port,
        "roller",
        tools("roller", Arc::new(AllowAll), false),
        |c| {
            c.backoff_initial = Duration::from_millis(200);
            c.backoff_max = Duration::from_secs(10);
        },
    );
    let started = std::time::Instant::now();
    let mut registrations = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let Ok(accepted) = tokio::time::timeout(
            Duration::from_millis(2600) - started.elapsed().min(Duration::from_millis(2600)),
            listener.accept(),
        )
        .await
        else {
            break;
        };
        let (tcp, _) = accepted.expect("accept");
        let mut dev = Peer(
            tokio_tungstenite::accept_async(tcp)
                .await
                .expect("handshake"),
        );
        assert_eq!(dev.recv().await["type"], "register");
        dev.send(server_message("heartbeat", "ok", json!({}))).await;
        registrations += 1;
        drop(dev);
    }
    // Without the reset: 0.1–0.2 + 0.2–0.4 + 0.4–0.8 + 0.8–1.6 s … at most 5 in 2.5 s.
    assert!(
        registrations >= 7,
        "only {registrations} registrations in 2.5 s: the backoff was not reset"
    );
    stop.cancel();
}
