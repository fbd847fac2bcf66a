//! The device agent against a real aip server: real sockets, real shell commands.

use std::sync::Arc;
use std::time::Duration;

mod common;

use aip_agent::tools::AllowAll;
use common::*;
use serde_json::json;

#[tokio::test]
async fn plan_runs_real_shell_commands_and_returns_their_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let stop = start_device(server.port, "dev1", tools("dev1", Arc::new(AllowAll), true));
    server.wait_device("dev1").await;

    let r = server
        .run_plan(
            "dev1",
            json!([
                shell("echo hello; echo oops >&2", json!({})),
                shell("printf \"$GREETING\"", json!({"env": {"GREETING": "hi there"}})),
                {"tool_name": "get_system_info", "tool_type": "data_collection"}
            ]),
        )
        .await;
    assert_eq!(r["state"], "completed", "{r}");
    let rounds = r["result"]["rounds"].as_array().expect("rounds");
    let first = &rounds[0]["action_results"][0];
    assert_eq!(first["status"], "success");
    assert_eq!(first["namespace"], "aip");
    assert_eq!(first["result"]["stdout"], "hello\n");
    assert_eq!(first["result"]["stderr"], "oops\n");
    assert_eq!(first["result"]["exit_code"], 0);
    assert!(first["result"]["duration_ms"].is_u64());
    assert_eq!(
        rounds[1]["action_results"][0]["result"]["stdout"],
        "hi there"
    );
    let info = &rounds[2]["action_results"][0]["result"];
    assert_eq!(info["device_id"], "dev1");
    assert!(info["cpu_count"].as_u64().is_some_and(|n| n >= 1));

    let clients = server.get("/api/clients").await;
    assert_eq!(clients["clients"][0]["platform"], "linux");
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn output_beyond_the_cap_is_truncated_and_marked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let stop = start_device(
        server.port,
        "devcap",
        tools("devcap", Arc::new(AllowAll), true),
    );
    server.wait_device("devcap").await;
    // The test tool set keeps 1024 bytes per stream.
    let r = server
        .run_plan(
            "devcap",
            json!([shell("head -c 5000 /dev/zero | tr '\\0' x", json!({}))]),
        )
        .await;
    let result = &r["result"]["rounds"][0]["action_results"][0]["result"];
    assert_eq!(result["stdout"].as_str().map(str::len), Some(1024), "{r}");
    assert_eq!(result["stdout_truncated"], true);
    assert_eq!(result["stderr_truncated"], false);
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn failing_command_fails_the_session_and_skips_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let stop = start_device(server.port, "dev2", tools("dev2", Arc::new(AllowAll), true));
    server.wait_device("dev2").await;
    let plan = json!({"actions": [
        {"tool_name": "execute_command", "tool_type": "action", "parameters": {"command": "echo partial; exit 3"}},
        {"tool_name": "execute_command", "tool_type": "action", "parameters": {"command": "echo never"}}
    ]});
    let r = server
        .run(json!({"target_id": "dev2", "request": plan.to_string()}))
        .await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(
        r["error"],
        "Command 'execute_command' failed: Command exited with code 3"
    );
    let results = &r["result"]["rounds"][0]["action_results"];
    assert_eq!(results[0]["result"]["stdout"], "partial\n");
    assert_eq!(results[0]["result"]["exit_code"], 3);
    assert_eq!(results[1]["status"], "skipped");
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("bg.pid");
    let server = start_server(0, dir.path()).await;
    let stop = start_device(server.port, "dev3", tools("dev3", Arc::new(AllowAll), true));
    server.wait_device("dev3").await;
    let command = format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display());
    let r = server
        .run_plan("dev3", json!([shell(&command, json!({"timeout": 0.5}))]))
        .await;
    assert_eq!(r["state"], "failed", "{r}");
    let result = &r["result"]["rounds"][0]["action_results"][0];
    assert_eq!(result["status"], "failure");
    assert_eq!(
        result["error"],
        "Command timed out after 0.5 s; its process group was killed"
    );
    assert_eq!(result["result"]["timed_out"], true);
    let pid = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .to_owned();
    // The background sleep was in the group: it is gone (or a zombie being reaped).
    let mut alive = true;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            alive = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive, "background process {pid} survived the timeout");
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn unknown_tools_and_bad_parameters_are_failures_not_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let stop = start_device(server.port, "dev4", tools("dev4", Arc::new(AllowAll), true));
    server.wait_device("dev4").await;
    let r = server
        .run_plan(
            "dev4",
            json!([{"tool_name": "no_such_tool", "tool_type": "action"}]),
        )
        .await;
    assert_eq!(
        r["error"],
        "Command 'no_such_tool' failed: Unknown tool 'no_such_tool'"
    );
    let r = server
        .run_plan(
            "dev4",
            json!([{"tool_name": "execute_command", "tool_type": "action", "parameters": {"command": 5}}]),
        )
        .await;
    assert_eq!(r["state"], "failed");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("parameter 'command' must be a string")),
        "{r}"
    );
    // The device still works afterwards, and the file tools do what they say.
    let file = dir.path().join("note.txt");
    let r = server
        .run_plan(
            "dev4",
            json!([
                {"tool_name": "write_file", "tool_type": "action", "parameters": {"path": file, "content": "abc"}},
                {"tool_name": "write_file", "tool_type": "action", "parameters": {"path": file, "content": "def", "append": true}},
                {"tool_name": "read_file", "tool_type": "action", "parameters": {"path": file}},
                {"tool_name": "list_dir", "tool_type": "action", "parameters": {"path": dir.path()}}
            ]),
        )
        .await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(
        r["result"]["rounds"][2]["action_results"][0]["result"]["content"],
        "abcdef"
    );
    let entries = &r["result"]["rounds"][3]["action_results"][0]["result"]["entries"];
    assert!(entries
        .as_array()
        .expect("entries")
        .iter()
        .any(|e| e["name"] == "note.txt" && e["type"] == "file"));
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn device_reconnects_after_a_server_restart_and_takes_the_next_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let port = server.port;
    let stop = start_device(port, "dev5", tools("dev5", Arc::new(AllowAll), true));
    server.wait_device("dev5").await;
    let r = server
        .run_plan("dev5", json!([shell("echo before", json!({}))]))
        .await;
    assert_eq!(r["state"], "completed");
    server.stop().await;

    // Same port, same data dir: the device finds its way back by itself.
    let server = start_server(port, dir.path()).await;
    server.wait_device("dev5").await;
    let r = server
        .run_plan("dev5", json!([shell("echo after", json!({}))]))
        .await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(
        r["result"]["rounds"][0]["action_results"][0]["result"]["stdout"],
        "after\n"
    );
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn calls_refused_by_policy_fail_naming_the_rule_and_are_not_advertised() {
    use aip_agent::policy::{CommandPolicy, ToolPolicy};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let commands = CommandPolicy::from_toml_str(
        "allowed_commands = [\"echo\", \"ls\"]\ndenied_commands = [\"rm\"]\n",
    )
    .expect("policy");
    let policy = ToolPolicy::new(vec![], vec!["write_*".into()], false, Some(commands));
    let stop = start_device(server.port, "dev6", tools("dev6", Arc::new(policy), true));
    server.wait_device("dev6").await;

    let r = server
        .run_plan(
            "dev6",
            json!([
                shell("echo fine", json!({})),
                shell("rm -rf /tmp/x", json!({}))
            ]),
        )
        .await;
    assert_eq!(r["state"], "failed", "{r}");
    let results = &r["result"]["rounds"];
    assert_eq!(results[0]["action_results"][0]["status"], "success");
    let refused = &results[1]["action_results"][0];
    assert_eq!(refused["status"], "failure");
    assert_eq!(
        refused["error"],
        "Refused by command policy: 'rm' is in denied_commands"
    );
    let r = server
        .run_plan("dev6", json!([{"tool_name": "write_file", "tool_type": "action", "parameters": {"path": "/tmp/x", "content": "x"}}]))
        .await;
    assert_eq!(
        r["error"],
        "Command 'write_file' failed: Refused by policy: tool 'write_file' matches --deny-tool 'write_*'"
    );
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn mcp_tool_is_called_end_to_end_through_the_server() {
    use aip_agent::tools::mcp;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let config = mcp::McpConfig::parse(&format!(
        "[servers.demo]\ncommand = \"{}\"\n",
        env!("CARGO_BIN_EXE_aip-mcp-demo")
    ))
    .expect("config");
    let mut set = tools("dev7", Arc::new(AllowAll), true);
    mcp::register(&mut set, &config)
        .await
        .expect("mcp server starts");
    let stop = start_device(server.port, "dev7", set);
    server.wait_device("dev7").await;

    let r = server
        .run_plan(
            "dev7",
            json!([
                {"tool_name": "demo.echo", "tool_type": "action", "parameters": {"text": "through the hub"}},
                {"tool_name": "add", "tool_type": "action", "parameters": {"a": 2, "b": 3}}
            ]),
        )
        .await;
    assert_eq!(r["state"], "completed", "{r}");
    let first = &r["result"]["rounds"][0]["action_results"][0];
    assert_eq!(first["result"], "through the hub");
    assert_eq!(first["namespace"], "demo");
    assert_eq!(r["result"]["rounds"][1]["action_results"][0]["result"], "5");

    let r = server
        .run_plan(
            "dev7",
            json!([{"tool_name": "demo.fail", "tool_type": "action"}]),
        )
        .await;
    assert_eq!(r["state"], "failed");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("deliberate failure")),
        "{r}"
    );
    stop.cancel();
    server.stop().await;
}

