//! The MCP bridge against the real `aip-mcp-demo` stdio server.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aip_agent::tools::mcp::{self, McpConfig, McpServerConfig};
use aip_agent::tools::{AllowAll, ToolSet};
use aip_protocol::{ActionResult, Command, ResultStatus, ToolType};
use serde_json::{json, Value};

fn demo_config() -> McpConfig {
    let mut servers = BTreeMap::new();
    servers.insert(
        "demo".to_owned(),
        McpServerConfig {
            command: Some(env!("CARGO_BIN_EXE_aip-mcp-demo").to_owned()),
            ..Default::default()
        },
    );
    McpConfig { servers }
}

async fn demo_set() -> ToolSet {
    let mut set = ToolSet::new(Arc::new(AllowAll), Duration::from_secs(10));
    mcp::register(&mut set, &demo_config()).await.unwrap();
    set
}

async fn run(set: &ToolSet, tool: &str, params: Value) -> ActionResult {
    let command = Command {
        tool_name: tool.to_owned(),
        parameters: params.as_object().cloned(),
        tool_type: ToolType::Action,
        call_id: Some("c1".to_owned()),
    };
    set.run(&command).await
}

#[tokio::test]
async fn demo_tools_are_advertised() {
    let set = demo_set().await;
    let infos = set.infos();
    let echo = infos.iter().find(|i| i.tool_name == "demo.echo").unwrap();
    assert_eq!(echo.tool_key, "action::demo.echo");
    assert_eq!(echo.namespace, "demo");
    assert_eq!(echo.tool_type, "action");
    assert!(echo.description.as_deref().unwrap().contains("unchanged"));
    let schema = echo.input_schema.as_ref().unwrap();
    assert_eq!(schema["type"], "object");
    assert!(schema["properties"]["text"].is_object(), "{schema:?}");
    for name in ["demo.add", "demo.fail", "demo.crash"] {
        assert!(infos.iter().any(|i| i.tool_name == name), "{name} missing");
    }
}

#[tokio::test]
async fn calls_map_results() {
    let set = demo_set().await;

    let r = run(&set, "demo.echo", json!({"text": "hi"})).await;
    assert_eq!(r.status, ResultStatus::Success, "{r:?}");
    assert_eq!(r.result, Some(json!("hi")));
    assert_eq!(r.call_id.as_deref(), Some("c1"));
    assert_eq!(r.namespace.as_deref(), Some("demo"));

    let r = run(&set, "echo", json!({"text": "short"})).await;
    assert_eq!(r.status, ResultStatus::Success, "{r:?}");
    assert_eq!(r.result, Some(json!("short")));

    let r = run(&set, "add", json!({"a": 2, "b": 3})).await;
    assert_eq!(r.status, ResultStatus::Success, "{r:?}");
    assert_eq!(r.result, Some(json!("5")));

    let r = run(&set, "demo.fail", json!({})).await;
    assert_eq!(r.status, ResultStatus::Failure, "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("deliberate failure"),
        "{r:?}"
    );
    assert_eq!(r.result, Some(json!("deliberate failure")));

    // Bad arguments: the server's complaint comes back as the failure.
    let r = run(&set, "demo.add", json!({"a": "x"})).await;
    assert_eq!(r.status, ResultStatus::Failure, "{r:?}");
    assert!(r.error.unwrap().contains("parameters"));
}

#[tokio::test]
async fn concurrent_calls() {
    let set = Arc::new(demo_set().await);
    let calls = (0..8).map(|i| {
        let set = set.clone();
        tokio::spawn(async move { run(&set, "demo.echo", json!({"text": format!("m{i}")})).await })
    });
    for (i, call) in calls.collect::<Vec<_>>().into_iter().enumerate() {
        let r = call.await.unwrap();
        assert_eq!(r.result, Some(json!(format!("m{i}"))), "{r:?}");
    }
}

