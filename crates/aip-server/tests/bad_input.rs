//! Bad input over WebSocket and HTTP (protocol.md §2.1, §3.3, §3.10, §4, §6.3;
//! http-api.md §3.3): each refusal carries the exact text the spec names, and nothing
//! else is disturbed (connections stay, no session appears, other sessions go on).

use std::time::Duration;

use aip_testkit::*;
use serde_json::{json, Value};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// A one-step explicit plan (the device receives a `command` frame for tool `t`).
const PLAN: &str = r#"{"actions":[{"tool_name":"t","tool_type":"action"}]}"#;

const HTTP_BAD_TASK_NAME: &str = "Invalid task_name: must be a non-empty string of characters [A-Za-z0-9._-], at most 128 long, and must not start with '.'";

/// A constellation `task` carrying the one-step plan.
fn plan_task(k: &str, d: &str, sid: &str) -> Value {
    json!({"type": "task", "status": "continue", "client_type": "constellation",
           "client_id": k, "target_id": d, "session_id": sid, "request": PLAN})
}

/// Sends `frame` as the first frame of a new connection; asserts the `error` text
/// (exact, or as prefix when `prefix`), the close with 1008, and that nobody registered.
async fn refused_registration(app: &TestApp, frame: String, text: &str, prefix: bool) {
    let mut ws = app.connect().await;
    ws.send_text(frame).await;
    if prefix {
        expect_error_prefix(&mut ws, text).await;
    } else {
        expect_error(&mut ws, text).await;
    }
    assert_eq!(ws.expect_close().await, Some(1008));
    assert_eq!(app.online().await, json!([]));
}

// ---------------------------------------------------------------------------
// §3.10 / §2.1: invalid messages after registration

#[tokio::test]
async fn malformed_json_after_registration_is_invalid_message_and_connection_stays() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    for bad in [
        "{not json",
        "",
        "[1,2,3]",
        "\"heartbeat\"",
        r#"{"type":"heartbeat","status":"ok""#,
    ] {
        d.send_text(bad.to_owned()).await;
        expect_error_prefix(&mut d, "Invalid message: ").await;
    }
    assert_alive(&mut d, "d1").await;
    assert_eq!(app.online().await, json!(["d1"]));
    app.assert_no_sessions().await;
}

#[tokio::test]
async fn wrong_field_types_after_registration_are_invalid_message_and_connection_stays() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let bad = [
        json!({"type": "heartbeat", "status": "ok", "client_id": 123}),
        json!({"type": "heartbeat"}),
        json!({"status": "ok", "client_id": "d1"}),
        json!({"type": "TASK", "status": "continue", "client_id": "d1", "request": "x"}),
        json!({"type": "bogus", "status": "ok", "client_id": "d1"}),
        json!({"type": "heartbeat", "status": "fine", "client_id": "d1"}),
        json!({"type": "task", "status": "continue", "client_id": "d1", "request": 5}),
        json!({"type": "task", "status": "continue", "client_id": "d1", "request": PLAN, "metadata": []}),
        json!({"type": "command_results", "status": "continue", "client_id": "d1", "session_id": "s", "action_results": [{"result": 1}]}),
        json!({"type": "heartbeat", "status": "ok", "client_id": "d1", "client_type": "robot"}),
    ];
    for frame in bad {
        d.send(frame.clone()).await;
        let text = expect_error_prefix(&mut d, "Invalid message: ").await;
        assert!(!text.is_empty(), "{frame}");
    }
    assert_alive(&mut d, "d1").await;
    app.assert_no_sessions().await;
}

// ---------------------------------------------------------------------------
// §3.3: registration failures close with 1008 after one error frame

#[tokio::test]
async fn malformed_first_frame_is_invalid_registration_and_closes_1008() {
    let app = spawn_app().await;
    refused_registration(
        &app,
        "{not json".into(),
        "Invalid registration message: ",
        true,
    )
    .await;
    let wrong_type =
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": 42});
    refused_registration(
        &app,
        wrong_type.to_string(),
        "Invalid registration message: ",
        true,
    )
    .await;
    let no_status = json!({"type": "register", "client_id": "d1"});
    refused_registration(
        &app,
        no_status.to_string(),
        "Invalid registration message: ",
        true,
    )
    .await;
    // The server still accepts a proper registration afterwards.
    let mut d = app.device("d1").await;
    assert_alive(&mut d, "d1").await;
}

#[tokio::test]
async fn heartbeat_as_first_frame_is_refused_and_closes_1008() {
    let app = spawn_app().await;
    let hb =
        json!({"type": "heartbeat", "status": "ok", "client_type": "device", "client_id": "d1"});
    refused_registration(
        &app,
        hb.to_string(),
        "First message must be a registration message",
        false,
    )
    .await;
    let task = json!({"type": "task", "status": "continue", "client_id": "d1", "request": PLAN});
    refused_registration(
        &app,
        task.to_string(),
        "First message must be a registration message",
        false,
    )
    .await;
    app.assert_no_sessions().await;
}

