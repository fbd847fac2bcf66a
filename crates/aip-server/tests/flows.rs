//! The flows of protocol.md §3 end to end: real server, real sockets.

use std::time::Duration;

use aip_testkit::*;
use serde_json::json;

#[tokio::test]
async fn device_registers_heartbeats_and_is_listed() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    d.send(json!({"type": "heartbeat", "status": "ok", "client_id": "dev1"}))
        .await;
    let ack = d.recv().await;
    assert_eq!(ack["type"], "heartbeat");
    assert_eq!(ack["status"], "ok");
    assert!(ack["session_id"].is_null());
    assert!(ack["response_id"].is_string());

    let (code, body) = app.get("/api/clients").await;
    assert_eq!(code, 200);
    assert_eq!(body["online_clients"], json!(["dev1"]));
    let c = &body["clients"][0];
    assert_eq!(c["type"], "device");
    assert_eq!(c["platform"], "linux");
    assert!(c["connected_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(c["last_seen"].is_string());
    assert!(c["target_id"].is_null());
}

fn plan_request(tools: &[&str]) -> String {
    json!({"steps": tools.iter().map(|t| json!({"actions": [{"tool_name": t, "tool_type": "action", "parameters": {}}]})).collect::<Vec<_>>()}).to_string()
}

#[tokio::test]
async fn device_initiated_plan_task_runs_to_task_end_and_result_is_retrievable() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    d.send(json!({
        "type": "task", "status": "continue", "client_id": "dev1",
        "task_name": "open_notepad", "request": "do it",
        "metadata": {"commands": [
            {"tool_name": "a", "tool_type": "action", "parameters": {"x": 1}},
            {"tool_name": "b", "tool_type": "data_collection"}
        ]}
    }))
    .await;
    let ack = d.recv().await;
    assert_eq!(ack["type"], "heartbeat");
    let sid = ack["session_id"]
        .as_str()
        .expect("ack carries session_id")
        .to_owned();

    for tool in ["a", "b"] {
        let cmd = d.recv().await;
        assert_eq!(cmd["type"], "command");
        assert_eq!(cmd["status"], "continue");
        assert_eq!(cmd["session_id"], sid.as_str());
        assert_eq!(cmd["task_name"], "open_notepad");
        assert_eq!(cmd["agent_name"], "LinuxAgent");
        assert_eq!(cmd["actions"][0]["tool_name"], tool);
        assert!(cmd["actions"][0]["call_id"].is_string());
        d.send(results_for(&cmd, "dev1")).await;
    }
    let end = d.recv().await;
    assert_eq!(end["type"], "task_end");
    assert_eq!(end["status"], "completed");
    assert_eq!(end["session_id"], sid.as_str());
    assert_eq!(end["result"]["rounds"].as_array().map(Vec::len), Some(2));

    let by_id = app.wait_done(&sid).await;
    assert_eq!(by_id["state"], "completed");
    assert_eq!(by_id["result"], end["result"]);
    assert_eq!(by_id["client_id"], "dev1");
    let by_name = app.wait_done("open_notepad").await;
    assert_eq!(by_name["session_id"], sid.as_str());
}

