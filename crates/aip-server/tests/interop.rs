//! Interop with the reference (UFO) device: what an unmodified UFO client sees and
//! sends, played by a raw WebSocket peer over a real socket.
//!   * the registration acknowledgement announces aip and its features (§3.1 step 4);
//!   * a device that advertised no tools gets a `list_tools` round before the model's
//!     first step, and the model is offered the schemas it listed (server.md §5.3);
//!   * a `success` result whose `result.success` is `false` fails the step (§5.2);
//!   * the default `agent_name` follows the device's registered platform.

mod common;

use aip_llm::scripted::{call, finish, Mock};
use common::*;
use serde_json::{json, Value};

/// Accepts a pushed `task` the way the reference device does: the echo.
async fn echo_task(d: &mut Ws, id: &str) -> Value {
    let task = d.recv().await;
    assert_eq!(task["type"], "task", "{task}");
    d.send(
        json!({"type": "task", "status": "continue", "client_type": "device",
                  "client_id": id, "task_name": task["task_name"], "request": task["user_request"],
                  "session_id": null}),
    )
    .await;
    let ack = d.recv().await;
    assert_eq!(ack["type"], "heartbeat", "{ack}");
    task
}

/// One `command_results` frame answering `cmd` with `results`.
fn reply(cmd: &Value, id: &str, results: Value) -> Value {
    json!({"type": "command_results", "status": "continue", "client_id": id,
           "session_id": cmd["session_id"], "prev_response_id": cmd["response_id"],
           "action_results": results})
}

#[tokio::test]
async fn registration_ack_announces_aip_and_delegation() {
    let app = spawn_app().await;
    let mut ws = app.connect().await;
    ws.send(
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "d1"}),
    )
    .await;
    let ack = ws.recv().await;
    assert_eq!(ack["type"], "heartbeat");
    assert_eq!(ack["status"], "ok");
    assert_eq!(ack["result"]["server"], "aip");
    assert_eq!(ack["result"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(ack["result"]["features"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "delegation")));
    // A heartbeat's own acknowledgement carries nothing of the kind.
    ws.send(json!({"type": "heartbeat", "status": "ok", "client_id": "d1"}))
        .await;
    assert!(ws.recv().await["result"].is_null());
}

/// The UFO Linux MCP server's `execute_command`, as its `list_tools` reports it.
fn ufo_linux_tools() -> Value {
    json!([{
        "tool_key": "action::execute_command", "tool_name": "execute_command",
        "title": null, "namespace": "BashExecutor", "tool_type": "action",
        "description": "Execute an allow-listed command on Linux and return stdout/stderr.",
        "input_schema": {"type": "object", "properties": {
            "command": {"type": "string"}, "api_key": {"type": "string"},
            "timeout": {"type": "integer", "default": 30}},
            "required": ["command", "api_key"]},
        "output_schema": null, "meta": null, "annotations": null
    }])
}

#[tokio::test]
async fn device_without_advertised_tools_is_asked_for_them_and_the_model_gets_its_schema() {
    let mock = Mock::start(vec![
        call(
            "call_1",
            "execute_command",
            json!({"command": "uname", "api_key": "k"}),
        ),
        finish("completed", "It is Linux."),
    ])
    .await
    .expect("mock");
    let config = mock.config();
    let app = spawn_app_with(|c| c.llm = Some(config)).await;
    // A UFO device: platform and system_info, no `metadata.tools`.
    let mut d = app.device("ufo").await;
    let (code, body) = app
        .dispatch(json!({"target_id": "ufo", "request": "Which OS is this?", "task_name": "os"}))
        .await;
    assert_eq!(code, 200, "{body}");
    let task = echo_task(&mut d, "ufo").await;
    assert_eq!(task["agent_name"], "LinuxAgent");

    // Round 1: list_tools, exactly as the reference's LinuxAgent sends it.
    let list = d.recv().await;
    assert_eq!(list["type"], "command", "{list}");
    assert_eq!(list["agent_name"], "LinuxAgent");
    let action = &list["actions"][0];
    assert_eq!(action["tool_name"], "list_tools");
    assert_eq!(action["tool_type"], "action");
    assert_eq!(action["parameters"], json!({"tool_type": "action"}));
    assert!(
        mock.seen().is_empty(),
        "the model is not asked before the tools are known"
    );
    d.send(reply(
        &list,
        "ufo",
        json!([{"status": "success", "result": ufo_linux_tools(), "namespace": "BashExecutor",
                "call_id": action["call_id"]}]),
    ))
    .await;

    // Round 2: the model's call, with the device's own argument names.
    let cmd = d.recv().await;
    assert_eq!(cmd["actions"][0]["tool_name"], "execute_command", "{cmd}");
    assert_eq!(cmd["actions"][0]["parameters"]["api_key"], "k");
    let offered = &mock.bodies()[0]["tools"];
    let exec = offered
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["function"]["name"] == "execute_command")
        })
        .expect("execute_command offered");
    assert_eq!(
        exec["function"]["parameters"]["required"],
        json!(["command", "api_key"]),
        "the schema the device listed, not the built-in one"
    );
    d.send(reply(
        &cmd,
        "ufo",
        json!([{"status": "success", "result": {"success": true, "exit_code": 0,
                "stdout": "Linux\n", "stderr": ""}, "call_id": cmd["actions"][0]["call_id"]}]),
    ))
    .await;
    let end = d.recv().await;
    assert_eq!(end["type"], "task_end", "{end}");
    assert_eq!(end["status"], "completed");
    let done = app.wait_done("os").await;
    assert_eq!(done["result"]["answer"], "It is Linux.");
    assert_eq!(done["result"]["rounds"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_device_that_cannot_list_tools_gets_the_default_shell_tool() {
    let mock = Mock::start(vec![finish("completed", "nothing to do")])
        .await
        .expect("mock");
    let config = mock.config();
    let app = spawn_app_with(|c| c.llm = Some(config)).await;
    let mut d = app.device("old").await;
    app.dispatch(json!({"target_id": "old", "request": "anything", "task_name": "x"}))
        .await;
    echo_task(&mut d, "old").await;
    let list = d.recv().await;
    d.send(reply(
        &list,
        "old",
        json!([{"status": "failure", "error": "Unknown tool 'list_tools'",
                "call_id": list["actions"][0]["call_id"]}]),
    ))
    .await;
    assert_eq!(d.recv().await["type"], "task_end");
    let tools = &mock.bodies()[0]["tools"];
    assert!(
        tools
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == "execute_command")),
        "{tools}"
    );
}