#[tokio::test]
async fn seed_style_register_frame_is_invalid_registration_and_closes_1008() {
    let app = spawn_app().await;
    let seed = json!({"message_type": "REGISTER", "client_id": "windows_agent_001",
                      "client_type": "device", "metadata": {"platform": "windows"}});
    refused_registration(
        &app,
        seed.to_string(),
        "Invalid registration message: ",
        true,
    )
    .await;
    let upper = json!({"type": "REGISTER", "status": "ok", "client_id": "windows_agent_001"});
    refused_registration(
        &app,
        upper.to_string(),
        "Invalid registration message: ",
        true,
    )
    .await;
}

#[tokio::test]
async fn register_without_or_with_empty_client_id_is_refused_and_closes_1008() {
    let app = spawn_app().await;
    let missing = json!({"type": "register", "status": "ok", "client_type": "device"});
    refused_registration(
        &app,
        missing.to_string(),
        "Client ID is required for WebSocket registration",
        false,
    )
    .await;
    let null =
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": null});
    refused_registration(
        &app,
        null.to_string(),
        "Client ID is required for WebSocket registration",
        false,
    )
    .await;
    let empty =
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": ""});
    refused_registration(
        &app,
        empty.to_string(),
        "Client ID is required for WebSocket registration",
        false,
    )
    .await;
}

#[tokio::test]
async fn register_with_overlong_or_control_char_client_id_is_invalid_client_id() {
    let app = spawn_app().await;
    let long = "a".repeat(300);
    let frame =
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": long});
    refused_registration(&app, frame.to_string(), "Invalid client_id", false).await;
    let ctrl = json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "bad\nid"});
    refused_registration(&app, ctrl.to_string(), "Invalid client_id", false).await;
    // 256 characters is still fine.
    let ok = "b".repeat(256);
    let mut d = app.device(&ok).await;
    assert_alive(&mut d, &ok).await;
}

#[tokio::test]
async fn silent_connection_gets_registration_timed_out_and_closes_1008() {
    let app = spawn_app_with(|c| c.registration_timeout = Duration::from_millis(300)).await;
    let mut other = app.device("d1").await;
    let mut ws = app.connect().await;
    expect_error(&mut ws, "Registration timed out").await;
    assert_eq!(ws.expect_close().await, Some(1008));
    // A registered client is not subject to the registration timeout.
    assert_alive(&mut other, "d1").await;
    assert_eq!(app.online().await, json!(["d1"]));
}

// ---------------------------------------------------------------------------
// §2.7, §4.1: second register, identity and role pinning

#[tokio::test]
async fn second_register_is_refused_and_connection_and_role_stay() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    d.send(json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "d1"}))
        .await;
    expect_error(&mut d, "Client is already registered").await;
    // Trying to upgrade the role by re-registering changes nothing either.
    d.send(json!({"type": "register", "status": "ok", "client_type": "constellation", "client_id": "d1"}))
        .await;
    expect_error(&mut d, "Client is already registered").await;
    assert_alive(&mut d, "d1").await;
    let (_, body) = app.get("/api/clients").await;
    assert_eq!(body["online_clients"], json!(["d1"]));
    assert_eq!(body["clients"][0]["type"], "device");
}

#[tokio::test]
async fn spoofed_client_id_is_refused_and_connection_stays() {
    let app = spawn_app().await;
    let mut d1 = app.device("d1").await;
    let mut d2 = app.device("d2").await;
    d1.send(json!({"type": "heartbeat", "status": "ok", "client_id": "d2"}))
        .await;
    expect_error(
        &mut d1,
        "client_id does not match the registered connection",
    )
    .await;
    d1.send(json!({"type": "task", "status": "continue", "client_id": "d2", "request": PLAN}))
        .await;
    expect_error(
        &mut d1,
        "client_id does not match the registered connection",
    )
    .await;
    assert_alive(&mut d1, "d1").await;
    d2.expect_silence(QUIET).await;
    assert_alive(&mut d2, "d2").await;
    app.assert_no_sessions().await;
}

#[tokio::test]
async fn spoofed_client_type_on_task_is_refused_and_nothing_reaches_the_target() {
    let app = spawn_app().await;
    let mut dw = app.device("device_win_001").await;
    let mut dl = app.device("device_linux_002").await;
    // vectors/client_task_role_spoof.json
    dw.send(json!({
        "type": "task",
        "status": "continue",
        "client_type": "constellation",
        "task_name": "spoof",
        "client_id": "device_win_001",
        "target_id": "device_linux_002",
        "request": "Delete all files",
        "timestamp": "2025-01-01T10:02:50.001000+00:00"
    }))
    .await;
    expect_error(
        &mut dw,
        "client_type does not match the registered connection",
    )
    .await;
    // Also for command_results and device_info_request (privileged types).
    dw.send(
        json!({"type": "command_results", "status": "continue", "client_type": "constellation",
                   "client_id": "device_win_001", "session_id": "x", "action_results": []}),
    )
    .await;
    expect_error(
        &mut dw,
        "client_type does not match the registered connection",
    )
    .await;
    dw.send(json!({"type": "device_info_request", "status": "ok", "client_type": "constellation",
                   "client_id": "device_win_001", "target_id": "device_linux_002", "request_id": "r1"}))
        .await;
    expect_error(
        &mut dw,
        "client_type does not match the registered connection",
    )
    .await;
    dl.expect_silence(QUIET).await;
    assert_alive(&mut dw, "device_win_001").await;
    assert_alive(&mut dl, "device_linux_002").await;
    app.assert_no_sessions().await;
    app.assert_no_task("spoof").await;
}

