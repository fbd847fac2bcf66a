//! Fleet jobs (issue 19) over real sockets: selectors on `/api/clients` and `/api/jobs`,
//! the batch rollout's order and concurrency, `max_failures`, devices offline at their
//! turn, the job timeout, cancellation, and a graceful restart. Devices are WebSocket
//! peers that echo each pushed task and answer its command with an exit code.

use std::time::Duration;

use aip_testkit::*;
use serde_json::{json, Value};

/// A command list: one `execute_command` of `uptime`.
fn uptime() -> Value {
    json!([{"tool_name": "execute_command", "tool_type": "action",
            "parameters": {"command": "uptime"}}])
}

/// Devices registered with a platform and a `role` tag.
async fn fleet(app: &TestApp, devices: &[(&str, &str, &str)]) -> Vec<Ws> {
    let mut all = Vec::new();
    for (id, platform, role) in devices {
        let meta = json!({"platform": platform, "tags": {"role": role, "rack": "4"}});
        all.push(app.device_with(id, meta).await);
    }
    all
}

/// Takes the task pushed to device `id`, echoes it and reads the acknowledgement;
/// returns the session id.
async fn take_task(ws: &mut Ws, id: &str) -> String {
    let task = ws.recv().await;
    assert_eq!(task["type"], "task", "{task}");
    let sid = task["session_id"].as_str().expect("session_id").to_owned();
    ws.send(
        json!({"type": "task", "status": "continue", "client_id": id,
                   "session_id": sid, "request": task["user_request"]}),
    )
    .await;
    expect_ack(ws, &sid).await;
    sid
}

/// Answers session `sid`'s command as a shell command that exited with `exit`, and reads
/// the session's end.
async fn finish(ws: &mut Ws, id: &str, sid: &str, exit: i64) {
    let cmd = expect_command(ws, sid).await;
    let result = json!({"success": exit == 0, "exit_code": exit,
        "stdout": format!("\nhello from {id}\nsecond line"), "stderr": ""});
    ws.send(
        json!({"type": "command_results", "status": "continue", "client_id": id,
        "session_id": sid, "prev_response_id": cmd["response_id"],
        "action_results": [{"status": "success", "result": result, "namespace": "aip",
                            "call_id": cmd["actions"][0]["call_id"]}]}),
    )
    .await;
    let status = if exit == 0 { "completed" } else { "failed" };
    expect_task_end(ws, sid, status).await;
}

/// Creates a job; returns its id.
async fn create(app: &TestApp, body: Value) -> String {
    let (code, job) = app.post_raw("/api/jobs", body.to_string()).await;
    assert_eq!(code, 200, "{job}");
    assert!(job.get("members").is_none(), "{job}");
    job["job_id"].as_str().expect("job_id").to_owned()
}

