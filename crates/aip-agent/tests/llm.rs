//! LLM-planned sessions end to end: a real server, a real device running real shell
//! commands, and a scripted OpenAI-compatible endpoint (real wire format over HTTP)
//! standing in for the paid model API.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aip_agent::tools::AllowAll;
use aip_llm::scripted::{call, error, finish, Mock};
use common::*;
use serde_json::{json, Value};

fn llm_config(mock: &Mock, max_steps: u32) -> aip_llm::LlmConfig {
    let mut c = mock.config();
    c.max_steps = max_steps;
    c.max_retries = 2;
    c
}

/// The `tool` messages of a recorded request: (tool_call_id, content).
fn tool_messages(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap_or("").to_owned(),
                m["content"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn offered_tools(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

async fn natural(server: &TestApp, device: &str, request: &str) -> Value {
    server
        .run(json!({"target_id": device, "request": request, "task_name": "nl"}))
        .await
}

#[tokio::test]
async fn server_agent_runs_a_two_step_task_on_a_real_device() {
    let mock = Mock::start(vec![
        call(
            "call_1",
            "execute_command",
            json!({"command": "echo $((40 + 2))"}),
        ),
        finish("completed", "The answer is 42."),
    ])
    .await
    .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(0, dir.path(), |c| c.llm = Some(llm_config(&mock, 20))).await;
    let stop = start_device(server.port(), "box", tools("box", Arc::new(AllowAll), true));
    server.wait_device("box").await;

    let r = natural(&server, "box", "What is forty plus two? Use the shell.").await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["result"]["answer"], "The answer is 42.");
    let transcript = r["result"]["transcript"].as_array().expect("transcript");
    assert_eq!(transcript.len(), 2);
    assert_eq!(transcript[0]["tool_calls"][0]["name"], "execute_command");
    assert_eq!(transcript[0]["results"][0]["result"]["stdout"], "42\n");
    assert!(transcript[0]["usage"]["total_tokens"].as_u64().is_some());
    // The command really ran as an AIP round on the device.
    assert_eq!(
        r["result"]["rounds"][0]["action_results"][0]["result"]["stdout"],
        "42\n"
    );

    let bodies = mock.bodies();
    assert_eq!(bodies.len(), 2);
    // The device's advertised tools, plus finish, were offered.
    let offered = offered_tools(&bodies[0]);
    for t in ["execute_command", "read_file", "get_system_info", "finish"] {
        assert!(
            offered.iter().any(|o| o == t),
            "{t} not offered: {offered:?}"
        );
    }
    let system = bodies[0]["messages"][0]["content"].as_str().unwrap_or("");
    assert!(
        system.contains("bash"),
        "system prompt names the shell: {system}"
    );
    assert!(
        system.contains("box"),
        "system prompt carries system_info: {system}"
    );
    // The second call carried the result of the first.
    let fed = tool_messages(&bodies[1]);
    assert_eq!(fed.len(), 1);
    assert_eq!(fed[0].0, "call_1");
    assert!(fed[0].1.contains("42"), "{}", fed[0].1);
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn task_the_model_gives_up_on_fails_with_its_answer() {
    let mock = Mock::start(vec![finish("failed", "There is no such file.")])
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(0, dir.path(), |c| c.llm = Some(llm_config(&mock, 20))).await;
    let stop = start_device(
        server.port(),
        "box2",
        tools("box2", Arc::new(AllowAll), true),
    );
    server.wait_device("box2").await;
    let r = natural(&server, "box2", "Read /nonexistent").await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"], "There is no such file.");
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn max_steps_exceeded_fails_the_session_saying_so() {
    let mock = Mock::start(vec![
        call("c1", "execute_command", json!({"command": "true"})),
        call("c2", "execute_command", json!({"command": "true"})),
        call("c3", "execute_command", json!({"command": "true"})),
    ])
    .await
    .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(0, dir.path(), |c| c.llm = Some(llm_config(&mock, 2))).await;
    let stop = start_device(
        server.port(),
        "box3",
        tools("box3", Arc::new(AllowAll), true),
    );
    server.wait_device("box3").await;
    let r = natural(&server, "box3", "loop forever").await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"], "Stopped after 2 steps without finishing");
    assert_eq!(r["result"]["rounds"].as_array().map(Vec::len), Some(2));
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_is_retried_then_the_task_completes() {
    let mock = Mock::start(vec![
        error(429, "Rate limit reached"),
        finish("completed", "done"),
    ])
    .await
    .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(0, dir.path(), |c| c.llm = Some(llm_config(&mock, 20))).await;
    let stop = start_device(
        server.port(),
        "box4",
        tools("box4", Arc::new(AllowAll), true),
    );
    server.wait_device("box4").await;
    let r = natural(&server, "box4", "anything").await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(mock.bodies().len(), 2);
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn endpoint_down_fails_the_session_with_the_cause() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr");
    drop(dead);
    let mut llm = aip_llm::LlmConfig::new(format!("http://{addr}/v1"), "m");
    llm.max_retries = 1;
    llm.retry_base = Duration::from_millis(10);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(0, dir.path(), |c| c.llm = Some(llm)).await;
    let stop = start_device(
        server.port(),
        "box5",
        tools("box5", Arc::new(AllowAll), true),
    );
    server.wait_device("box5").await;
    let r = natural(&server, "box5", "anything").await;
    assert_eq!(r["state"], "failed", "{r}");
    let e = r["error"].as_str().unwrap_or("");
    assert!(e.starts_with("Driver error: "), "{e}");
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn device_with_a_model_runs_a_delegated_task_itself() {
    let mock = Mock::start(vec![
        call(
            "d1",
            "execute_command",
            json!({"command": "echo from-the-device"}),
        ),
        finish("completed", "Printed it."),
    ])
    .await
    .expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    // No model on the server: natural language is delegated.
    let server = start_server(0, dir.path()).await;
    let client = aip_llm::LlmClient::new(Arc::new(llm_config(&mock, 20))).expect("llm client");
    let stop = start_device_with(
        server.port(),
        "edge",
        tools("edge", Arc::new(AllowAll), true),
        |c| c.llm = Some(client),
    );
    server.wait_device("edge").await;
    let r = natural(&server, "edge", "Print a greeting from the device").await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["result"]["result"]["answer"], "Printed it.");
    assert_eq!(
        r["result"]["rounds"][0]["action_results"][0]["result"]["stdout"],
        "from-the-device\n"
    );
    assert_eq!(
        r["result"]["result"]["transcript"].as_array().map(Vec::len),
        Some(2)
    );
    stop.cancel();
    server.stop().await;
}