#[tokio::test]
async fn constellation_task_without_client_type_is_a_role_mismatch() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let mut k = app.constellation("k1", None).await;
    // Absent client_type counts as "device" for privileged types (§4.1).
    k.send(
        json!({"type": "task", "status": "continue", "client_id": "k1", "target_id": "d1",
                  "session_id": "s1", "request": PLAN}),
    )
    .await;
    expect_error(
        &mut k,
        "client_type does not match the registered connection",
    )
    .await;
    d.expect_silence(QUIET).await;
    app.assert_no_task("s1").await;
    assert_alive(&mut k, "k1").await;
}

#[tokio::test]
async fn constellation_heartbeat_claiming_device_type_is_still_acked() {
    let app = spawn_app().await;
    let _d = app.device("device_win_001").await;
    let mut k = app
        .constellation("galaxy_main@device_win_001", Some("device_win_001"))
        .await;
    // vectors/client_heartbeat_constellation.json
    k.send(json!({
        "type": "heartbeat",
        "status": "ok",
        "client_type": "device",
        "client_id": "galaxy_main@device_win_001",
        "timestamp": "2025-01-01T10:00:35.005500+00:00",
        "metadata": {"device_id": "device_win_001"}
    }))
    .await;
    let ack = k.recv().await;
    assert_eq!(ack["type"], "heartbeat", "{ack}");
    assert_eq!(ack["status"], "ok", "{ack}");
    assert!(ack["session_id"].is_null(), "{ack}");
    // The registered role is unchanged: it may still send constellation tasks.
    k.send(plan_task(
        "galaxy_main@device_win_001",
        "device_win_001",
        "s1",
    ))
    .await;
    expect_ack(&mut k, "s1").await;
}

// ---------------------------------------------------------------------------
// §4.3: task targeting

#[tokio::test]
async fn device_task_targeting_another_device_is_refused_and_creates_no_session() {
    let app = spawn_app().await;
    let mut d1 = app.device("d1").await;
    let mut d2 = app.device("d2").await;
    d1.send(
        json!({"type": "task", "status": "continue", "client_type": "device", "client_id": "d1",
                   "target_id": "d2", "session_id": "s1", "task_name": "cross", "request": PLAN}),
    )
    .await;
    expect_error(&mut d1, "Device clients may not target other devices").await;
    d2.expect_silence(QUIET).await;
    d1.expect_silence(Duration::from_millis(50)).await;
    app.assert_no_sessions().await;
    app.assert_no_task("s1").await;
    assert_alive(&mut d1, "d1").await;
    assert_alive(&mut d2, "d2").await;
}

#[tokio::test]
async fn constellation_task_refusals_have_exact_texts_and_create_nothing() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let mut k = app.constellation("k1", None).await;
    let _k2 = app.constellation("k2", None).await;
    let base = |extra: Value| {
        let mut t = json!({"type": "task", "status": "continue", "client_type": "constellation",
                           "client_id": "k1", "request": PLAN});
        for (key, v) in extra.as_object().unwrap() {
            t[key] = v.clone();
        }
        t
    };
    let cases = [
        (
            base(json!({"session_id": "s1"})),
            "Constellation task requests require target_id".to_owned(),
        ),
        (
            base(json!({"session_id": "s1", "target_id": null})),
            "Constellation task requests require target_id".to_owned(),
        ),
        (
            base(json!({"session_id": "s1", "target_id": "x"})),
            "Target device 'x' is not connected".to_owned(),
        ),
        (
            base(json!({"session_id": "s1", "target_id": "k2"})),
            "Constellation tasks may only target device clients".to_owned(),
        ),
        (
            base(json!({"session_id": "s1", "target_id": "k1"})),
            "Constellation tasks may only target device clients".to_owned(),
        ),
        (
            base(json!({"session_id": "s1", "target_id": "d1", "request": ""})),
            "Task request must include a non-empty request".to_owned(),
        ),
        (
            base(json!({"session_id": "s1", "target_id": "d1", "request": null})),
            "Task request must include a non-empty request".to_owned(),
        ),
        (
            base(json!({"target_id": "d1", "session_id": "s".repeat(300)})),
            "Invalid session_id".to_owned(),
        ),
        // Order (§3.7 step 2): targeting is checked before the request.
        (
            base(json!({"session_id": "s1", "request": ""})),
            "Constellation task requests require target_id".to_owned(),
        ),
        (
            base(json!({"session_id": "s1", "target_id": "x", "request": ""})),
            "Target device 'x' is not connected".to_owned(),
        ),
    ];
    for (frame, text) in cases {
        k.send(frame).await;
        expect_error(&mut k, &text).await;
    }
    d.expect_silence(QUIET).await;
    app.assert_no_sessions().await;
    assert_alive(&mut k, "k1").await;
    assert_alive(&mut d, "d1").await;
    // A correct task still works afterwards.
    k.send(plan_task("k1", "d1", "s1")).await;
    expect_ack(&mut k, "s1").await;
    let cmd = expect_command(&mut d, "s1").await;
    d.send(results_for(&cmd, "d1")).await;
    expect_task_end(&mut k, "s1", "completed").await;
}

