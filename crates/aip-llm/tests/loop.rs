//! The agent loop against a scripted OpenAI-compatible endpoint started inside each test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aip_llm::scripted::{call, completion, error, finish, Mock, Reply};
use aip_llm::{AgentLoop, Decision, LlmConfig, LlmError, LoopContext, ToolSpec};
use aip_protocol::{ActionResult, ResultStatus};
use serde_json::{json, Value};

fn execute_command() -> ToolSpec {
    ToolSpec::from_advertised(&json!([{
        "tool_key": "action::execute_command", "tool_name": "execute_command", "namespace": "aip",
        "tool_type": "action", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}
    }]))
    .remove(0)
}

fn ctx(tools: Vec<ToolSpec>) -> LoopContext {
    LoopContext {
        request: "check disk space".into(),
        platform: "linux".into(),
        system_info: Some(json!({"os": "Ubuntu 24.04", "cpus": 8})),
        tools,
    }
}

fn success(call_id: Option<&str>, result: Value) -> ActionResult {
    ActionResult {
        status: ResultStatus::Success,
        error: None,
        result: Some(result),
        namespace: Some("aip".into()),
        call_id: call_id.map(str::to_string),
    }
}

fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "function");
            t["function"]["name"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The `tool` messages of a request body: (tool_call_id, content).
fn tool_messages(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn two_step_task_completes() {
    let mock = Mock::start_ok(vec![
        call("call_1", "execute_command", json!({"command": "df -h /"})),
        finish("completed", "22% of / is used"),
    ])
    .await;
    let mut agent = AgentLoop::new(Arc::new(mock.config()), ctx(vec![execute_command()]));

    let Decision::Call(calls) = agent.next(None).await.unwrap() else {
        panic!("expected a call")
    };
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, "call_1");
    assert_eq!(calls[0].name, "execute_command");
    assert_eq!(calls[0].arguments["command"], "df -h /");
    let cmd = calls[0].to_command(aip_protocol::ToolType::Action);
    assert_eq!(cmd.call_id.as_deref(), Some("call_1"));

    let result = success(
        Some("call_1"),
        json!({"exit_code": 0, "stdout": "/dev/vda 252G 20G 72G 22% /\n"}),
    );
    let decision = agent.next(Some(vec![result])).await.unwrap();
    assert_eq!(
        decision,
        Decision::Finish {
            completed: true,
            answer: "22% of / is used".into()
        }
    );
    assert_eq!(agent.steps(), 2);
    // Asking again after the end repeats the decision without calling the model.
    assert_eq!(agent.next(None).await.unwrap(), decision);

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-test");
    let first = &seen[0].body;
    assert_eq!(first["model"], "test-model");
    assert_eq!(tool_names(first), ["execute_command", "finish"]);
    let finish_schema = &first["tools"][1]["function"]["parameters"];
    assert_eq!(
        finish_schema["properties"]["status"]["enum"],
        json!(["completed", "failed"])
    );
    let messages = first["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    let system = messages[0]["content"].as_str().unwrap();
    assert!(
        system.contains("linux") && system.contains("bash"),
        "{system}"
    );
    assert!(
        system.contains(r#"{"os":"Ubuntu 24.04","cpus":8}"#),
        "{system}"
    );
    assert!(system.contains("finish"), "{system}");
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "check disk space"})
    );

    let second = &seen[1].body;
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(messages[2]["tool_calls"][0]["type"], "function");
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["name"],
        "execute_command"
    );
    let tools = tool_messages(second);
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].0, "call_1");
    let content: Value = serde_json::from_str(&tools[0].1).unwrap();
    assert_eq!(content["status"], "success");
    assert_eq!(content["result"]["exit_code"], 0);

    let transcript = agent.transcript();
    let steps = transcript.as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["step"], 1);
    assert_eq!(steps[0]["text"], Value::Null);
    assert_eq!(
        steps[0]["tool_calls"],
        json!([{"id": "call_1", "name": "execute_command", "arguments": {"command": "df -h /"}}])
    );
    assert_eq!(steps[0]["results"][0]["status"], "success");
    assert_eq!(steps[0]["results"][0]["call_id"], "call_1");
    assert_eq!(
        steps[0]["usage"],
        json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120})
    );
    assert_eq!(steps[1]["finish"]["status"], "completed");
}