#[tokio::test]
async fn http_dispatch_with_echo_runs_exactly_one_session() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let (code, body) = app
        .dispatch(json!({"target_id": "dev1", "request": "list", "task_name": "job1", "commands": commands(&["get_info"])}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "dispatched");
    assert_eq!(body["task_name"], "job1");
    assert_eq!(body["client_id"], "dev1");
    let sid = body["session_id"].as_str().expect("session_id").to_owned();

    let (_, pending) = app.get(&format!("/api/task_result/{sid}")).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["state"], "created");

    let task = d.recv().await;
    assert_eq!(task["type"], "task");
    assert_eq!(task["user_request"], "list");
    assert_eq!(task["session_id"], sid.as_str());
    assert_eq!(task["agent_name"], "PlanAgent");

    // The reference device echoes with session_id null and the same task_name.
    d.send(json!({"type": "task", "status": "continue", "client_type": "device", "client_id": "dev1", "task_name": "job1", "request": "list", "session_id": null})).await;
    let ack = d.recv().await;
    assert_eq!(ack["type"], "heartbeat");
    assert_eq!(ack["session_id"], sid.as_str());
    let cmd = d.recv().await;
    assert_eq!(cmd["type"], "command");
    assert_eq!(cmd["session_id"], sid.as_str());
    let (_, live) = app.get(&format!("/api/task_result/{sid}")).await;
    assert_eq!(live["state"], "running", "{live}");
    assert_eq!(
        live["step"],
        json!({"round": 1, "tools": ["get_info"]}),
        "{live}"
    );
    assert!(
        pending.get("step").is_none(),
        "no step before a command went out"
    );
    d.send(results_for(&cmd, "dev1")).await;
    let end = d.recv().await;
    assert_eq!(end["status"], "completed");

    let done = app.wait_done("job1").await;
    assert_eq!(done["session_id"], sid.as_str());
    assert_eq!(done["state"], "completed");
    assert!(done["error"].is_null());
    assert!(done["finished_at"].is_string());
    assert!(done.get("step").is_none(), "{done}");
    let (_, list) = app.get("/api/sessions").await;
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test]
async fn natural_language_dispatch_echoed_by_device_fails_without_an_agent() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let (_, body) = app
        .dispatch(json!({"client_id": "dev1", "request": "Open Notepad"}))
        .await;
    let sid = body["session_id"].as_str().expect("sid").to_owned();
    let task = d.recv().await;
    assert!(task["agent_name"].is_null(), "{task}");
    d.send(json!({"type": "task", "status": "continue", "client_id": "dev1", "task_name": task["task_name"], "request": "Open Notepad"})).await;
    let ack = d.recv().await;
    assert_eq!(ack["session_id"], sid.as_str());
    let end = d.recv().await;
    assert_eq!(end["type"], "task_end");
    assert_eq!(end["status"], "failed");
    assert_eq!(
        end["error"],
        "No agent is configured to plan natural-language requests"
    );
    let done = app.wait_done(&sid).await;
    assert_eq!(done["state"], "failed");
    assert!(done["result"].is_null());
}

#[tokio::test]
async fn delegated_dispatch_completes_from_the_devices_own_task_end() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let (_, body) = app
        .dispatch(json!({"target_id": "dev1", "request": "back up /etc"}))
        .await;
    let sid = body["session_id"].as_str().expect("sid").to_owned();
    let task = d.recv().await;
    let rid = task["response_id"].clone();
    d.send(json!({
        "type": "command_results", "status": "continue", "client_id": "dev1",
        "session_id": sid, "prev_response_id": rid,
        "action_results": [{"status": "success", "result": {"stdout": "ok"}, "namespace": "shell"}]
    }))
    .await;
    d.send(json!({
        "type": "task_end", "status": "completed", "client_id": "dev1", "session_id": sid,
        "metadata": {"result": {"answer": "done"}}
    }))
    .await;
    let done = app.wait_done(&sid).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"]["result"], json!({"answer": "done"}));
    assert_eq!(done["result"]["rounds"][0]["response_id"], rid);
    assert_eq!(
        done["result"]["rounds"][0]["action_results"][0]["result"]["stdout"],
        "ok"
    );
    // The device ended it itself: no task_end back to it.
    d.expect_silence(Duration::from_millis(200)).await;
    // A later echo of the same task is refused, never a second session.
    d.send(json!({"type": "task", "status": "continue", "client_id": "dev1", "session_id": sid, "request": "back up /etc"})).await;
    let ack = d.recv().await;
    assert_eq!(
        ack["type"], "heartbeat",
        "an echo of a finished session is only acknowledged: {ack}"
    );
    let (_, list) = app.get("/api/sessions").await;
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn constellation_routed_plan_ends_on_both_sides_with_the_clients_session_id() {
    let app = spawn_app().await;
    let mut d = app.device("device_win_001").await;
    let mut k = app
        .constellation("galaxy_main@device_win_001", Some("device_win_001"))
        .await;
    k.send(json!({
        "type": "task", "status": "continue", "client_type": "constellation",
        "session_id": "galaxy_main@task_1", "task_name": "galaxy/galaxy_main/open_notepad",
        "client_id": "galaxy_main@device_win_001", "target_id": "device_win_001",
        "request": plan_request(&["open"]),
    }))
    .await;
    let ack = k.recv().await;
    assert_eq!(ack["session_id"], "galaxy_main@task_1");
    let cmd = d.recv().await;
    assert_eq!(
        cmd["type"], "command",
        "no task frame for a planned constellation task"
    );
    assert_eq!(cmd["task_name"], "galaxy_galaxy_main_open_notepad");
    d.send(results_for(&cmd, "device_win_001")).await;
    let end_k = k.recv().await;
    let end_d = d.recv().await;
    for end in [&end_k, &end_d] {
        assert_eq!(end["type"], "task_end");
        assert_eq!(end["status"], "completed");
        assert_eq!(end["session_id"], "galaxy_main@task_1");
    }
    assert_eq!(end_k["result"], end_d["result"]);
    let done = app.wait_done("galaxy_main@task_1").await;
    assert_eq!(done["state"], "completed");
}