// ---------------------------------------------------------------------------
// §4.4: command_results acceptance

#[tokio::test]
async fn command_results_for_unknown_session_are_dropped_silently_and_create_nothing() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    d.send(
        json!({"type": "command_results", "status": "continue", "client_type": "device",
                  "client_id": "d1", "session_id": "nope", "prev_response_id": "r",
                  "action_results": [{"status": "success", "result": 1}]}),
    )
    .await;
    d.expect_silence(QUIET).await;
    // Without any session_id at all.
    d.send(
        json!({"type": "command_results", "status": "continue", "client_id": "d1",
                  "action_results": null}),
    )
    .await;
    d.expect_silence(QUIET).await;
    app.assert_no_task("nope").await;
    app.assert_no_sessions().await;
    assert_alive(&mut d, "d1").await;
}

#[tokio::test]
async fn command_results_from_non_executor_are_dropped_and_executor_session_completes() {
    let app = spawn_app().await;
    let mut d1 = app.device("d1").await;
    let mut d2 = app.device("d2").await;
    let mut k = app.constellation("k1", None).await;
    k.send(plan_task("k1", "d1", "s1")).await;
    expect_ack(&mut k, "s1").await;
    let cmd = expect_command(&mut d1, "s1").await;

    // d2 answers d1's command, with the right ids but a forged outcome.
    let mut forged = results_for(&cmd, "d2");
    forged["action_results"][0]["status"] = json!("failure");
    forged["action_results"][0]["result"] = json!("forged");
    d2.send(forged).await;
    d2.expect_silence(QUIET).await;
    k.expect_silence(Duration::from_millis(50)).await;
    assert_eq!(app.session_count().await, 1);
    let (_, pending) = app.get("/api/task_result/s1").await;
    assert_eq!(pending["status"], "pending", "{pending}");

    d1.send(results_for(&cmd, "d1")).await;
    let end = expect_task_end(&mut k, "s1", "completed").await;
    assert_eq!(
        end["result"]["rounds"][0]["action_results"][0]["status"],
        "success"
    );
    expect_task_end(&mut d1, "s1", "completed").await;
    let done = app.wait_done("s1").await;
    assert_eq!(done["state"], "completed", "{done}");
    let results = &done["result"]["rounds"][0]["action_results"];
    assert_eq!(results[0]["status"], "success", "{done}");
    assert_eq!(results[0]["result"], json!({"tool": "t"}), "{done}");
    assert_eq!(done["result"]["rounds"].as_array().unwrap().len(), 1);
    d2.expect_silence(Duration::from_millis(50)).await;
    assert_alive(&mut d2, "d2").await;
}

// ---------------------------------------------------------------------------
// §3.10, §3.11, §4.4: client task_end

#[tokio::test]
async fn task_end_for_unknown_session_is_unsupported_and_connection_stays() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    d.send(
        json!({"type": "task_end", "status": "completed", "client_id": "d1", "session_id": "nope"}),
    )
    .await;
    expect_error(&mut d, "Unsupported message type: task_end").await;
    d.send(json!({"type": "task_end", "status": "failed", "client_id": "d1"}))
        .await;
    expect_error(&mut d, "Unsupported message type: task_end").await;
    assert_alive(&mut d, "d1").await;
    app.assert_no_task("nope").await;
    app.assert_no_sessions().await;
}

#[tokio::test]
async fn task_end_from_non_executor_is_unsupported_and_session_continues() {
    let app = spawn_app().await;
    let mut d1 = app.device("d1").await;
    let mut d2 = app.device("d2").await;
    let mut k = app.constellation("k1", None).await;
    k.send(plan_task("k1", "d1", "s1")).await;
    expect_ack(&mut k, "s1").await;
    let cmd = expect_command(&mut d1, "s1").await;

    d2.send(
        json!({"type": "task_end", "status": "failed", "client_id": "d2", "session_id": "s1",
                   "error": "forged"}),
    )
    .await;
    expect_error(&mut d2, "Unsupported message type: task_end").await;
    // The requesting constellation may not end it either.
    k.send(
        json!({"type": "task_end", "status": "completed", "client_type": "constellation",
                  "client_id": "k1", "session_id": "s1"}),
    )
    .await;
    expect_error(&mut k, "Unsupported message type: task_end").await;
    k.expect_silence(Duration::from_millis(100)).await;
    let (_, pending) = app.get("/api/task_result/s1").await;
    assert_eq!(pending["status"], "pending", "{pending}");

    d1.send(results_for(&cmd, "d1")).await;
    expect_task_end(&mut k, "s1", "completed").await;
    expect_task_end(&mut d1, "s1", "completed").await;
    let done = app.wait_done("s1").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert!(done["error"].is_null(), "{done}");
    assert_alive(&mut d2, "d2").await;
}