#[tokio::test]
async fn model_finishes_as_failed_and_finish_wins_over_other_calls() {
    let mock = Mock::start_ok(vec![completion(
        Some("I cannot do that."),
        &[
            ("c1", "execute_command", r#"{"command":"sudo rm x"}"#),
            (
                "c2",
                "finish",
                r#"{"status":"failed","answer":"permission denied"}"#,
            ),
        ],
    )])
    .await;
    let mut agent = AgentLoop::new(Arc::new(mock.config()), ctx(vec![execute_command()]));
    assert_eq!(
        agent.next(None).await.unwrap(),
        Decision::Finish {
            completed: false,
            answer: "permission denied".into()
        }
    );
    assert_eq!(agent.steps(), 1);
    let t = agent.transcript();
    assert_eq!(t[0]["text"], "I cannot do that.");
    assert_eq!(t[0]["ignored_calls"], json!(["execute_command"]));
    assert!(t[0]["note"].as_str().unwrap().contains("ignored"));
    assert_eq!(t[0]["finish"]["status"], "failed");
}

#[tokio::test]
async fn stops_after_max_steps() {
    let mock = Mock::start_ok(vec![
        call("a", "execute_command", json!({"command": "ls"})),
        call("b", "execute_command", json!({"command": "ls"})),
        call("c", "execute_command", json!({"command": "ls"})),
        finish("completed", "never reached"),
    ])
    .await;
    let config = LlmConfig {
        max_steps: 3,
        ..mock.config()
    };
    let mut agent = AgentLoop::new(Arc::new(config), ctx(vec![execute_command()]));
    let mut results = None;
    let mut calls = 0;
    let decision = loop {
        match agent.next(results.take()).await.unwrap() {
            Decision::Call(c) => {
                calls += 1;
                results = Some(vec![success(Some(&c[0].id), json!({"stdout": ""}))]);
            }
            finish => break finish,
        }
    };
    assert_eq!(calls, 3);
    assert_eq!(
        decision,
        Decision::Finish {
            completed: false,
            answer: "Stopped after 3 steps without finishing".into()
        }
    );
    assert_eq!(mock.seen().len(), 3);
    assert_eq!(agent.transcript().as_array().unwrap().len(), 3);
    // The last round's results are still recorded.
    assert_eq!(agent.transcript()[2]["results"][0]["call_id"], "c");
}

#[tokio::test]
async fn rate_limit_then_success() {
    let mock = Mock::start_ok(vec![
        Reply(
            429,
            json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
            vec![("retry-after-ms", "20")],
        ),
        finish("completed", "ok"),
    ])
    .await;
    let mut agent = AgentLoop::new(Arc::new(mock.config()), ctx(vec![]));
    let started = std::time::Instant::now();
    assert!(matches!(
        agent.next(None).await.unwrap(),
        Decision::Finish {
            completed: true,
            ..
        }
    ));
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert_eq!(mock.seen().len(), 2);
    assert_eq!(agent.steps(), 1);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let mock = Mock::start_ok(vec![
        error(500, "boom"),
        error(502, "bad gateway"),
        error(503, "overloaded"),
        finish("completed", "done"),
    ])
    .await;
    let mut agent = AgentLoop::new(Arc::new(mock.config()), ctx(vec![]));
    let started = std::time::Instant::now();
    assert!(matches!(
        agent.next(None).await.unwrap(),
        Decision::Finish {
            completed: true,
            ..
        }
    ));
    // backoff 10 + 20 + 40 ms
    assert!(started.elapsed() >= Duration::from_millis(70));
    assert_eq!(mock.seen().len(), 4);
}

#[tokio::test]
async fn endpoint_down_is_a_provider_error_after_retries() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = LlmConfig {
        max_retries: 2,
        retry_base: Duration::from_millis(10),
        ..LlmConfig::new(format!("http://{addr}/v1"), "m")
    };
    let mut agent = AgentLoop::new(Arc::new(config), ctx(vec![]));
    let started = std::time::Instant::now();
    match agent.next(None).await {
        Err(LlmError::Provider { status, message }) => {
            // two retries: 10 + 20 ms of backoff
            assert!(started.elapsed() >= Duration::from_millis(30));
            assert_eq!(status, None);
            assert!(message.to_lowercase().contains("connect"), "{message}");
        }
        other => panic!("expected a provider error, got {other:?}"),
    }
    assert_eq!(agent.steps(), 0);
}