#[tokio::test]
async fn constellation_natural_language_task_is_delegated_to_the_device() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "k1", "target_id": "dev1", "session_id": "k1@t1", "request": "tidy the disk"})).await;
    assert_eq!(k.recv().await["session_id"], "k1@t1");
    let task = d.recv().await;
    assert_eq!(task["type"], "task");
    assert_eq!(task["session_id"], "k1@t1");
    assert_eq!(task["user_request"], "tidy the disk");
    assert!(task["agent_name"].is_null());
    d.send(json!({"type": "command_results", "status": "continue", "client_id": "dev1", "session_id": "k1@t1", "prev_response_id": task["response_id"], "action_results": [{"status": "success", "result": 1}]})).await;
    d.send(json!({"type": "task_end", "status": "failed", "client_id": "dev1", "session_id": "k1@t1", "error": "disk busy"})).await;
    let end = k.recv().await;
    assert_eq!(end["type"], "task_end");
    assert_eq!(end["status"], "failed");
    assert_eq!(end["error"], "disk busy");
    assert_eq!(end["result"]["rounds"][0]["action_results"][0]["result"], 1);
    d.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn delegated_constellation_task_echoed_by_the_device_fails_on_both_sides() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "k1", "target_id": "dev1", "session_id": "k1@t2", "task_name": "tidy", "request": "tidy the disk"})).await;
    k.recv().await;
    let task = d.recv().await;
    d.send(json!({"type": "task", "status": "continue", "client_id": "dev1", "task_name": task["task_name"], "request": "tidy the disk"})).await;
    let ack = d.recv().await;
    assert_eq!(ack["session_id"], "k1@t2");
    let end_d = d.recv().await;
    let end_k = k.recv().await;
    for end in [end_d, end_k] {
        assert_eq!(end["status"], "failed");
        assert_eq!(
            end["error"],
            "No agent is configured to plan natural-language requests"
        );
    }
}