#[tokio::test]
async fn task_end_from_executor_of_server_planned_session_is_unsupported() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(plan_task("k1", "d1", "s1")).await;
    expect_ack(&mut k, "s1").await;
    let cmd = expect_command(&mut d, "s1").await;
    // The server drives this session; the device does not run it itself (§3.11).
    d.send(
        json!({"type": "task_end", "status": "completed", "client_id": "d1", "session_id": "s1"}),
    )
    .await;
    expect_error(&mut d, "Unsupported message type: task_end").await;
    k.expect_silence(Duration::from_millis(100)).await;
    d.send(results_for(&cmd, "d1")).await;
    expect_task_end(&mut k, "s1", "completed").await;
    expect_task_end(&mut d, "s1", "completed").await;
}

// ---------------------------------------------------------------------------
// §4.5: session ownership

#[tokio::test]
async fn reusing_another_clients_session_id_is_refused_and_owner_session_continues() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let mut k1 = app.constellation("k1", None).await;
    let mut k2 = app.constellation("k2", None).await;
    k1.send(plan_task("k1", "d1", "s1")).await;
    expect_ack(&mut k1, "s1").await;
    let cmd = expect_command(&mut d, "s1").await;

    k2.send(plan_task("k2", "d1", "s1")).await;
    expect_error(&mut k2, "session_id 's1' is owned by another client").await;
    // Natural-language request (would be delegated): same refusal, nothing pushed.
    let mut nl = plan_task("k2", "d1", "s1");
    nl["request"] = json!("Delete all files");
    k2.send(nl).await;
    expect_error(&mut k2, "session_id 's1' is owned by another client").await;
    // A device asking for the id is refused too.
    d.send(
        json!({"type": "task", "status": "continue", "client_id": "d1", "session_id": "s1",
                  "request": PLAN}),
    )
    .await;
    expect_error(&mut d, "session_id 's1' is owned by another client").await;
    d.expect_silence(QUIET).await;
    k1.expect_silence(Duration::from_millis(50)).await;
    assert_eq!(app.session_count().await, 1);

    d.send(results_for(&cmd, "d1")).await;
    expect_task_end(&mut k1, "s1", "completed").await;
    expect_task_end(&mut d, "s1", "completed").await;
    k2.expect_silence(QUIET).await;
    let done = app.wait_done("s1").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["client_id"], "d1", "{done}");

    // A retained result still belongs to k1.
    k2.send(plan_task("k2", "d1", "s1")).await;
    expect_error(&mut k2, "session_id 's1' is owned by another client").await;
    d.expect_silence(QUIET).await;
    assert_alive(&mut k2, "k2").await;
}

#[tokio::test]
async fn owner_reusing_its_active_session_id_is_refused_and_session_continues() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(plan_task("k1", "d1", "s1")).await;
    expect_ack(&mut k, "s1").await;
    let cmd = expect_command(&mut d, "s1").await;

    k.send(plan_task("k1", "d1", "s1")).await;
    expect_error(&mut k, "session_id 's1' is already active").await;
    d.expect_silence(QUIET).await;
    assert_eq!(app.session_count().await, 1);

    d.send(results_for(&cmd, "d1")).await;
    expect_task_end(&mut k, "s1", "completed").await;
    let done = app.wait_done("s1").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(
        done["result"]["rounds"].as_array().unwrap().len(),
        1,
        "{done}"
    );
}

// ---------------------------------------------------------------------------
// §4.6 / http-api.md §3.3: task_name sanitisation vs. rejection

#[tokio::test]
async fn websocket_task_name_with_slashes_is_sanitised() {
    let app = spawn_app().await;
    let mut d = app.device("device_win_001").await;
    let mut k = app.constellation("galaxy_main@device_win_001", None).await;
    let mut task = plan_task(
        "galaxy_main@device_win_001",
        "device_win_001",
        "galaxy_main@task_1",
    );
    task["task_name"] = json!("galaxy/galaxy_main/open_notepad");
    k.send(task).await;
    expect_ack(&mut k, "galaxy_main@task_1").await;
    let cmd = expect_command(&mut d, "galaxy_main@task_1").await;
    assert_eq!(cmd["task_name"], "galaxy_galaxy_main_open_notepad", "{cmd}");
    d.send(results_for(&cmd, "device_win_001")).await;
    let end = expect_task_end(&mut k, "galaxy_main@task_1", "completed").await;
    assert_eq!(end["task_name"], "galaxy_galaxy_main_open_notepad", "{end}");
    let done = app.wait_done("galaxy_main@task_1").await;
    assert_eq!(
        done["task_name"], "galaxy_galaxy_main_open_notepad",
        "{done}"
    );
    let (code, by_name) = app
        .get("/api/task_result/galaxy_galaxy_main_open_notepad")
        .await;
    assert_eq!(code, 200, "{by_name}");
    assert_eq!(by_name["session_id"], "galaxy_main@task_1", "{by_name}");
}