#[tokio::test]
async fn unauthorized_is_a_provider_error_with_the_message() {
    let msg = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.";
    let mock = Mock::start_ok((0..3).map(|_| error(401, msg)).collect()).await;
    let config = LlmConfig {
        max_retries: 2,
        ..mock.config()
    };
    let mut agent = AgentLoop::new(Arc::new(config), ctx(vec![]));
    match agent.next(None).await {
        Err(e @ LlmError::Provider { .. }) => {
            let text = e.to_string();
            assert!(!text.contains("sk-test"), "{text}");
            let LlmError::Provider { status, message } = e else {
                unreachable!()
            };
            assert_eq!(status, Some(401));
            assert_eq!(message, msg);
        }
        other => panic!("expected a provider error, got {other:?}"),
    }
    assert_eq!(mock.seen().len(), 3);
}

#[tokio::test]
async fn bad_request_is_not_retried() {
    let mock = Mock::start_ok(vec![error(400, "Invalid schema for function 'x'")]).await;
    let mut agent = AgentLoop::new(Arc::new(mock.config()), ctx(vec![]));
    match agent.next(None).await {
        Err(LlmError::Provider { status, message }) => {
            assert_eq!(status, Some(400));
            assert_eq!(message, "Invalid schema for function 'x'");
        }
        other => panic!("expected a provider error, got {other:?}"),
    }
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test]
async fn text_unknown_tool_and_malformed_arguments_are_reported_to_the_model() {
    let mock = Mock::start_ok(vec![
        completion(Some("The disk looks fine."), &[]),
        call("u1", "format_disk", json!({})),
        completion(None, &[("m1", "execute_command", "{\"command\": \"df")]),
        finish("completed", "fine"),
    ])
    .await;
    let mut agent = AgentLoop::new(Arc::new(mock.config()), ctx(vec![execute_command()]));
    assert_eq!(
        agent.next(None).await.unwrap(),
        Decision::Finish {
            completed: true,
            answer: "fine".into()
        }
    );
    assert_eq!(agent.steps(), 4);
    let bodies = mock.bodies();
    assert_eq!(bodies.len(), 4);

    // text only → a user message telling the model to use the tools
    let last = bodies[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "user");
    assert!(last["content"].as_str().unwrap().contains("finish"));

    let unknown = tool_messages(&bodies[2]);
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].0, "u1");
    assert!(
        unknown[0].1.contains("Unknown tool 'format_disk'"),
        "{}",
        unknown[0].1
    );
    assert!(
        unknown[0].1.contains("execute_command, finish"),
        "{}",
        unknown[0].1
    );

    let malformed = tool_messages(&bodies[3]);
    assert_eq!(malformed.len(), 2);
    assert_eq!(malformed[1].0, "m1");
    assert!(
        malformed[1].1.contains("Invalid arguments"),
        "{}",
        malformed[1].1
    );
    // the malformed call is replayed with valid (empty) arguments
    let assistant = &bodies[3]["messages"].as_array().unwrap()[6];
    assert_eq!(assistant["tool_calls"][0]["function"]["arguments"], "{}");

    let t = agent.transcript();
    assert_eq!(t[0]["text"], "The disk looks fine.");
    assert_eq!(t[1]["results"][0]["status"], "failure");
    assert_eq!(t[2]["tool_calls"][0]["arguments"], "{\"command\": \"df");
}