#[tokio::test]
async fn failing_command_stops_the_plan_with_the_tools_error() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let (_, body) = app.dispatch(json!({"target_id": "dev1", "request": "x", "commands": commands(&["click_input", "never"])})).await;
    let sid = body["session_id"].as_str().expect("sid").to_owned();
    let task = d.recv().await;
    d.send(json!({"type": "task", "status": "continue", "client_id": "dev1", "session_id": sid, "request": task["user_request"]})).await;
    d.recv().await; // ack
    let cmd = d.recv().await;
    d.send(json!({"type": "command_results", "status": "continue", "client_id": "dev1", "session_id": sid, "prev_response_id": cmd["response_id"],
        "action_results": [{"status": "failure", "error": "control not found", "call_id": cmd["actions"][0]["call_id"]}]})).await;
    let end = d.recv().await;
    assert_eq!(end["status"], "failed");
    assert_eq!(
        end["error"],
        "Command 'click_input' failed: control not found"
    );
    let done = app.wait_done(&sid).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["result"]["rounds"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn device_info_request_returns_the_registered_system_info() {
    let app = spawn_app().await;
    let _d = app
        .device_with(
            "device_win_001",
            json!({"platform": "windows", "system_info": {"hostname": "DESKTOP", "cpu_count": 8}}),
        )
        .await;
    let mut k = app
        .constellation("galaxy@device_win_001", Some("device_win_001"))
        .await;
    k.send(json!({"type": "device_info_request", "status": "ok", "client_type": "constellation", "client_id": "galaxy@device_win_001", "target_id": "device_win_001", "request_id": "req-1"})).await;
    let resp = k.recv().await;
    assert_eq!(resp["type"], "device_info_response");
    assert_eq!(resp["status"], "ok");
    assert_eq!(resp["response_id"], "req-1");
    assert_eq!(
        resp["result"],
        json!({"hostname": "DESKTOP", "cpu_count": 8})
    );

    let mut free = app.constellation("free", None).await;
    free.send(json!({"type": "device_info_request", "status": "ok", "client_type": "constellation", "target_id": "ghost", "request_id": "r2"})).await;
    let resp = free.recv().await;
    assert_eq!(
        resp["result"],
        json!({"error": "Device ghost not found or no system info available"})
    );
}

#[tokio::test]
async fn client_error_is_echoed_and_changes_nothing() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    d.send(json!({"type": "error", "status": "error", "client_id": "dev1", "error": "Failed to send task request: connection reset"})).await;
    let e = d.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"], "Failed to send task request: connection reset");
    d.send(json!({"type": "device_info_response", "status": "ok"}))
        .await;
    d.send(json!({"type": "heartbeat", "status": "ok"})).await;
    assert_eq!(
        d.recv().await["type"],
        "heartbeat",
        "device_info_response gets no reply"
    );
}

#[tokio::test]
async fn device_disconnect_fails_the_constellations_session() {
    let app = spawn_app().await;
    let d = app.device("dev1").await;
    let mut k = app.constellation("k1", Some("dev1")).await;
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "k1", "target_id": "dev1", "session_id": "k1@a", "request": plan_request(&["t"])})).await;
    k.recv().await;
    d.close().await;
    let end = k.recv().await;
    assert_eq!(end["type"], "task_end");
    assert_eq!(end["status"], "failed");
    assert_eq!(
        end["error"],
        "Task was cancelled because target device disconnected"
    );
    let done = app.wait_done("k1@a").await;
    assert_eq!(done["state"], "cancelled");
    assert_eq!(done["reason"], "device_disconnected");
    app.wait_client("dev1", false).await;
    // The scoped constellation stays; tasks to the gone device fail.
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "k1", "target_id": "dev1", "request": "x"})).await;
    assert_eq!(
        k.recv().await["error"],
        "Target device 'dev1' is not connected"
    );
}

#[tokio::test]
async fn constellation_disconnect_cancels_its_sessions_and_stops_the_device() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "k1", "target_id": "dev1", "session_id": "k1@b", "request": plan_request(&["t", "u"])})).await;
    k.recv().await;
    let cmd = d.recv().await;
    k.close().await;
    let done = app.wait_done("k1@b").await;
    assert_eq!(done["state"], "cancelled");
    assert_eq!(done["reason"], "requester_disconnected");
    assert_eq!(
        done["error"],
        "Task was cancelled due to client disconnection"
    );
    // The device is told to stop (issue 15, beyond protocol.md §5.3, which tells no one).
    let end = d.recv().await;
    assert_eq!(end["type"], "task_end", "{end}");
    assert_eq!(end["status"], "failed");
    assert_eq!(end["session_id"], "k1@b");
    assert_eq!(
        end["error"],
        "Task was cancelled due to client disconnection"
    );
    // Late results are dropped; the device hears nothing more.
    d.send(results_for(&cmd, "dev1")).await;
    d.expect_silence(Duration::from_millis(300)).await;
    d.send(json!({"type": "heartbeat", "status": "ok"})).await;
    assert_eq!(d.recv().await["type"], "heartbeat");
}