#[tokio::test]
async fn websocket_task_name_with_backslash_and_dots_is_sanitised() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    for (given, stored) in [
        ("../escape", Some("__escape")),
        ("C:\\escape", Some("C__escape")),
        ("a..b", Some("a_b")),
        ("..", None),
    ] {
        d.send(
            json!({"type": "task", "status": "continue", "client_type": "device",
                      "client_id": "d1", "task_name": given, "request": PLAN}),
        )
        .await;
        let ack = d.recv().await;
        assert_eq!(ack["type"], "heartbeat", "{ack}");
        let sid = ack["session_id"]
            .as_str()
            .expect("ack session_id")
            .to_owned();
        let cmd = expect_command(&mut d, &sid).await;
        d.send(results_for(&cmd, "d1")).await;
        let end = expect_task_end(&mut d, &sid, "completed").await;
        let name = end["task_name"].as_str().expect("task_name").to_owned();
        match stored {
            Some(s) => assert_eq!(name, s, "{given}: {end}"),
            None => {
                assert_eq!(name.len(), 36, "{given}: {end}");
                assert_eq!(name.matches('-').count(), 4, "{given}: {end}");
            }
        }
        let done = app.wait_done(&sid).await;
        assert_eq!(done["task_name"], name.as_str(), "{done}");
    }
}

#[tokio::test]
async fn http_task_name_with_slash_backslash_or_dots_is_refused_400() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    for name in [
        json!("galaxy/galaxy_main/open_notepad"),
        json!("../escape"),
        json!("C:\\escape"),
        json!(".."),
        json!(".hidden"),
        json!(""),
        json!("x".repeat(129)),
        json!(5),
    ] {
        let (code, body) = app
            .dispatch(json!({"target_id": "d1", "request": "x", "task_name": name}))
            .await;
        assert_eq!(code, 400, "{name}: {body}");
        assert_eq!(body, json!({"detail": HTTP_BAD_TASK_NAME}), "{name}");
    }
    d.expect_silence(QUIET).await;
    app.assert_no_sessions().await;
    assert_alive(&mut d, "d1").await;
}

// ---------------------------------------------------------------------------
// http-api.md §3.3: dispatch validation

#[tokio::test]
async fn http_dispatch_refusals_have_exact_status_and_detail() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let _k = app.constellation("k1", None).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"target_id": "ghost", "request": "x"}),
            404,
            "Client not online",
        ),
        (
            json!({"client_id": "ghost", "request": "x"}),
            404,
            "Client not online",
        ),
        (
            json!({"target_id": "d1", "request": ""}),
            400,
            "Empty task content",
        ),
        (json!({"target_id": "d1"}), 400, "Empty task content"),
        (
            json!({"target_id": "d1", "request": 5}),
            400,
            "Empty task content",
        ),
        (json!({"request": "x"}), 400, "Empty client ID"),
        (
            json!({"request": "x", "target_id": "", "client_id": ""}),
            400,
            "Empty client ID",
        ),
        (
            json!({"request": "x", "target_id": "d1", "client_id": "d2"}),
            400,
            "target_id and client_id refer to different clients",
        ),
        // An id that is not a string does not agree with the other (found by schemathesis).
        (
            json!({"request": "x", "target_id": "d1", "client_id": {}}),
            400,
            "target_id and client_id refer to different clients",
        ),
        (
            json!({"request": "x", "target_id": 5, "client_id": "d1"}),
            400,
            "target_id and client_id refer to different clients",
        ),
        (
            json!({"request": "x", "target_id": 5}),
            400,
            "Empty client ID",
        ),
        (
            json!({"target_id": "k1", "request": "x"}),
            400,
            "Target is not a device client",
        ),
        (
            json!({"target_id": "d1", "request": "x", "session_id": "s".repeat(257)}),
            400,
            "Invalid session_id",
        ),
        (
            json!({"target_id": "d1", "request": "x", "session_id": ""}),
            400,
            "Invalid session_id",
        ),
        // Order: request before target, target before task_name, task_name before online.
        (
            json!({"target_id": "ghost", "request": ""}),
            400,
            "Empty task content",
        ),
        (
            json!({"target_id": "ghost", "request": "x", "task_name": "../e"}),
            400,
            HTTP_BAD_TASK_NAME,
        ),
    ];
    for (body, status, detail) in cases {
        let (code, resp) = app.dispatch(body.clone()).await;
        assert_eq!(code, status, "{body}: {resp}");
        assert_eq!(resp, json!({"detail": detail}), "{body}");
    }
    for raw in ["not json", "[1,2]", "\"x\"", ""] {
        let (code, resp) = app.post_raw("/api/dispatch", raw.to_owned()).await;
        assert_eq!(code, 422, "{raw}: {resp}");
        assert_eq!(
            resp,
            json!({"detail": "Request body must be a JSON object"}),
            "{raw}"
        );
    }
    d.expect_silence(QUIET).await;
    app.assert_no_sessions().await;
    assert_alive(&mut d, "d1").await;
}