#[tokio::test]
async fn huge_results_are_truncated() {
    let mock = Mock::start_ok(vec![
        call("c1", "execute_command", json!({"command": "cat big"})),
        finish("completed", "read"),
    ])
    .await;
    let config = LlmConfig {
        max_observation_chars: 100,
        ..mock.config()
    };
    let mut agent = AgentLoop::new(Arc::new(config), ctx(vec![execute_command()]));
    let Decision::Call(_) = agent.next(None).await.unwrap() else {
        panic!("expected a call")
    };
    // No call_id: matched by position.
    let big = success(None, json!({"stdout": "x".repeat(5_000)}));
    let full = serde_json::to_string(&json!({"status": "success", "result": big.result})).unwrap();
    agent.next(Some(vec![big])).await.unwrap();
    let tools = tool_messages(&mock.bodies()[1]);
    assert_eq!(tools[0].0, "c1");
    let content = &tools[0].1;
    let marker = format!("…[truncated {} chars]", full.chars().count() - 100);
    assert!(content.ends_with(&marker), "{content}");
    assert_eq!(content.chars().count(), 100 + marker.chars().count());
    // the transcript keeps the whole result
    assert_eq!(
        agent.transcript()[0]["results"][0]["result"]["stdout"]
            .as_str()
            .unwrap()
            .len(),
        5_000
    );
}

#[tokio::test]
async fn dotted_tool_names_round_trip() {
    let mock = Mock::start_ok(vec![
        completion(
            None,
            &[
                ("e1", "demo__echo", r#"{"text":"hi"}"#),
                ("e2", "execute_command", r#"{"command":"true"}"#),
            ],
        ),
        finish("completed", "echoed"),
    ])
    .await;
    let demo = ToolSpec::new("demo.echo", Some("Echo".into()), json!({"type": "object"}));
    let mut agent = AgentLoop::new(Arc::new(mock.config()), ctx(vec![demo, execute_command()]));
    let Decision::Call(calls) = agent.next(None).await.unwrap() else {
        panic!("expected calls")
    };
    assert_eq!(calls[0].name, "demo.echo");
    assert_eq!(calls[0].arguments["text"], "hi");
    assert_eq!(calls[1].name, "execute_command");
    // Results out of order, matched by call_id.
    let results = vec![
        success(Some("e2"), json!({"exit_code": 0})),
        success(Some("e1"), json!({"echo": "hi"})),
    ];
    agent.next(Some(results)).await.unwrap();
    let bodies = mock.bodies();
    assert_eq!(
        tool_names(&bodies[0]),
        ["demo__echo", "execute_command", "finish"]
    );
    assert_eq!(
        bodies[0]["tools"][0]["function"]["parameters"],
        json!({"type": "object", "properties": {}})
    );
    let assistant = &bodies[1]["messages"].as_array().unwrap()[2];
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "demo__echo");
    let tools = tool_messages(&bodies[1]);
    assert_eq!(tools[0].0, "e1");
    assert!(tools[0].1.contains(r#""echo":"hi""#), "{}", tools[0].1);
    assert_eq!(tools[1].0, "e2");
    assert!(tools[1].1.contains(r#""exit_code":0"#), "{}", tools[1].1);
    assert_eq!(agent.transcript()[0]["tool_calls"][0]["name"], "demo.echo");
}

#[tokio::test]
async fn azure_deployment_url_key_header_and_api_version() {
    let mock = Mock::start_ok(vec![finish("completed", "hi")]).await;
    let config = LlmConfig {
        retry_base: Duration::from_millis(10),
        ..LlmConfig::azure(
            format!("http://{}", mock.addr),
            "gpt-4o-deploy",
            "azure-key",
            "2024-10-21",
        )
    };
    let mut agent = AgentLoop::new(Arc::new(config), ctx(vec![]));
    agent.next(None).await.unwrap();
    let seen = mock.seen();
    assert_eq!(
        seen[0].uri,
        "/openai/deployments/gpt-4o-deploy/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen[0].headers["api-key"], "azure-key");
    assert!(seen[0].headers.get("authorization").is_none());
}

trait StartOk {
    async fn start_ok(replies: Vec<Reply>) -> Mock;
}

impl StartOk for Mock {
    async fn start_ok(replies: Vec<Reply>) -> Mock {
        Mock::start(replies).await.unwrap()
    }
}