#[tokio::test]
async fn session_timeout_fails_the_session_on_both_sides() {
    let app = spawn_app_with(|c| c.session_timeout = Some(Duration::from_millis(300))).await;
    let mut d = app.device("dev1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "k1", "target_id": "dev1", "session_id": "slow", "request": plan_request(&["t"])})).await;
    k.recv().await;
    d.recv().await; // command, never answered
    let end = k.recv().await;
    assert_eq!(end["status"], "failed");
    assert_eq!(end["error"], "Session timed out after 0.3 s");
    let end_d = d.recv().await;
    assert_eq!(end_d["type"], "task_end");
    let done = app.wait_done("slow").await;
    assert_eq!(done["reason"], "timeout");
}

/// Dispatches a one-command plan to a new device `dev1` that never echoes it; returns the
/// session id and the `task_end` the device gets when the server gives up.
async fn unechoed_dispatch(app: &TestApp) -> (String, serde_json::Value) {
    let mut d = app.device("dev1").await;
    let (_, body) = app
        .dispatch(json!({"target_id": "dev1", "request": "x", "commands": commands(&["t"])}))
        .await;
    let sid = body["session_id"].as_str().expect("sid").to_owned();
    assert_eq!(d.recv().await["type"], "task"); // no echo
    let end = d.recv().await;
    assert_eq!(end["type"], "task_end");
    assert_eq!(end["session_id"], sid.as_str());
    (sid, end)
}

#[tokio::test]
async fn accept_timeout_fails_a_dispatch_nobody_accepts() {
    let app = spawn_app_with(|c| c.accept_timeout = Duration::from_millis(300)).await;
    let (sid, end) = unechoed_dispatch(&app).await;
    assert_eq!(end["error"], "Device did not accept the task within 0.3 s");
    let done = app.wait_done(&sid).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["reason"], "not_accepted");
}

#[tokio::test]
async fn unaccepted_dispatch_fails_at_the_session_timeout_when_it_is_shorter() {
    // A dispatch nobody echoes is parked without a task of its own; the shared timer
    // must still wake it at the earlier of its two timeouts.
    let app = spawn_app_with(|c| {
        c.session_timeout = Some(Duration::from_millis(300));
        c.accept_timeout = Duration::from_secs(30);
    })
    .await;
    let (sid, end) = unechoed_dispatch(&app).await;
    assert_eq!(end["error"], "Session timed out after 0.3 s");
    let done = app.wait_done(&sid).await;
    assert_eq!(done["reason"], "timeout");
}

#[tokio::test]
async fn parked_dispatches_run_on_a_late_echo_and_end_on_timeout_or_disconnect() {
    let app = spawn_app_with(|c| c.accept_timeout = Duration::from_millis(800)).await;
    let mut d = app.device("dev1").await;
    let mut e = app.device("dev2").await;
    let dispatch = |target: &'static str, name: &'static str| {
        let app = &app;
        async move {
            let (code, body) = app
                .dispatch(json!({"target_id": target, "request": "x", "task_name": name, "commands": commands(&["t"])}))
                .await;
            assert_eq!(code, 200, "{body}");
            body["session_id"].as_str().expect("sid").to_owned()
        }
    };
    let late = dispatch("dev1", "late").await;
    let never = dispatch("dev1", "never").await;
    let orphan = dispatch("dev2", "orphan").await;
    for _ in 0..2 {
        assert_eq!(d.recv().await["type"], "task");
    }
    assert_eq!(e.recv().await["type"], "task");

    // Echoed well after the dispatch, before its accept timeout: it runs normally.
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.send(json!({"type": "task", "status": "continue", "client_type": "device", "client_id": "dev1", "task_name": "late", "request": "x", "session_id": null})).await;
    assert_eq!(d.recv().await["type"], "heartbeat");
    let cmd = d.recv().await;
    assert_eq!(cmd["type"], "command");
    d.send(results_for(&cmd, "dev1")).await;
    let end = d.recv().await;
    assert_eq!(
        (end["session_id"].as_str(), end["status"].as_str()),
        (Some(late.as_str()), Some("completed"))
    );

    // Its executor goes away: cancelled at once, not at the accept timeout.
    e.close().await;
    let done = app.wait_done(&orphan).await;
    assert_eq!(done["reason"], "device_disconnected", "{done}");

    // Never echoed: failed by the shared timer.
    let end = d.recv().await;
    assert_eq!(end["session_id"], never.as_str());
    assert_eq!(end["error"], "Device did not accept the task within 0.8 s");
    let done = app.wait_done(&never).await;
    assert_eq!(done["reason"], "not_accepted", "{done}");
    assert_eq!(app.get("/api/health").await.1["active_sessions"], 0);
}