#[tokio::test]
async fn http_dispatch_with_used_session_id_is_409_and_first_session_unaffected() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let (code, ok) = app
        .dispatch(
            json!({"target_id": "d1", "request": PLAN, "session_id": "h1", "task_name": "first"}),
        )
        .await;
    assert_eq!(code, 200, "{ok}");
    let task = d.recv().await;
    assert_eq!(task["type"], "task", "{task}");
    assert_eq!(task["session_id"], "h1", "{task}");

    let (code, resp) = app
        .dispatch(json!({"target_id": "d1", "request": "other", "session_id": "h1", "task_name": "second"}))
        .await;
    assert_eq!(code, 409, "{resp}");
    assert_eq!(resp, json!({"detail": "session_id already in use"}));
    // A session id taken over WebSocket is "in use" as well.
    let mut k = app.constellation("k1", None).await;
    k.send(plan_task("k1", "d1", "w1")).await;
    expect_ack(&mut k, "w1").await;
    let (code, resp) = app
        .dispatch(json!({"target_id": "d1", "request": "x", "session_id": "w1"}))
        .await;
    assert_eq!(code, 409, "{resp}");
    assert_eq!(resp, json!({"detail": "session_id already in use"}));
    app.assert_no_task("second").await;

    // The first session runs normally: echo, command, results.
    d.send(
        json!({"type": "task", "status": "continue", "client_type": "device", "client_id": "d1",
                  "task_name": "first", "request": PLAN}),
    )
    .await;
    // Frames for h1 (ack, command) and w1 (command) may interleave.
    let mut h1_cmd = None;
    let mut acked = false;
    while h1_cmd.is_none() || !acked {
        let f = d.recv().await;
        if f["type"] == "heartbeat" && f["session_id"] == "h1" {
            acked = true;
        } else if f["type"] == "command" && f["session_id"] == "h1" {
            assert!(acked, "command before ack: {f}");
            h1_cmd = Some(f);
        } else if f["type"] == "command" && f["session_id"] == "w1" {
            d.send(results_for(&f, "d1")).await;
        }
    }
    d.send(results_for(&h1_cmd.unwrap(), "d1")).await;
    let done = app.wait_done("h1").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["task_name"], "first", "{done}");
}

// ---------------------------------------------------------------------------
// §1.2: size limit; §6.3: binary frames

#[tokio::test]
async fn oversized_frame_closes_1009_and_other_clients_are_unaffected() {
    let app = spawn_app_with(|c| c.max_message_size = 1024).await;
    let mut big = app.device("d1").await;
    let mut other = app.device("d2").await;
    let payload = json!({"type": "heartbeat", "status": "ok", "client_id": "d1",
                         "metadata": {"pad": "x".repeat(4096)}});
    big.send(payload).await;
    assert_eq!(big.expect_close().await, Some(1009));
    app.wait_client("d1", false).await;
    assert_alive(&mut other, "d2").await;
    assert_eq!(app.online().await, json!(["d2"]));
    // The id is free again.
    let mut again = app.device("d1").await;
    assert_alive(&mut again, "d1").await;
}

#[tokio::test]
async fn binary_frame_after_registration_is_refused_and_connection_stays() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    d.send_binary(vec![0, 1, 2, 3]).await;
    expect_error(&mut d, "Binary transfer is not supported by this server").await;
    d.send_binary(vec![9; 16]).await;
    expect_error(&mut d, "Binary transfer is not supported by this server").await;
    assert_alive(&mut d, "d1").await;
    assert_eq!(app.online().await, json!(["d1"]));
}

#[tokio::test]
async fn announced_binary_payload_gets_exactly_one_error() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    // vectors/binary_metadata.json, size matching the payload below.
    d.send(json!({
        "type": "binary_data",
        "filename": "screenshot.png",
        "mime_type": "image/png",
        "size": 8,
        "checksum": "9e107d9d372bb6826bd81d3542a419d6",
        "session_id": "6f1c2e0a-3b7d-4c55-9a9e-1d2f3a4b5c6d",
        "description": "Desktop screenshot",
        "timestamp": "2025-01-01T10:02:15.300000+00:00"
    }))
    .await;
    d.send_binary(vec![7; 8]).await;
    expect_error(&mut d, "Binary transfer is not supported by this server").await;
    d.expect_silence(QUIET).await;
    assert_alive(&mut d, "d1").await;
    app.assert_no_sessions().await;
}

// ---------------------------------------------------------------------------
// §5.2: abrupt device disconnect