#[tokio::test]
async fn crashed_server_is_respawned() {
    let set = demo_set().await;
    let r = run(&set, "demo.crash", json!({})).await;
    assert_eq!(r.status, ResultStatus::Failure, "{r:?}");
    let error = r.error.unwrap();
    assert!(error.contains("demo") && error.contains("crash"), "{error}");

    let r = run(&set, "demo.echo", json!({"text": "back"})).await;
    assert_eq!(r.status, ResultStatus::Success, "{r:?}");
    assert_eq!(r.result, Some(json!("back")));
    // And it stays up.
    let r = run(&set, "echo", json!({"text": "again"})).await;
    assert_eq!(r.result, Some(json!("again")), "{r:?}");
}

#[tokio::test]
async fn missing_command_names_the_server() {
    let mut config = demo_config();
    config.servers.insert(
        "ghost".to_owned(),
        McpServerConfig {
            command: Some("/nonexistent/aip-no-such-mcp-server".to_owned()),
            ..Default::default()
        },
    );
    let mut set = ToolSet::new(Arc::new(AllowAll), Duration::from_secs(10));
    let error = format!("{:#}", mcp::register(&mut set, &config).await.unwrap_err());
    assert!(error.contains("'ghost'"), "{error}");
    assert!(!error.contains("'demo'"), "{error}");
    // The working server is registered anyway.
    let r = run(&set, "demo.echo", json!({"text": "hi"})).await;
    assert_eq!(r.result, Some(json!("hi")), "{r:?}");

    let error = mcp::connect("ghost", &config.servers["ghost"])
        .await
        .err()
        .unwrap();
    assert!(
        format!("{error:#}").contains("MCP server 'ghost'"),
        "{error:#}"
    );
}

#[test]
fn parses_tools_file() {
    let config = McpConfig::parse(
        r#"
        [servers.fs]
        command = "npx"
        args = ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]
        env = { DEBUG = "1" }

        [servers.search]
        url = "http://127.0.0.1:8080/mcp"
        headers = { Authorization = "Bearer x" }
        "#,
    )
    .unwrap();
    let fs = &config.servers["fs"];
    assert_eq!(fs.command.as_deref(), Some("npx"));
    assert_eq!(fs.args.len(), 3);
    assert_eq!(fs.env["DEBUG"], "1");
    let search = &config.servers["search"];
    assert_eq!(search.url.as_deref(), Some("http://127.0.0.1:8080/mcp"));
    assert_eq!(search.headers["Authorization"], "Bearer x");

    assert!(McpConfig::parse("").unwrap().servers.is_empty());
}

#[test]
fn refuses_both_or_neither() {
    let both = McpConfig::parse(
        r#"
        [servers.x]
        command = "a"
        url = "http://h/mcp"
        "#,
    )
    .unwrap_err();
    let both = format!("{both:#}");
    assert!(both.contains("'x'") && both.contains("not both"), "{both}");

    let neither = format!(
        "{:#}",
        McpConfig::parse("[servers.y]\nargs = [\"a\"]\n").unwrap_err()
    );
    assert!(
        neither.contains("'y'") && neither.contains("`command`"),
        "{neither}"
    );

    let typo = format!(
        "{:#}",
        McpConfig::parse("[servers.z]\ncomand = \"a\"\n").unwrap_err()
    );
    assert!(typo.contains("comand"), "{typo}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tools.toml");
    std::fs::write(&path, "[servers.bad]\nurl = \"ftp://x\"\n").unwrap();
    let error = format!("{:#}", mcp::load(&path).unwrap_err());
    assert!(
        error.contains("tools.toml") && error.contains("'bad'"),
        "{error}"
    );

    let missing = format!(
        "{:#}",
        mcp::load(&dir.path().join("nope.toml")).unwrap_err()
    );
    assert!(missing.contains("nope.toml"), "{missing}");

    std::fs::write(&path, "[servers.ok]\ncommand = \"x\"\n").unwrap();
    assert!(mcp::load(&path).unwrap().servers.contains_key("ok"));
}

#[tokio::test]
async fn unreachable_http_server_names_the_server() {
    let config = McpServerConfig {
        url: Some("http://127.0.0.1:1/mcp".to_owned()),
        headers: BTreeMap::from([("Authorization".to_owned(), "Bearer x".to_owned())]),
        startup_timeout_secs: Some(5),
        ..Default::default()
    };
    let error = mcp::connect("remote", &config).await.err().unwrap();
    assert!(
        format!("{error:#}").contains("MCP server 'remote'"),
        "{error:#}"
    );
}