#[tokio::test]
async fn a_burst_of_unaccepted_dispatches_all_fail_at_their_accept_timeout() {
    // More than the timer wakes per slice, all due within a few milliseconds.
    let app = spawn_app_with(|c| c.accept_timeout = Duration::from_millis(500)).await;
    let mut d = app.device("dev1").await;
    let body = json!({"target_id": "dev1", "request": "x", "commands": commands(&["t"])});
    let answers =
        futures_util::future::join_all((0..300).map(|_| app.dispatch(body.clone()))).await;
    assert!(answers.iter().all(|(code, _)| *code == 200));
    let mut not_accepted = 0;
    while not_accepted < 300 {
        let msg = d.recv().await;
        if msg["type"] == "task_end" {
            assert_eq!(msg["error"], "Device did not accept the task within 0.5 s");
            not_accepted += 1;
        }
    }
    let last = answers[299].1["session_id"]
        .as_str()
        .expect("sid")
        .to_owned();
    assert_eq!(app.wait_done(&last).await["reason"], "not_accepted");
    assert_eq!(app.get("/api/health").await.1["active_sessions"], 0);
}

#[tokio::test]
async fn silent_client_is_closed_by_the_liveness_check() {
    let app = spawn_app_with(|c| {
        c.client_timeout = Duration::from_millis(400);
        c.ping_interval = Duration::from_secs(30);
    })
    .await;
    let mut d = app.device("dev1").await;
    // Not reading means not answering pings either: the server hears nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(d.expect_close().await, Some(1001));
    app.wait_client("dev1", false).await;
}

#[tokio::test]
async fn duplicate_client_id_is_refused_and_live_one_keeps_working() {
    let app = spawn_app().await;
    let mut first = app.device("dev1").await;
    // Keep the first connection answering pings while the probe runs.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(v) = first.next_text(Duration::from_secs(2)).await {
            seen.push(v);
        }
        first
    });
    let mut second = app.connect().await;
    second
        .send(json!({"type": "register", "status": "ok", "client_id": "dev1"}))
        .await;
    let err = second.recv().await;
    assert_eq!(
        err["error"],
        "client_id 'dev1' is already registered; duplicate registrations are not allowed"
    );
    assert_eq!(second.expect_close().await, Some(1008));
    let mut first = reader.await.expect("reader");
    first
        .send(json!({"type": "heartbeat", "status": "ok"}))
        .await;
    assert_eq!(first.recv().await["type"], "heartbeat");
}

#[tokio::test]
async fn duplicate_of_a_dead_connection_replaces_it() {
    let app = spawn_app_with(|c| c.duplicate_probe_timeout = Duration::from_millis(300)).await;
    let _silent = app.device("dev1").await; // never read again: it cannot answer the probe
    let mut second = app.connect().await;
    second
        .send(json!({"type": "register", "status": "ok", "client_id": "dev1"}))
        .await;
    let ok = second.recv().await;
    assert_eq!(ok["status"], "ok", "{ok}");
    second
        .send(json!({"type": "heartbeat", "status": "ok"}))
        .await;
    assert_eq!(second.recv().await["type"], "heartbeat");
    let (_, body) = app.get("/api/clients").await;
    assert_eq!(body["online_clients"], json!(["dev1"]));
}