#[tokio::test]
async fn abrupt_device_disconnect_cancels_its_session_and_tells_the_constellation() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    let mut k = app.constellation("k1", None).await;
    let mut task = plan_task("k1", "d1", "s1");
    task["task_name"] = json!("galaxy/open");
    k.send(task).await;
    expect_ack(&mut k, "s1").await;
    expect_command(&mut d, "s1").await;
    drop(d); // TCP close without a WebSocket close handshake.

    let end = expect_task_end(&mut k, "s1", "failed").await;
    assert_eq!(
        end["error"], "Task was cancelled because target device disconnected",
        "{end}"
    );
    assert_eq!(end["task_name"], "galaxy_open", "{end}");
    let done = app.wait_done("s1").await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["reason"], "device_disconnected", "{done}");
    assert_eq!(
        done["error"], "Task was cancelled because target device disconnected",
        "{done}"
    );
    app.wait_client("d1", false).await;
    assert_alive(&mut k, "k1").await;
    k.send(plan_task("k1", "d1", "s2")).await;
    expect_error(&mut k, "Target device 'd1' is not connected").await;
    k.expect_silence(Duration::from_millis(100)).await;
}

// ---------------------------------------------------------------------------
// server.md §4: command timeout

#[tokio::test]
async fn unanswered_command_times_out_and_fails_the_session() {
    let app = spawn_app_with(|c| c.command_timeout = Duration::from_millis(300)).await;
    let mut d = app.device("d1").await;
    let mut k = app.constellation("k1", None).await;
    k.send(plan_task("k1", "d1", "s1")).await;
    expect_ack(&mut k, "s1").await;
    let cmd = expect_command(&mut d, "s1").await;

    let end = expect_task_end(&mut k, "s1", "failed").await;
    assert_eq!(
        end["error"], "Command 't' failed: Timed out waiting for command results after 0.3 s",
        "{end}"
    );
    let dend = expect_task_end(&mut d, "s1", "failed").await;
    assert_eq!(dend["error"], end["error"], "{dend}");
    let done = app.wait_done("s1").await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        done["result"]["rounds"][0]["action_results"][0]["status"], "failure",
        "{done}"
    );
    assert_eq!(
        done["result"]["rounds"][0]["action_results"][0]["call_id"], cmd["actions"][0]["call_id"],
        "{done}"
    );

    // Late results are dropped silently and change nothing (§4.4 rule 3).
    d.send(results_for(&cmd, "d1")).await;
    d.expect_silence(QUIET).await;
    let (_, after) = app.get("/api/task_result/s1").await;
    assert_eq!(after["state"], "failed", "{after}");
    assert_eq!(after["result"], done["result"], "{after}");
    assert_alive(&mut d, "d1").await;
    assert_alive(&mut k, "k1").await;
}

// ---------------------------------------------------------------------------
// §3.8: device info authorisation

#[tokio::test]
async fn device_info_request_refusals_have_exact_texts() {
    let app = spawn_app().await;
    let mut d1 = app.device("d1").await;
    let _d2 = app.device("d2").await;
    let mut scoped = app.constellation("k1@d1", Some("d1")).await;
    let mut free = app.constellation("k2", None).await;

    d1.send(
        json!({"type": "device_info_request", "status": "ok", "client_type": "device",
                   "client_id": "d1", "target_id": "d2", "request_id": "r1"}),
    )
    .await;
    expect_error(
        &mut d1,
        "DEVICE_INFO_REQUEST is permitted only for constellation clients",
    )
    .await;

    free.send(
        json!({"type": "device_info_request", "status": "ok", "client_type": "constellation",
                     "client_id": "k2", "request_id": "r2"}),
    )
    .await;
    expect_error(&mut free, "DEVICE_INFO_REQUEST requires target_id").await;

    scoped
        .send(
            json!({"type": "device_info_request", "status": "ok", "client_type": "constellation",
                     "client_id": "k1@d1", "target_id": "d2", "request_id": "r3"}),
        )
        .await;
    expect_error(
        &mut scoped,
        "Not authorized to request device info for this device",
    )
    .await;

    // Everyone still works; the scoped constellation may ask about its own device.
    assert_alive(&mut d1, "d1").await;
    assert_alive(&mut free, "k2").await;
    scoped
        .send(
            json!({"type": "device_info_request", "status": "ok", "client_type": "constellation",
                     "client_id": "k1@d1", "target_id": "d1", "request_id": "r4"}),
        )
        .await;
    let info = scoped.recv().await;
    assert_eq!(info["type"], "device_info_response", "{info}");
    assert_eq!(info["response_id"], "r4", "{info}");
    assert_eq!(info["result"]["hostname"], "d1", "{info}");
}

// ---------------------------------------------------------------------------
// §3.9: client error echo

#[tokio::test]
async fn client_error_with_empty_text_is_echoed_as_unknown_error() {
    let app = spawn_app().await;
    let mut d = app.device("d1").await;
    d.send(json!({"type": "error", "status": "error", "client_id": "d1", "error": ""}))
        .await;
    expect_error(&mut d, "Unknown error").await;
    d.send(json!({"type": "error", "status": "error", "client_id": "d1"}))
        .await;
    expect_error(&mut d, "Unknown error").await;
    d.send(
        json!({"type": "error", "status": "error", "client_id": "d1",
                  "error": "Failed to send task request: connection reset"}),
    )
    .await;
    expect_error(&mut d, "Failed to send task request: connection reset").await;
    assert_alive(&mut d, "d1").await;
    app.assert_no_sessions().await;
}