#[tokio::test]
async fn success_false_result_fails_the_step_and_stops_the_plan() {
    let app = spawn_app().await;
    let mut d = app.device("ufo").await;
    let shell = |c: &str| {
        json!({"tool_name": "execute_command", "tool_type": "action",
                                 "parameters": {"command": c, "api_key": "k"}})
    };
    let (code, body) = app
        .dispatch(
            json!({"target_id": "ufo", "request": "two", "task_name": "two",
                         "commands": [shell("ls /nope"), shell("echo never")]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    echo_task(&mut d, "ufo").await;
    let cmd = d.recv().await;
    // The UFO Linux MCP server: a non-zero exit is `status: success`, `success: false`.
    d.send(reply(
        &cmd,
        "ufo",
        json!([{"status": "success", "namespace": "BashExecutor",
                "result": {"success": false, "exit_code": 2, "stdout": "",
                           "stderr": "ls: cannot access '/nope': No such file or directory\n"},
                "call_id": cmd["actions"][0]["call_id"]}]),
    ))
    .await;
    let end = d.recv().await;
    assert_eq!(
        end["type"], "task_end",
        "the second command is never sent: {end}"
    );
    assert_eq!(end["status"], "failed");
    let done = app.wait_done("two").await;
    assert_eq!(done["state"], "failed");
    assert_eq!(
        done["error"],
        "Command 'execute_command' failed: exited with code 2: ls: cannot access '/nope': No such file or directory"
    );
    // The round is kept exactly as received.
    assert_eq!(
        done["result"]["rounds"][0]["action_results"][0]["status"],
        "success"
    );

    // A refusal without an exit code names the tool's error.
    let (_, _) = app
        .dispatch(
            json!({"target_id": "ufo", "request": "one", "task_name": "refused",
                         "commands": [shell("rm -rf /")]}),
        )
        .await;
    echo_task(&mut d, "ufo").await;
    let cmd = d.recv().await;
    d.send(reply(
        &cmd,
        "ufo",
        json!([{"status": "success", "result": {"success": false,
                "error": "Command blocked by security policy."},
                "call_id": cmd["actions"][0]["call_id"]}]),
    ))
    .await;
    assert_eq!(d.recv().await["status"], "failed");
    let done = app.wait_done("refused").await;
    assert_eq!(
        done["error"],
        "Command 'execute_command' failed: Command blocked by security policy."
    );
}

#[tokio::test]
async fn default_agent_name_follows_the_devices_registered_platform() {
    // Even when the server forces the platform its drivers see.
    let app = spawn_app_with(|c| c.platform = aip_server::PlatformMode::Windows).await;
    for (id, platform, agent) in [
        ("lin", json!("linux"), "LinuxAgent"),
        ("win", json!("windows"), "HostAgent"),
        ("mac", json!("macos"), "LinuxAgent"),
        ("droid", json!("android"), "MobileAgent"),
        // No platform the reference has an agent for: the effective platform's.
        ("odd", json!("plan9"), "HostAgent"),
        ("none", Value::Null, "HostAgent"),
    ] {
        let mut d = app.device_with(id, json!({"platform": platform})).await;
        let (code, body) = app
            .dispatch(json!({"target_id": id, "request": "p", "commands": commands(&["t"])}))
            .await;
        assert_eq!(code, 200, "{body}");
        echo_task(&mut d, id).await;
        let cmd = d.recv().await;
        assert_eq!(cmd["agent_name"], agent, "platform {platform}");
        d.send(results_for(&cmd, id)).await;
        assert_eq!(d.recv().await["type"], "task_end");
    }
}