#[tokio::test]
async fn sessions_api_lists_filters_and_cancels() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let (_, body) = app.dispatch(json!({"target_id": "dev1", "request": "x", "session_id": "s-cancel", "commands": commands(&["t"])})).await;
    assert_eq!(body["session_id"], "s-cancel");
    d.recv().await;
    let (code, list) = app.get("/api/sessions?state=created").await;
    assert_eq!(code, 200);
    assert_eq!(list["sessions"][0]["session_id"], "s-cancel");
    let (_, none) = app.get("/api/sessions?state=completed").await;
    assert_eq!(none["sessions"], json!([]));
    let (_, mine) = app.get("/api/sessions?client_id=dev1").await;
    assert_eq!(mine["sessions"].as_array().map(Vec::len), Some(1));
    let (code, _) = app.get("/api/sessions?state=bogus").await;
    assert_eq!(code, 400);

    let (code, cancelled) = app.delete("/api/sessions/s-cancel").await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let end = d.recv().await;
    assert_eq!(end["type"], "task_end");
    assert_eq!(end["status"], "failed");
    let (code, _) = app.delete("/api/sessions/s-cancel").await;
    assert_eq!(code, 409);
    let (code, body) = app.delete("/api/sessions/nope").await;
    assert_eq!(
        (code, body["detail"].as_str()),
        (404, Some("Task not found"))
    );
}

#[tokio::test]
async fn api_key_protects_http_and_websocket() {
    let app = spawn_app_with(|c| c.api_key = Some("s3cret".into())).await;
    let anon = reqwest::Client::new();
    let resp = anon.get(app.url("/api/clients")).send().await.expect("get");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        resp.json::<serde_json::Value>().await.expect("json")["detail"],
        "Invalid API key"
    );
    let resp = anon
        .get(app.url("/api/clients"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let health: serde_json::Value = anon
        .get(app.url("/api/health"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "healthy");
    assert!(
        health.get("online_clients").is_none(),
        "anonymous callers learn no names"
    );
    let (_, health) = app.get("/api/health").await;
    assert!(health["online_clients"].is_array());

    let bad = tokio_tungstenite::connect_async(format!("ws://{}/ws?token=wrong", app.addr)).await;
    match bad {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let _ok = app.device("dev1").await; // with ?token=
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let (code, body) = app.get("/nope").await;
    assert_eq!((code, body["detail"].as_str()), (404, Some("Not Found")));
    let (code, body) = app.get("/api/dispatch").await;
    assert_eq!(
        (code, body["detail"].as_str()),
        (405, Some("Method Not Allowed"))
    );
}

#[tokio::test]
async fn connection_limit_refuses_upgrades_with_503() {
    let app = spawn_app_with(|c| c.max_connections = 1).await;
    let _one = app.device("dev1").await;
    match tokio_tungstenite::connect_async(app.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
}

#[tokio::test]
async fn too_many_active_sessions_are_refused() {
    let app = spawn_app_with(|c| c.max_active_sessions = 1).await;
    let mut d = app.device("dev1").await;
    let (code, _) = app
        .dispatch(json!({"target_id": "dev1", "request": "x", "commands": commands(&["t"])}))
        .await;
    assert_eq!(code, 200);
    let (code, body) = app
        .dispatch(json!({"target_id": "dev1", "request": "x", "commands": commands(&["t"])}))
        .await;
    assert_eq!(
        (code, body["detail"].as_str()),
        (503, Some("Too many active sessions"))
    );
    d.recv().await;
    d.send(json!({"type": "task", "status": "continue", "request": "mine", "metadata": {"commands": commands(&["t"])}})).await;
    assert_eq!(d.recv().await["error"], "Too many active sessions");
}

#[tokio::test]
async fn graceful_shutdown_cancels_sessions_and_closes_with_1001() {
    let app = spawn_app().await;
    let mut d = app.device("dev1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(json!({"type": "task", "status": "continue", "client_type": "constellation", "client_id": "k1", "target_id": "dev1", "session_id": "k1@s", "request": plan_request(&["t"])})).await;
    k.recv().await;
    d.recv().await;
    let dir = app.stop().await.expect("the harness's data dir");
    let end = k.recv().await;
    assert_eq!(end["type"], "task_end");
    assert_eq!(end["error"], "Server shutting down");
    assert_eq!(k.expect_close().await, Some(1001));
    assert_eq!(d.recv().await["type"], "task_end");
    assert_eq!(d.expect_close().await, Some(1001));
    // The cancellation is durable.
    let restarted = spawn_on(
        aip_server::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        dir,
    )
    .await;
    let done = restarted.wait_done("k1@s").await;
    assert_eq!(done["state"], "cancelled");
    assert_eq!(done["reason"], "shutdown");
}