/// Waits until the session's command has been sent (state running).
async fn wait_running(server: &Server, sid: &str) {
    for _ in 0..500 {
        let r = server.get(&format!("/api/task_result/{sid}")).await;
        if r["state"] == "running" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session {sid} never ran");
}

#[tokio::test]
async fn shutdown_lets_the_running_command_finish_within_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let stop = start_device_with(
        server.port,
        "grace",
        tools("grace", Arc::new(AllowAll), true),
        |c| c.shutdown_grace = Duration::from_secs(10),
    );
    server.wait_device("grace").await;
    let sid = server
        .dispatch_plan(
            "grace",
            json!([shell("sleep 0.5; echo finished", json!({}))]),
        )
        .await;
    wait_running(&server, &sid).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the command is running
    stop.cancel();
    let r = server.wait_done(&sid).await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(
        r["result"]["rounds"][0]["action_results"][0]["result"]["stdout"],
        "finished\n"
    );
    server.wait_gone("grace").await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_without_grace_aborts_the_command_and_the_session_is_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let stop = start_device_with(
        server.port,
        "nograce",
        tools("nograce", Arc::new(AllowAll), true),
        |c| c.shutdown_grace = Duration::ZERO,
    );
    server.wait_device("nograce").await;
    let sid = server
        .dispatch_plan("nograce", json!([shell("sleep 30", json!({}))]))
        .await;
    wait_running(&server, &sid).await;
    stop.cancel();
    let r = server.wait_done(&sid).await;
    assert_eq!(r["state"], "cancelled", "{r}");
    assert_eq!(r["reason"], "device_disconnected");
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_session_kills_the_running_command_and_its_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(0, dir.path()).await;
    let stop = start_device(
        server.port,
        "victim",
        tools("victim", Arc::new(AllowAll), true),
    );
    server.wait_device("victim").await;
    let marker = dir.path().join("written-after-cancel");
    let line = format!("sleep 1; echo done > '{}'", marker.display());
    let sid = server
        .dispatch_plan("victim", json!([shell(&line, json!({}))]))
        .await;
    wait_running(&server, &sid).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the command is running
    let status = server
        .http
        .delete(server.url(&format!("/api/sessions/{sid}")))
        .send()
        .await
        .expect("delete")
        .status();
    assert_eq!(status, 200);
    // Well past the moment the command would have written its file.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        !marker.exists(),
        "the cancelled session's command went on and wrote its file"
    );
    let r = server.wait_done(&sid).await;
    assert_eq!(r["state"], "cancelled", "{r}");
    stop.cancel();
    server.stop().await;
}