/// Polls the job until it is no longer running.
async fn wait_job(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, job) = app.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(code, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(client_id, state, reason)` of every member, in rollout order.
fn members(job: &Value) -> Vec<(String, String, Value)> {
    job["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            (s("client_id"), s("state"), m["reason"].clone())
        })
        .collect()
}

fn ids(clients: &Value) -> Vec<&str> {
    clients["online_clients"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

// ---------------------------------------------------------------------------
// Selectors

#[tokio::test]
async fn selectors_pick_devices_by_ids_platform_and_tags_and_an_empty_match_is_a_404_naming_it() {
    let app = spawn_app().await;
    let _devices = fleet(
        &app,
        &[
            ("web-2", "linux", "web"),
            ("web-1", "linux", "web"),
            ("db-1", "linux", "db"),
            ("web-win", "windows", "web"),
        ],
    )
    .await;
    let _k = app.constellation("k1", None).await;
    for (query, expected) in [
        ("tag=role=web&platform=linux", vec!["web-2", "web-1"]),
        ("client_id=web-*", vec!["web-2", "web-1", "web-win"]),
        ("client_id=db-1,web-win", vec!["db-1", "web-win"]),
        ("tag=role=db,web&platform=win*", vec!["web-win"]),
        ("tag=role=w*&tag=rack=4&client_id=*-1", vec!["web-1"]),
    ] {
        let (code, body) = app.get(&format!("/api/clients?{query}")).await;
        assert_eq!(code, 200, "{query}: {body}");
        assert_eq!(ids(&body), expected, "{query}");
        assert_eq!(body["clients"][0]["tags"]["rack"], "4", "{body}");
    }
    // Without a selector, every client (the constellation too).
    assert_eq!(ids(&app.get("/api/clients").await.1).len(), 5);

    let (code, body) = app.get("/api/clients?tag=role=cache&platform=linux").await;
    assert_eq!(code, 404);
    assert_eq!(
        body["detail"],
        "No connected device matches the selector platform=linux tag=role=cache"
    );
    let (code, body) = app.get("/api/clients?tag=role").await;
    assert_eq!(code, 400);
    assert_eq!(
        body["detail"],
        "Invalid selector: tag 'role' is not key=value"
    );

    let job = json!({"selector": {"tags": {"role": "cache"}, "platform": "linux"},
                     "commands": uptime()});
    let (code, body) = app.post_raw("/api/jobs", job.to_string()).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        body["detail"],
        "No connected device matches the selector platform=linux tag=role=cache"
    );
    let (code, body) = app
        .post_raw(
            "/api/jobs",
            json!({"selector": {"role": "web"}, "request": "x"}).to_string(),
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(body["detail"], "Invalid selector: unknown field 'role'");
    app.assert_no_sessions().await;
}

// ---------------------------------------------------------------------------
// Rollout

#[tokio::test]
async fn a_batch_of_two_runs_two_devices_at_a_time_in_client_id_order() {
    let app = spawn_app().await;
    let ids = ["web-1", "web-2", "web-3", "web-4"];
    let mut d = fleet(&app, &ids.map(|i| (i, "linux", "web"))).await;
    let _other = fleet(&app, &[("db-1", "linux", "db")]).await;
    let job = create(
        &app,
        json!({"selector": {"tags": {"role": "web"}}, "commands": uptime(), "batch": 2,
               "task_name": "fleet-uptime"}),
    )
    .await;

    // The first two start; the others wait for a free place.
    let s1 = take_task(&mut d[0], "web-1").await;
    let s2 = take_task(&mut d[1], "web-2").await;
    d[2].expect_silence(Duration::from_millis(300)).await;
    d[3].expect_silence(Duration::from_millis(10)).await;
    let (_, live) = app.get(&format!("/api/jobs/{job}")).await;
    assert_eq!(live["state"], "running");
    assert_eq!(live["counts"]["running"], 2, "{live}");
    assert_eq!(live["counts"]["pending"], 2, "{live}");
    let (_, running) = app.get(&format!("/api/jobs/{job}?members=running")).await;
    assert_eq!(
        running["members"].as_array().map(Vec::len),
        Some(2),
        "{running}"
    );

    // Each end lets the next device in.
    finish(&mut d[0], "web-1", &s1, 0).await;
    let s3 = take_task(&mut d[2], "web-3").await;
    d[3].expect_silence(Duration::from_millis(200)).await;
    finish(&mut d[1], "web-2", &s2, 0).await;
    let s4 = take_task(&mut d[3], "web-4").await;
    finish(&mut d[2], "web-3", &s3, 0).await;
    finish(&mut d[3], "web-4", &s4, 0).await;

    let done = wait_job(&app, &job).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["reason"], Value::Null);
    assert_eq!(done["total"], 4);
    assert_eq!(done["counts"]["completed"], 4, "{done}");
    assert_eq!(done["batch"], 2);
    assert_eq!(done["selector"], json!({"tags": {"role": ["web"]}}));
    let order: Vec<_> = members(&done).into_iter().map(|m| m.0).collect();
    assert_eq!(order, ids);
    let first = &done["members"][0];
    assert_eq!(first["exit_code"], 0, "{first}");
    assert_eq!(first["output"], "hello from web-1", "{first}");
    assert_eq!(first["session_id"], s1.as_str());
    // Each member is an ordinary session, linked to the job.
    let (_, session) = app.get(&format!("/api/sessions/{s1}")).await;
    assert_eq!(session["job_id"], job.as_str(), "{session}");
    assert_eq!(session["task_name"], "fleet-uptime");
    assert_eq!(session["state"], "completed");
    let (_, list) = app.get("/api/jobs").await;
    assert_eq!(list["jobs"][0]["job_id"], job.as_str(), "{list}");
    assert!(list["jobs"][0].get("members").is_none());
}

#[tokio::test]
async fn a_percentage_batch_rounds_up_and_everything_else_starts_at_once_by_default() {
    let app = spawn_app().await;
    let ids = ["a", "b", "c"];
    let mut d = fleet(&app, &ids.map(|i| (i, "linux", "web"))).await;
    let _job = create(
        &app,
        json!({"selector": {"client_ids": ["a", "b", "c"]}, "request": "{\"actions\": [{\"tool_name\": \"t\", \"tool_type\": \"action\"}]}", "batch": "50%"}),
    )
    .await;
    let _sa = take_task(&mut d[0], "a").await;
    let _sb = take_task(&mut d[1], "b").await;
    d[2].expect_silence(Duration::from_millis(200)).await;

    let mut e = fleet(&app, &[("x-1", "linux", "x"), ("x-2", "linux", "x")]).await;
    let _all = create(
        &app,
        json!({"selector": {"tags": {"role": "x"}}, "commands": uptime()}),
    )
    .await;
    let _s1 = take_task(&mut e[0], "x-1").await;
    let _s2 = take_task(&mut e[1], "x-2").await;
}

#[tokio::test]
async fn a_rollout_past_the_active_session_limit_waits_for_room_instead_of_failing() {
    let app = spawn_app_with(|c| c.max_active_sessions = 2).await;
    let ids = ["p1", "p2", "p3"];
    let mut d = fleet(&app, &ids.map(|i| (i, "linux", "web"))).await;
    let job = create(
        &app,
        json!({"selector": {"client_ids": "p*"}, "commands": uptime()}),
    )
    .await;
    let s1 = take_task(&mut d[0], "p1").await;
    let s2 = take_task(&mut d[1], "p2").await;
    d[2].expect_silence(Duration::from_millis(400)).await;
    finish(&mut d[0], "p1", &s1, 0).await;
    let s3 = take_task(&mut d[2], "p3").await;
    finish(&mut d[1], "p2", &s2, 0).await;
    finish(&mut d[2], "p3", &s3, 0).await;
    let done = wait_job(&app, &job).await;
    assert_eq!(done["state"], "completed", "{done}");
}

#[tokio::test]
async fn max_failures_stops_starting_new_members_and_skips_the_rest() {
    let app = spawn_app().await;
    let ids = ["n1", "n2", "n3", "n4"];
    let mut d = fleet(&app, &ids.map(|i| (i, "linux", "web"))).await;
    let job = create(
        &app,
        json!({"selector": {"platform": "linux"}, "commands": uptime(), "batch": 1,
               "max_failures": 2}),
    )
    .await;
    let s1 = take_task(&mut d[0], "n1").await;
    finish(&mut d[0], "n1", &s1, 2).await;
    let s2 = take_task(&mut d[1], "n2").await;
    finish(&mut d[1], "n2", &s2, 0).await;
    let s3 = take_task(&mut d[2], "n3").await;
    finish(&mut d[2], "n3", &s3, 1).await;
    let done = wait_job(&app, &job).await;
    d[3].expect_silence(Duration::from_millis(200)).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["reason"], "max_failures");
    assert_eq!(
        members(&done),
        [
            ("n1".into(), "failed".into(), Value::Null),
            ("n2".into(), "completed".into(), Value::Null),
            ("n3".into(), "failed".into(), Value::Null),
            ("n4".into(), "skipped".into(), json!("max_failures")),
        ]
    );
    assert_eq!(done["members"][0]["exit_code"], 2);
    assert!(
        done["members"][0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("exited with code 2") || o.contains("failed")),
        "{done}"
    );
    assert_eq!(
        done["members"][3]["output"],
        "Not started: max_failures was reached"
    );
    assert_eq!(done["counts"]["skipped"], 1);
}

#[tokio::test]
async fn a_device_offline_at_its_turn_is_skipped_with_the_reason() {
    let app = spawn_app().await;
    let mut d = fleet(&app, &[("m1", "linux", "web"), ("m2", "linux", "web")]).await;
    let job = create(
        &app,
        json!({"selector": {"tags": {"role": "web"}}, "commands": uptime(), "batch": 1}),
    )
    .await;
    let s1 = take_task(&mut d[0], "m1").await;
    d.pop().expect("m2").close().await;
    app.wait_gone("m2").await;
    finish(&mut d[0], "m1", &s1, 0).await;
    let done = wait_job(&app, &job).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["reason"], Value::Null);
    assert_eq!(
        members(&done)[1],
        ("m2".into(), "skipped".into(), json!("device_offline"))
    );
    assert_eq!(
        done["members"][1]["output"],
        "Device was not connected at its turn"
    );
}

#[tokio::test]
async fn a_member_still_running_at_the_job_timeout_fails_with_reason_timeout() {
    let app = spawn_app().await;
    let mut d = fleet(&app, &[("slow", "linux", "web")]).await;
    let job = create(
        &app,
        json!({"selector": {"client_ids": "slow"}, "commands": uptime(), "timeout": 0.3}),
    )
    .await;
    let sid = take_task(&mut d[0], "slow").await;
    let _cmd = expect_command(&mut d[0], &sid).await;
    let done = wait_job(&app, &job).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(members(&done)[0].2, json!("timeout"));
    assert_eq!(
        done["members"][0]["output"],
        "Did not finish within the job's timeout of 0.3 s"
    );
    expect_task_end(&mut d[0], &sid, "failed").await;
    let (_, session) = app.get(&format!("/api/sessions/{sid}")).await;
    assert_eq!(
        (&session["state"], &session["reason"]),
        (&json!("failed"), &json!("timeout")),
        "{session}"
    );
}

// ---------------------------------------------------------------------------
// Cancel and restart

#[tokio::test]
async fn cancelling_a_job_cancels_its_running_sessions_and_skips_the_pending_ones() {
    let app = spawn_app().await;
    let ids = ["c1", "c2", "c3"];
    let mut d = fleet(&app, &ids.map(|i| (i, "linux", "web"))).await;
    let job = create(
        &app,
        json!({"selector": {"tags": {"role": "web"}}, "commands": uptime(), "batch": 1}),
    )
    .await;
    let s1 = take_task(&mut d[0], "c1").await;
    let (code, cancelled) = app.delete(&format!("/api/jobs/{job}")).await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["reason"], "cancelled");
    assert_eq!(
        members(&cancelled),
        [
            ("c1".into(), "cancelled".into(), json!("cancelled")),
            ("c2".into(), "skipped".into(), json!("cancelled")),
            ("c3".into(), "skipped".into(), json!("cancelled")),
        ]
    );
    // Its command may have gone out before the cancellation: the end follows either way.
    let end = d[0].recv_until(|f| f["type"] == "task_end").await;
    assert_eq!(
        (end["session_id"].as_str(), end["status"].as_str()),
        (Some(s1.as_str()), Some("failed"))
    );
    d[1].expect_silence(Duration::from_millis(200)).await;
    let (_, session) = app.get(&format!("/api/sessions/{s1}")).await;
    assert_eq!(session["state"], "cancelled", "{session}");
    assert_eq!(session["error"], "Task was cancelled with its fleet job");

    let (code, again) = app.delete(&format!("/api/jobs/{job}")).await;
    assert_eq!(
        (code, again["detail"].clone()),
        (409, json!("Job already finished"))
    );
    let (code, none) = app.delete("/api/jobs/no-such-job").await;
    assert_eq!(
        (code, none["detail"].clone()),
        (404, json!("Job not found"))
    );
    let (code, _) = app.get("/api/jobs/no-such-job").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_graceful_restart_keeps_finished_members_and_ends_the_live_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_at(0, dir.path(), |_| {}).await;
    let mut d = fleet(
        &app,
        &[
            ("r1", "linux", "web"),
            ("r2", "linux", "web"),
            ("r3", "linux", "web"),
        ],
    )
    .await;
    let job = create(
        &app,
        json!({"selector": {"tags": {"role": "web"}}, "commands": uptime(), "batch": 1}),
    )
    .await;
    let s1 = take_task(&mut d[0], "r1").await;
    finish(&mut d[0], "r1", &s1, 0).await;
    let _s2 = take_task(&mut d[1], "r2").await;
    drop(d);
    app.stop().await;

    let again = spawn_at(0, dir.path(), |_| {}).await;
    let (code, after) = again.get(&format!("/api/jobs/{job}")).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["state"], "failed", "{after}");
    assert!(
        after["reason"] == "shutdown" || after["reason"] == "server_restarted",
        "{after}"
    );
    let m = members(&after);
    assert_eq!(m[0], ("r1".into(), "completed".into(), Value::Null));
    assert_eq!(m[1].1, "cancelled", "{after}");
    assert_eq!(m[2].1, "skipped", "{after}");
    assert_eq!(after["members"][0]["output"], "hello from r1");
}