#[tokio::test]
async fn a_dispatch_burst_never_loses_an_echo_even_with_a_one_frame_outgoing_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server_with(0, dir.path(), |c| {
        c.accept_timeout = Duration::from_secs(5);
        c.max_active_sessions = 10_000;
    })
    .await;
    let stop = start_device_with(
        server.port,
        "burst",
        tools("burst", Arc::new(AllowAll), false),
        |c| {
            c.outgoing_queue = 1;
        },
    );
    server.wait_device("burst").await;
    let dispatches = (0..300).map(|i| {
        server.dispatch(
            json!({"target_id": "burst", "request": "ls", "task_name": format!("b{i}"),
                               "commands": [{"tool_name": "list_dir", "tool_type": "action",
                                             "parameters": {"path": "/"}}]}),
        )
    });
    let sids = futures_util::future::join_all(dispatches).await;
    let mut states = std::collections::BTreeMap::new();
    for sid in &sids {
        let r = server.wait_done(sid).await;
        *states
            .entry(format!("{} {}", r["state"], r["reason"]))
            .or_insert(0) += 1;
    }
    assert_eq!(
        states.get("\"completed\" null"),
        Some(&sids.len()),
        "every session completes: {states:?}"
    );
    stop.cancel();
    server.stop().await;
}
