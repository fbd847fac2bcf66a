//! Cluster mode (`--cluster`): several real `aip serve` processes sharing a real
//! `redis-server` (started here on free ports, each with its own directory), driven by
//! real WebSocket and HTTP clients and the real device agent.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use aip_testkit::process::Server;
use aip_testkit::redis::{redis_cluster, RedisServer};
use aip_testkit::{results_for, Ws};
use serde_json::{json, Value};

/// A persistent Redis under `dir` and two nodes on it, `a` and `b`.
fn two_nodes(dir: &Path) -> (RedisServer, Server, Server) {
    let redis = RedisServer::start(&dir.join("redis"));
    let a = node(&redis.url(), "a", dir, &[]);
    let b = node(&redis.url(), "b", dir, &[]);
    (redis, a, b)
}

/// A node of the cluster on `redis` named `id`.
fn node(redis: &str, id: &str, dir: &Path, extra: &[&str]) -> Server {
    let data = dir.join(id);
    let mut args = vec!["--cluster", redis, "--node-id", id];
    args.extend_from_slice(extra);
    Server::start(&data, &args)
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    call_keyed(method, url, body, None).await
}

/// [`call`] with `X-API-Key: key`.
async fn call_keyed(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).timeout(Duration::from_secs(20));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    call(reqwest::Method::GET, url, None).await
}

/// A one-command plan for `target`.
fn plan(target: &str, command: &str) -> Value {
    json!({"target_id": target, "request": "plan", "commands": [
        {"tool_name": "execute_command", "tool_type": "action", "parameters": {"command": command}}
    ]})
}

async fn dispatch(srv: &Server, body: Value) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        &format!("{}/api/dispatch", srv.url()),
        Some(body),
    )
    .await
}

/// Dispatches `command` to `target` on `srv`, which must answer 200; the session id.
async fn started(srv: &Server, target: &str, command: &str) -> String {
    let (status, d) = dispatch(srv, plan(target, command)).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["client_id"], target, "{d}");
    d["session_id"].as_str().unwrap().to_owned()
}

/// Runs `command` on `target` through `srv` to its end; the ended result.
async fn ran(srv: &Server, target: &str, command: &str) -> Value {
    let sid = started(srv, target, command).await;
    wait_result(srv, &sid, |v| v["status"] == "done").await
}

/// Polls `GET /api/task_result/{sid}` on `srv` until `pred` holds (15 s).
async fn wait_result(srv: &Server, sid: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let url = format!("{}/api/task_result/{sid}", srv.url());
    poll(&url, None, Duration::from_secs(15), pred).await
}

/// Polls `GET url` (with `key`, if any) until `pred` holds, for at most `within`.
async fn poll(
    url: &str,
    key: Option<&str>,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, v) = call_keyed(reqwest::Method::GET, url, None, key).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{url} never matched: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET /api/clients` on `srv` until `client_id` shows on `node` (`None`: absent).
async fn wait_client(srv: &Server, client_id: &str, node: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = get(&format!("{}/api/clients", srv.url())).await;
        let found = v["clients"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["client_id"] == client_id).cloned());
        let matched = match (&found, node) {
            (Some(c), Some(n)) => c["node"] == n,
            (None, None) => true,
            _ => false,
        };
        if matched {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{client_id} never showed on {node:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stdout_of(result: &Value) -> String {
    result["result"]["rounds"][0]["action_results"][0]["result"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn constellation(srv: &Server, id: &str, target: Option<&str>) -> Ws {
    let mut ws = Ws::connect(&srv.ws()).await;
    ws.send(
        json!({"type": "register", "status": "ok", "client_type": "constellation",
        "client_id": id, "target_id": target}),
    )
    .await;
    let ok = ws.recv().await;
    assert_eq!(ok["status"], "ok", "{ok}");
    ws
}

/// Constellation `from`'s `task` `sid` for the device `dev`: one `execute_command`.
fn command_task(from: &str, sid: &str, command: &str) -> Value {
    json!({"type": "task", "status": "continue", "client_type": "constellation",
        "session_id": sid, "task_name": "t", "client_id": from, "target_id": "dev",
        "request": command, "metadata": {"commands": [{"tool_name": "execute_command",
        "tool_type": "action", "parameters": {"command": command}}]}})
}

async fn device_ws(srv: &Server, id: &str) -> Ws {
    let mut ws = Ws::connect(&srv.ws()).await;
    ws.send(
        json!({"type": "register", "status": "ok", "client_type": "device", "client_id": id,
        "metadata": {"platform": "linux", "system_info": {"hostname": id, "cpu_count": 2}}}),
    )
    .await;
    let ok = ws.recv().await;
    assert_eq!(ok["status"], "ok", "{ok}");
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn any_node_dispatches_to_serves_and_cancels_sessions_of_a_device_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, a, b) = two_nodes(tmp.path());
    let c = node(&redis.url(), "c", tmp.path(), &[]);
    let _dev = b.device("dev", &[]);

    // Presence: every node lists the device, on its node.
    for srv in [&a, &b, &c] {
        wait_client(srv, "dev", Some("b")).await;
    }

    // A dispatch on A runs on B (the device's node) and is answered once stored.
    let sid = started(&a, "dev", "echo cross-node").await;
    let done = wait_result(&c, &sid, |v| v["status"] == "done").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(stdout_of(&done), "cross-node\n");

    // A long session started from A is cancelled from C.
    let long = started(&a, "dev", "sleep 30").await;
    wait_result(&c, &long, |v| v["state"] == "running").await;
    let (status, v) = call(
        reqwest::Method::DELETE,
        &format!("{}/api/sessions/{long}", c.url()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "cancelled");
    assert_eq!(v["reason"], "cancelled");
    let (status, v) = call(
        reqwest::Method::DELETE,
        &format!("{}/api/sessions/{long}", a.url()),
        None,
    )
    .await;
    assert_eq!(status, 409, "{v}");

    // Any node lists every session, newest first, and filters by client.
    for srv in [&a, &b, &c] {
        let (_, list) = get(&format!("{}/api/sessions?client_id=dev", srv.url())).await;
        let ids: Vec<&str> = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [long.as_str(), sid.as_str()], "{list}");
    }
    let (_, list) = get(&format!("{}/api/sessions?state=completed", a.url())).await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");

    // The CLI on a third node waits for a session run on B.
    c.aip(&[
        "dispatch",
        "--target",
        "dev",
        "--command",
        "echo via-cli",
        "--wait",
    ])
    .expect_code(0)
    .stdout_has(&["state: completed", "stdout | via-cli"]);

    // Unknown targets are still 404 everywhere.
    let (status, v) = dispatch(&a, plan("nobody", "true")).await;
    assert_eq!(status, 404, "{v}");
}

/// A job body running `command` on the devices `selector` picks.
fn job_body(selector: Value, command: &str, extra: Value) -> Value {
    let mut body = json!({"selector": selector, "commands": [{"tool_name": "execute_command",
        "tool_type": "action", "parameters": {"command": command}}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// Creates a job on `srv` (200); its id.
async fn create_job(srv: &Server, body: Value) -> String {
    let (status, v) = call(
        reqwest::Method::POST,
        &format!("{}/api/jobs", srv.url()),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["job_id"].as_str().unwrap().to_owned()
}

/// Polls `GET /api/jobs/{id}` on `srv` until `pred` holds (20 s).
async fn wait_job(srv: &Server, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let url = format!("{}/api/jobs/{id}", srv.url());
    poll(&url, None, Duration::from_secs(20), pred).await
}

/// A job's members as (client id, state, reason).
fn members(job: &Value) -> Vec<(String, String, Value)> {
    job["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["client_id"].as_str().unwrap().to_owned(),
                m["state"].as_str().unwrap().to_owned(),
                m["reason"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_created_on_one_node_runs_devices_on_both_and_every_node_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    let tag = |role: &str| ["--tag".to_owned(), format!("role={role}")];
    let web = tag("web");
    let web: Vec<&str> = web.iter().map(String::as_str).collect();
    let db = tag("db");
    let db: Vec<&str> = db.iter().map(String::as_str).collect();
    let _devices = [
        a.device("web-a", &web),
        b.device("web-b1", &web),
        b.device("web-b2", &web),
        b.device("db-b", &db),
    ];
    for (id, n) in [
        ("web-a", "a"),
        ("web-b1", "b"),
        ("web-b2", "b"),
        ("db-b", "b"),
    ] {
        wait_client(&a, id, Some(n)).await;
    }

    let id = create_job(
        &a,
        job_body(json!({"tags": {"role": "web"}}), "echo job-ran", json!({})),
    )
    .await;
    let done = wait_job(&a, &id, |j| j["state"] != "running").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["counts"]["completed"], 3, "{done}");
    let expected = ["web-a", "web-b1", "web-b2"];
    for (m, client) in done["members"].as_array().unwrap().iter().zip(expected) {
        assert_eq!(m["client_id"], client, "{done}");
        assert_eq!(m["state"], "completed", "{done}");
        assert_eq!(m["exit_code"], 0, "{done}");
        assert_eq!(m["output"], "job-ran", "{done}");
        // Each member's session is an ordinary one, run on its device's node, with the
        // job's id; any node serves it.
        let sid = m["session_id"].as_str().unwrap();
        let r = wait_result(&b, sid, |v| v["status"] == "done").await;
        assert_eq!(r["job_id"], id.as_str(), "{r}");
        assert_eq!(stdout_of(&r), "job-ran\n");
    }

    // Node B shows the same job, and lists it first.
    let on_b = wait_job(&b, &id, |j| j["state"] == "completed").await;
    assert_eq!(on_b["counts"], done["counts"]);
    assert_eq!(members(&on_b), members(&done));
    let (_, list) = get(&format!("{}/api/jobs", b.url())).await;
    assert_eq!(list["jobs"][0]["job_id"], id.as_str(), "{list}");
    assert_eq!(list["jobs"][0]["counts"], done["counts"], "{list}");
    assert!(list["jobs"][0].get("members").is_none(), "{list}");

    // A selector that matches nothing anywhere is still a 404 naming it.
    let (status, v) = call(
        reqwest::Method::POST,
        &format!("{}/api/jobs", b.url()),
        Some(job_body(
            json!({"tags": {"role": "cache"}}),
            "true",
            json!({}),
        )),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("role=cache"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_s_batch_max_failures_timeout_and_a_cancel_from_another_node_hold_across_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    // Rollout order c-1 (on B), c-2 (on A), c-3 (on B).
    let _devices = [
        b.device("c-1", &[]),
        a.device("c-2", &[]),
        b.device("c-3", &[]),
    ];
    for (id, n) in [("c-1", "b"), ("c-2", "a"), ("c-3", "b")] {
        wait_client(&a, id, Some(n)).await;
    }
    let all = json!({"client_ids": "c-*"});

    // Two at a time: one remote and one local member run, the third waits.
    let id = create_job(&a, job_body(all.clone(), "sleep 30", json!({"batch": 2}))).await;
    let running = wait_job(&b, &id, |j| j["counts"]["running"] == 2).await;
    assert_eq!(running["counts"]["pending"], 1, "{running}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, still) = get(&format!("{}/api/jobs/{id}?members=none", b.url())).await;
    assert_eq!(still["counts"]["running"], 2, "{still}");
    assert_eq!(still["counts"]["pending"], 1, "{still}");
    let remote_sid = running["members"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Cancelled from B (A runs it): the remote and the local session end cancelled, the
    // waiting member is skipped.
    let (status, v) = call(
        reqwest::Method::DELETE,
        &format!("{}/api/jobs/{id}", b.url()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "cancelled", "{v}");
    assert_eq!(
        members(&v),
        [
            ("c-1".into(), "cancelled".into(), json!("cancelled")),
            ("c-2".into(), "cancelled".into(), json!("cancelled")),
            ("c-3".into(), "skipped".into(), json!("cancelled")),
        ]
    );
    let session = wait_result(&a, &remote_sid, |v| v["status"] == "done").await;
    assert_eq!(session["state"], "cancelled", "{session}");
    let (status, v) = call(
        reqwest::Method::DELETE,
        &format!("{}/api/jobs/{id}", b.url()),
        None,
    )
    .await;
    assert_eq!(status, 409, "{v}");

    // One at a time with max_failures 1: the remote first member fails, the rest are
    // skipped.
    let body = job_body(
        all.clone(),
        "echo broken >&2; exit 3",
        json!({"batch": 1, "max_failures": 1}),
    );
    let id = create_job(&a, body).await;
    let failed = wait_job(&b, &id, |j| j["state"] != "running").await;
    assert_eq!(
        (&failed["state"], &failed["reason"]),
        (&json!("failed"), &json!("max_failures")),
        "{failed}"
    );
    assert_eq!(
        members(&failed),
        [
            ("c-1".into(), "failed".into(), Value::Null),
            ("c-2".into(), "skipped".into(), json!("max_failures")),
            ("c-3".into(), "skipped".into(), json!("max_failures")),
        ]
    );
    assert_eq!(failed["members"][0]["exit_code"], 3, "{failed}");
    assert_eq!(failed["members"][0]["output"], "broken", "{failed}");

    // A remote member past the job's timeout fails with reason timeout.
    let body = job_body(
        json!({"client_ids": "c-3"}),
        "sleep 30",
        json!({"timeout": 1}),
    );
    let id = create_job(&b, body).await;
    let timed = wait_job(&a, &id, |j| j["state"] != "running").await;
    assert_eq!(
        members(&timed),
        [("c-3".into(), "failed".into(), json!("timeout"))],
        "{timed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_whose_node_is_lost_fails_node_lost_and_so_does_a_job_whose_node_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, a, b) = two_nodes(tmp.path());
    let c = node(&redis.url(), "c", tmp.path(), &[]);
    let _far = b.device("far", &[]);
    let _other = c.device("other", &[]);
    wait_client(&a, "far", Some("b")).await;
    wait_client(&a, "other", Some("c")).await;
    let all = json!({"client_ids": ["far", "other"]});
    let id = create_job(&a, job_body(all, "sleep 60", json!({}))).await;
    let running = wait_job(&c, &id, |j| j["counts"]["running"] == 2).await;
    let other_sid = running["members"][1]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // B (a member's node) is lost: that member fails node_lost, the job runs on.
    signal(b.proc.pid(), "-9");
    let one_lost = wait_job(&c, &id, |j| j["counts"]["failed"] == 1).await;
    assert_eq!(one_lost["state"], "running", "{one_lost}");
    assert_eq!(
        members(&one_lost),
        [
            ("far".into(), "failed".into(), json!("node_lost")),
            ("other".into(), "running".into(), Value::Null),
        ]
    );

    // A (the job's node) is lost: the job fails node_lost, and its member's session on
    // C does not run on for a job that is gone.
    signal(a.proc.pid(), "-9");
    let lost = wait_job(&c, &id, |j| j["state"] != "running").await;
    assert_eq!(
        (&lost["state"], &lost["reason"]),
        (&json!("failed"), &json!("node_lost")),
        "{lost}"
    );
    assert_eq!(
        members(&lost),
        [
            ("far".into(), "failed".into(), json!("node_lost")),
            ("other".into(), "failed".into(), json!("node_lost")),
        ]
    );
    let session = wait_result(&c, &other_sid, |v| v["status"] == "done").await;
    assert_eq!(session["state"], "cancelled", "{session}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_constellation_on_one_node_drives_a_device_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    let mut dev = device_ws(&b, "dev").await;
    wait_client(&a, "dev", Some("b")).await;

    let mut k = constellation(&a, "galaxy@dev", Some("dev")).await;

    // device_info_response from the device's registration on B.
    k.send(json!({"type": "device_info_request", "status": "ok", "client_type": "constellation", "client_id": "galaxy@dev",
        "target_id": "dev", "request_id": "r1"}))
        .await;
    let info = k.recv().await;
    assert_eq!(info["type"], "device_info_response", "{info}");
    assert_eq!(info["result"]["hostname"], "dev", "{info}");

    let task = |sid: &str| {
        json!({"type": "task", "status": "continue", "client_type": "constellation",
            "session_id": sid, "task_name": "t", "client_id": "galaxy@dev", "target_id": "dev",
            "request": "do it", "metadata": {"commands": [
                {"tool_name": "click", "tool_type": "action", "parameters": {}}]}})
    };
    k.send(task("k-1")).await;
    let ack = k.recv().await;
    assert_eq!(ack["session_id"], "k-1", "{ack}");
    let cmd = dev.recv().await;
    assert_eq!(cmd["type"], "command", "{cmd}");
    dev.send(results_for(&cmd, "dev")).await;
    let end = k.recv().await;
    assert_eq!(end["type"], "task_end", "{end}");
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["session_id"], "k-1");
    let end_d = dev.recv().await;
    assert_eq!(end_d["status"], "completed", "{end_d}");
    let done = wait_result(&a, "k-1", |v| v["status"] == "done").await;
    assert_eq!(done["origin"], "constellation", "{done}");
    assert_eq!(done["requester"], "galaxy@dev", "{done}");

    // The constellation leaves mid-session: the device's node ends it.
    k.send(task("k-2")).await;
    assert_eq!(k.recv().await["session_id"], "k-2");
    let cmd = dev.recv().await;
    assert_eq!(cmd["session_id"], "k-2");
    // Its id is in use while it runs on the other node.
    k.send(task("k-2")).await;
    let refused = k.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("k-2"),
        "{refused}"
    );
    k.close().await;
    let end_d = dev.recv().await;
    assert_eq!(end_d["type"], "task_end", "{end_d}");
    assert_eq!(end_d["status"], "failed", "{end_d}");
    let gone = wait_result(&b, "k-2", |v| v["status"] == "done").await;
    assert_eq!(gone["reason"], "requester_disconnected", "{gone}");

    // The constellation comes back twice (the first time leaving nothing running): each
    // new connection hears its own sessions.
    for sid in ["k-3", "k-4"] {
        let mut k = constellation(&a, "galaxy@dev", Some("dev")).await;
        k.send(task(sid)).await;
        assert_eq!(k.recv().await["session_id"], sid);
        let cmd = dev.recv().await;
        dev.send(results_for(&cmd, "dev")).await;
        let end = k.recv().await;
        assert_eq!(
            (&end["type"], &end["status"]),
            (&json!("task_end"), &json!("completed")),
            "{end}"
        );
        assert_eq!(dev.recv().await["type"], "task_end");
        k.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_id_on_another_node_is_refused_while_the_holder_lives_and_replaces_a_dead_one()
{
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    let mut first = device_ws(&a, "twin").await;
    wait_client(&b, "twin", Some("a")).await;

    // The holder answers the probe (its reads run): the newcomer on B is refused.
    let reader = tokio::spawn(async move {
        let _ = first.next_text(Duration::from_secs(4)).await;
        first
    });
    let mut second = Ws::connect(&b.ws()).await;
    second
        .send(json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "twin"}))
        .await;
    let refused = second.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("already registered"),
        "{refused}"
    );
    let first = reader.await.unwrap();

    // The holder stops reading (a dead peer): the next registration on B replaces it.
    let mut third = Ws::connect(&b.ws()).await;
    third
        .send(json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "twin"}))
        .await;
    // After the holder's node has probed it for --duplicate-probe-timeout (5 s).
    let ok = third.next_text(Duration::from_secs(15)).await.unwrap();
    assert_eq!(ok["status"], "ok", "{ok}");
    wait_client(&a, "twin", Some("b")).await;
    drop(first);
}

/// `kill -<signal> <pid>`.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_s_sessions_fail_node_lost_and_its_devices_fail_over() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    // The real device agent, told both nodes: B first.
    let servers = format!("{},{}", b.ws(), a.ws());
    let _dev = b.device("dev", &["--server", &servers]);
    wait_client(&a, "dev", Some("b")).await;

    // A result reported before the kill, a session running at it (from HTTP on A), and
    // a constellation on A with a session on B.
    let before = started(&a, "dev", "echo before").await;
    wait_result(&a, &before, |v| v["state"] == "completed").await;
    let running = started(&a, "dev", "sleep 60").await;
    wait_result(&a, &running, |v| v["state"] == "running").await;
    let mut k = constellation(&a, "galaxy", None).await;
    k.send(command_task("galaxy", "k-1", "sleep 60")).await;
    assert_eq!(k.recv().await["session_id"], "k-1");

    let killed = Instant::now();
    signal(b.proc.pid(), "-9");

    // Within the node TTL (5 s) and a watch period (1 s), plus slack.
    let failed = wait_result(&a, &running, |v| v["state"] == "failed").await;
    let detected = killed.elapsed();
    assert_eq!(failed["reason"], "node_lost", "{failed}");
    assert!(detected < Duration::from_secs(10), "{detected:?}");
    eprintln!("node loss detected and its sessions failed after {detected:?}");
    let end = k.next_text(Duration::from_secs(10)).await.unwrap();
    assert_eq!(end["type"], "task_end", "{end}");
    assert_eq!(end["status"], "failed", "{end}");
    assert_eq!(end["session_id"], "k-1", "{end}");
    assert!(end["error"].as_str().unwrap().contains("lost"), "{end}");
    let k1 = wait_result(&a, "k-1", |v| v["status"] == "done").await;
    assert_eq!(k1["reason"], "node_lost", "{k1}");

    // The result reported before the kill is kept.
    let kept = wait_result(&a, &before, |v| v["status"] == "done").await;
    assert_eq!(kept["state"], "completed");
    assert_eq!(stdout_of(&kept), "before\n");

    // The device reconnects to A and takes new tasks there.
    wait_client(&a, "dev", Some("a")).await;
    eprintln!("device failed over to node a after {:?}", killed.elapsed());
    let done = ran(&a, "dev", "echo after").await;
    assert_eq!(stdout_of(&done), "after\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_declared_lost_that_comes_back_does_not_resurrect_its_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    // The device echoes; the session runs; its command waits for results.
    let (mut dev, sid, cmd) = held_session(&b, "b", &a).await;

    // B stops (a partition, as the others see it) long enough to be declared lost.
    signal(b.proc.pid(), "-STOP");
    let failed = wait_result(&a, &sid, |v| v["state"] == "failed").await;
    assert_eq!(failed["reason"], "node_lost", "{failed}");
    wait_client(&a, "dev", None).await;
    signal(b.proc.pid(), "-CONT");

    // B comes back: the device's results reach it, but the session stays failed, and B
    // drops its connections (the device registers again and is published anew).
    dev.send(results_for(&cmd, "dev")).await;
    let closed = loop {
        match dev.next_text(Duration::from_secs(10)).await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(closed, aip_testkit::Ended::Closed(_)),
        "{closed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = wait_result(&a, &sid, |v| v["status"] == "done").await;
    assert_eq!(still["state"], "failed", "{still}");
    assert_eq!(still["reason"], "node_lost", "{still}");
    let mut again = device_ws(&b, "dev").await;
    wait_client(&a, "dev", Some("b")).await;
    let (status, d) = dispatch(&a, plan("dev", "x")).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(again.recv().await["type"], "task");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_keeps_sockets_refuses_dispatches_fast_and_loses_no_reported_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut redis, a, b) = two_nodes(tmp.path());
    let _dev = b.device("dev", &[]);
    wait_client(&a, "dev", Some("b")).await;
    let sid = started(&a, "dev", "echo kept").await;
    wait_result(&a, &sid, |v| v["state"] == "completed").await;

    // kill -9 of Redis (appendonly yes, appendfsync always).
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A cannot look the device up, B cannot store the session: both refuse.
    for srv in [&a, &b] {
        let detail = "Storage unavailable";
        let started = Instant::now();
        let (status, v) = dispatch(srv, plan("dev", "echo lost?")).await;
        assert_eq!(status, 503, "{v}");
        assert!(
            v["detail"].as_str().unwrap_or_default().contains(detail),
            "{v}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        let (status, h) = get(&format!("{}/api/health", srv.url())).await;
        assert_eq!(status, 200, "{h}");
        assert_eq!(h["cluster"]["redis"], "unreachable", "{h}");
        let (status, r) = get(&format!("{}/api/ready", srv.url())).await;
        assert_eq!(status, 503, "{r}");
        assert_eq!(r["checks"]["redis"], "unreachable", "{r}");
    }
    // Sockets stay up: a device registering now is served by its node.
    let mut late = device_ws(&a, "late").await;
    aip_testkit::assert_alive(&mut late, "late").await;

    redis.restart();
    // Readiness comes back, the result reported before the crash is there, presence is
    // republished (the device that registered during the outage included).
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&format!("{}/api/ready", a.url())).await.0 != 200 {
        assert!(Instant::now() < deadline, "A never became ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = wait_result(&a, &sid, |v| v["status"] == "done").await;
    assert_eq!(stdout_of(&kept), "kept\n");
    wait_client(&b, "late", Some("a")).await;
    wait_client(&b, "dev", Some("b")).await;
    // And work flows across nodes again.
    let done = ran(&a, "dev", "echo again").await;
    assert_eq!(stdout_of(&done), "again\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_master_redis_cluster_serves_the_same_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let (_servers, seeds) = redis_cluster(&tmp.path().join("rc"));
    let a = node(&seeds, "a", tmp.path(), &[]);
    let b = node(&seeds, "b", tmp.path(), &[]);
    let (_, h) = get(&format!("{}/api/health", a.url())).await;
    assert_eq!(h["cluster"]["mode"], "sharded", "{h}");
    let _dev = b.device("dev", &[]);
    wait_client(&a, "dev", Some("b")).await;
    let done = ran(&a, "dev", "echo sharded").await;
    assert_eq!(stdout_of(&done), "sharded\n");
    let sid = done["session_id"].as_str().unwrap();
    let (_, list) = get(&format!("{}/api/sessions", b.url())).await;
    assert_eq!(list["sessions"][0]["session_id"], sid, "{list}");
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{}/api/sessions/{sid}", b.url()),
        None,
    )
    .await;
    assert_eq!(status, 409);
    // A job run from A over B's device, read on B.
    let body = job_body(json!({"client_ids": "dev"}), "echo job", json!({}));
    let id = create_job(&a, body).await;
    let done = wait_job(&b, &id, |j| j["state"] != "running").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["members"][0]["output"], "job", "{done}");
    let (_, list) = get(&format!("{}/api/jobs", b.url())).await;
    assert_eq!(list["jobs"][0]["job_id"], id.as_str(), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_stopped_gracefully_leaves_no_client_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, a, mut b) = two_nodes(tmp.path());
    let _dev = device_ws(&b, "dev").await;
    let _k = constellation(&b, "k", None).await;
    wait_client(&a, "k", Some("b")).await;
    signal(b.proc.pid(), "-TERM");
    assert_eq!(b.proc.wait_exit(), Some(0), "{}", b.proc.output());
    assert!(b.proc.output().contains("left the cluster"));
    let (_, v) = get(&format!("{}/api/clients", a.url())).await;
    assert_eq!(v["online_clients"], json!([]), "{v}");
    assert!(!redis.cli(&["HKEYS", "{aip}:nodes"]).contains('b'));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_checks_the_same_key_and_redis_holds_no_secret() {
    const KEY: &str = "cluster-key-0123456789-abcdef";
    let tmp = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&tmp.path().join("redis"));
    let a = node(&redis.url(), "a", tmp.path(), &["--api-key", KEY]);
    let b = node(&redis.url(), "b", tmp.path(), &["--api-key", KEY]);
    let _dev = b.device("dev", &["--api-key", KEY]);
    let (status, body) = dispatch(&a, plan("dev", "echo x")).await;
    assert_eq!(status, 401, "{body}");
    let post = |path: &str, body: Value| {
        let url = format!("{}{path}", a.url());
        async move { call_keyed(reqwest::Method::POST, &url, Some(body), Some(KEY)).await }
    };
    let (status, answer) = post("/api/dispatch", plan("dev", "echo keyed")).await;
    assert_eq!(status, 200, "{answer}");
    let sid = answer["session_id"].as_str().unwrap();
    let within = Duration::from_secs(15);
    let url = format!("{}/api/task_result/{sid}", b.url());
    let v = poll(&url, Some(KEY), within, |v| v["status"] == "done").await;
    assert_eq!(stdout_of(&v), "keyed\n");
    // A fleet job, so that its records are read back too.
    let body = job_body(json!({"client_ids": "dev"}), "echo job", json!({}));
    let (status, job) = post("/api/jobs", body).await;
    assert_eq!(status, 200, "{job}");
    let url = format!("{}/api/jobs/{}", b.url(), job["job_id"].as_str().unwrap());
    poll(&url, Some(KEY), within, |v| v["state"] == "completed").await;
    // Everything Redis holds, read back: no key anywhere.
    for key in redis.cli(&["--scan"]).lines() {
        let kind = redis.cli(&["TYPE", key]);
        let dump = match kind.trim() {
            "string" => redis.cli(&["GET", key]),
            "hash" => redis.cli(&["HGETALL", key]),
            "zset" => redis.cli(&["ZRANGE", key, "0", "-1"]),
            "stream" => redis.cli(&["XRANGE", key, "-", "+"]),
            other => panic!("unexpected type {other} of {key}"),
        };
        assert!(!dump.contains(KEY), "{key} holds the key: {dump}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_ends_only_its_own_jobs_server_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, a, b) = two_nodes(tmp.path());
    let _near = a.device("near", &[]);
    let _far = b.device("far", &[]);
    wait_client(&a, "far", Some("b")).await;
    wait_client(&b, "near", Some("a")).await;
    // A runs a job on both nodes' devices; B runs one on its own device.
    let all = json!({"client_ids": ["near", "far"]});
    let mine = create_job(&a, job_body(all, "sleep 60", json!({}))).await;
    wait_job(&b, &mine, |j| j["counts"]["running"] == 2).await;
    let far_sid = {
        let (_, j) = get(&format!("{}/api/jobs/{mine}", b.url())).await;
        j["members"][0]["session_id"].as_str().unwrap().to_owned()
    };
    let theirs = create_job(
        &b,
        job_body(
            json!({"client_ids": "far"}),
            "sleep 60",
            json!({"max_failures": 1}),
        ),
    )
    .await;
    // Past a flush of A's job's progress (every 250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;

    drop(a); // SIGKILL, then the same node id again, within the node TTL.
    let a = node(&redis.url(), "a", tmp.path(), &[]);
    let ended = wait_job(&b, &mine, |j| j["state"] != "running").await;
    assert_eq!(
        (&ended["state"], &ended["reason"]),
        (&json!("failed"), &json!("server_restarted")),
        "{ended}"
    );
    assert_eq!(
        members(&ended),
        [
            ("far".into(), "failed".into(), json!("server_restarted")),
            ("near".into(), "failed".into(), json!("server_restarted")),
        ]
    );
    // Its member on B is cancelled there; B's own job runs on.
    let session = wait_result(&a, &far_sid, |v| v["status"] == "done").await;
    assert_eq!(session["state"], "cancelled", "{session}");
    let (_, j) = get(&format!("{}/api/jobs/{theirs}?members=none", a.url())).await;
    assert_eq!(j["state"], "running", "{j}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_node_declared_lost_that_comes_back_does_not_overwrite_its_ended_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, mut a, b) = two_nodes(tmp.path());
    let _near = a.device("near", &[]);
    wait_client(&b, "near", Some("a")).await;
    let id = create_job(
        &a,
        job_body(json!({"client_ids": "near"}), "sleep 60", json!({})),
    )
    .await;
    wait_job(&b, &id, |j| j["counts"]["running"] == 1).await;

    // A stops (a partition, as B sees it) long enough to be declared lost.
    signal(a.proc.pid(), "-STOP");
    let lost = wait_job(&b, &id, |j| j["state"] != "running").await;
    assert_eq!(lost["reason"], "node_lost", "{lost}");
    signal(a.proc.pid(), "-CONT");

    // Back, A finds itself fenced: its job stops, and what it would write is refused.
    let a_ref = &mut a;
    tokio::task::block_in_place(|| a_ref.proc.wait_for_line("job progress not stored"));
    let (_, after) = get(&format!("{}/api/jobs/{id}", b.url())).await;
    assert_eq!(after["state"], "failed", "{after}");
    assert_eq!(after["reason"], "node_lost", "{after}");
    assert_eq!(
        members(&after),
        [("near".into(), "failed".into(), json!("node_lost"))]
    );
    assert_eq!(after["finished_at"], lost["finished_at"], "{after}");
}

/// `redis-cli KEYS pattern`, one per line.
fn redis_keys(redis: &RedisServer, pattern: &str) -> String {
    redis.cli(&["KEYS", pattern]).trim().to_owned()
}

/// Issue 23 (1): a Redis outage longer than the node TTL expires every heartbeat key at
/// once; when Redis comes back no node is declared lost, a session that finished during
/// the outage is stored `completed` with its output, and no connection is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_longer_than_the_node_ttl_declares_no_node_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut redis, a, b) = two_nodes(tmp.path());
    let _dev = b.device("dev", &[]);
    wait_client(&a, "dev", Some("b")).await;
    let before = ran(&a, "dev", "echo before").await;
    assert_eq!(stdout_of(&before), "before\n");
    // Runs across the outage: it ends while Redis is down.
    let across = started(&a, "dev", "sleep 2; echo across").await;
    wait_result(&a, &across, |v| v["state"] == "running").await;

    redis.kill9();
    tokio::time::sleep(Duration::from_secs(8)).await;
    redis.restart();

    let url = format!("{}/api/task_result/{across}", a.url());
    let done = poll(&url, None, Duration::from_secs(30), |v| {
        v["status"] == "done"
    })
    .await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(stdout_of(&done), "across\n");
    // Past the time a node may judge another (a TTL and a beat after Redis is back).
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        redis_keys(&redis, "{aip}:lost:*"),
        "",
        "a node was declared lost"
    );
    for srv in [&a, &b] {
        let same = wait_result(srv, &across, |v| v["status"] == "done").await;
        assert_eq!(same["state"], "completed", "{same}");
        let kept = wait_result(srv, before["session_id"].as_str().unwrap(), |v| {
            v["status"] == "done"
        })
        .await;
        assert_eq!(kept["state"], "completed", "{kept}");
    }
    assert!(
        !b.proc.output().contains("declared lost"),
        "{}",
        b.proc.output()
    );
    wait_client(&a, "dev", Some("b")).await;
    let again = ran(&a, "dev", "echo again").await;
    assert_eq!(stdout_of(&again), "again\n");
}

/// A device `dev` on `srv` (node `node`; raw WebSocket) running a session dispatched
/// through `via`: the device holds the command (never reports). The device, the session
/// id and the command.
async fn held_session(srv: &Server, node: &str, via: &Server) -> (Ws, String, Value) {
    let mut dev = device_ws(srv, "dev").await;
    wait_client(via, "dev", Some(node)).await;
    let sid = started(via, "dev", "held").await;
    let task = dev.recv().await;
    assert_eq!(task["type"], "task", "{task}");
    dev.send(
        json!({"type": "task", "status": "continue", "client_type": "device",
        "client_id": "dev", "session_id": sid, "task_name": task["task_name"],
        "request": "held"}),
    )
    .await;
    let _ack = dev.recv().await;
    let cmd = dev.recv().await;
    assert_eq!(cmd["type"], "command", "{cmd}");
    (dev, sid, cmd)
}

/// Issue 23 (6): the clean-up lock names the lost incarnation, so a node killed again
/// soon after its restart is reaped as promptly as the first time.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_lost_twice_within_half_a_minute_is_reaped_promptly_both_times() {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, a, b) = two_nodes(tmp.path());
    let mut b = b;
    for round in 0..2 {
        let (_dev, sid, _) = held_session(&b, "b", &a).await;
        let killed = Instant::now();
        signal(b.proc.pid(), "-9");
        let failed = wait_result(&a, &sid, |v| v["state"] == "failed").await;
        assert_eq!(failed["reason"], "node_lost", "{failed}");
        let took = killed.elapsed();
        eprintln!("round {round}: node lost, sessions failed after {took:?}");
        assert!(took < Duration::from_secs(12), "round {round}: {took:?}");
        if round == 0 {
            b = node(&redis.url(), "b", tmp.path(), &[]);
        }
    }
}

/// Issue 23 (2): a client connected to a node is never missing from the fleet view for
/// long, whatever removed its entry (here: removed behind the nodes' backs).
#[tokio::test(flavor = "multi_thread")]
async fn a_connected_device_missing_from_presence_is_published_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, a, b) = two_nodes(tmp.path());
    let _dev = device_ws(&b, "dev").await;
    wait_client(&a, "dev", Some("b")).await;
    redis.cli(&["HDEL", "{aip}:owner", "dev"]);
    redis.cli(&["HDEL", "{aip}:clients", "dev"]);
    let gone = Instant::now();
    wait_client(&a, "dev", Some("b")).await;
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "{:?}",
        gone.elapsed()
    );
    let (status, d) = dispatch(&a, plan("dev", "x")).await;
    assert_eq!(status, 200, "{d}");
}

/// Issue 23 (3): a registration is not routable before it is acknowledged: while its id
/// is claimed across the cluster (the holder on the other node is probed), no task
/// reaches the new connection, whose first frame is its acknowledgement.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_being_claimed_gets_its_acknowledgement_before_any_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    // The holder on A stops reading: the probe waits --duplicate-probe-timeout (5 s).
    let first = device_ws(&a, "twin").await;
    wait_client(&b, "twin", Some("a")).await;
    let mut second = Ws::connect(&b.ws()).await;
    second
        .send(json!({"type": "register", "status": "ok", "client_type": "device", "client_id": "twin"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Meanwhile, B's clients and dispatches do not see the newcomer.
    let (_, v) = get(&format!("{}/api/clients", b.url())).await;
    let listed: Vec<&Value> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["client_id"] == "twin")
        .collect();
    assert!(listed.iter().all(|c| c["node"] == "a"), "{v}");
    let _ = dispatch(&b, plan("twin", "echo early")).await;
    let first_frame = second.next_text(Duration::from_secs(15)).await.unwrap();
    assert_eq!(first_frame["type"], "heartbeat", "{first_frame}");
    assert_eq!(first_frame["status"], "ok", "{first_frame}");
    drop(first);
}

/// Issue 23 ("an answer is true"): a dispatch repeating a known `session_id` with the
/// same target and request is a retry, answered as the first time on any node; another
/// request under that id is `409`.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_dispatch_with_its_session_id_is_answered_as_the_first_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (_redis, a, b) = two_nodes(tmp.path());
    let _dev = b.device("dev", &[]);
    wait_client(&a, "dev", Some("b")).await;
    let mut body = plan("dev", "echo once");
    body["session_id"] = json!("retry-1");
    let (status, first) = dispatch(&a, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    for srv in [&a, &b, &a] {
        let (status, again) = dispatch(srv, body.clone()).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again, first);
    }
    let done = wait_result(&a, "retry-1", |v| v["status"] == "done").await;
    assert_eq!(stdout_of(&done), "once\n");
    let (status, again) = dispatch(&b, body.clone()).await;
    assert_eq!((status, &again), (200, &first));
    body["request"] = json!("another request");
    let (status, v) = dispatch(&a, body).await;
    assert_eq!(status, 409, "{v}");
    // It ran once.
    let (_, list) = get(&format!("{}/api/sessions?client_id=dev", a.url())).await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");
}

/// Issue 23 (5): a session the store holds live under a healthy node that does not run
/// it (its write landed while the node saw it fail) is ended `lost_in_flight`.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_stored_live_under_a_node_that_does_not_run_it_ends_lost_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let (redis, a, _b) = two_nodes(tmp.path());
    let now = chrono::Utc::now().timestamp_micros();
    let record = json!({"session_id": "orphan", "task_name": "orphan", "request": "x",
        "origin": "http", "requester": null, "executor": "dev", "platform": "linux",
        "state": "running", "reason": null, "error": null, "result": null,
        "created_at": now, "started_at": now, "finished_at": null, "echo_received": true});
    redis.cli(&["SET", "{aip}:s:orphan", &record.to_string()]);
    redis.cli(&[
        "HSET",
        "{aip}:m:orphan",
        "t",
        "orphan",
        "r",
        "",
        "e",
        "dev",
        "n",
        "b",
        "x",
        "",
    ]);
    redis.cli(&["ZADD", "{aip}:created", &now.to_string(), "orphan"]);
    redis.cli(&["HSET", "{aip}:live", "orphan", "b"]);
    let url = format!("{}/api/task_result/orphan", a.url());
    let ended = poll(&url, None, Duration::from_secs(20), |v| {
        v["status"] == "done"
    })
    .await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["reason"], "lost_in_flight", "{ended}");
}

/// Issue 23 (7): the `task_end` of a session a constellation opened on another node
/// reaches it even when forwarding gave up in a Redis outage (here Redis is killed as
/// the session ends and restarts from its append-only file 16 s later, longer than
/// forwarding retries), and says what the store says.
#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_remote_task_gets_its_task_end_after_a_redis_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut redis, a, b) = two_nodes(tmp.path());
    let mut dev = device_ws(&b, "dev").await;
    wait_client(&a, "dev", Some("b")).await;
    let mut k = constellation(&a, "galaxy", None).await;
    k.send(command_task("galaxy", "k-1", "echo x")).await;
    assert_eq!(k.recv().await["session_id"], "k-1");
    let cmd = dev.recv().await;
    assert_eq!(cmd["type"], "command", "{cmd}");

    redis.kill9();
    dev.send(results_for(&cmd, "dev")).await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    redis.restart();

    let end = loop {
        match k.next_text(Duration::from_secs(30)).await {
            Ok(f) if f["type"] == "task_end" => break f,
            Ok(_) => {}
            Err(e) => panic!(
                "no task_end: {e:?}\n--- node a:\n{}\n--- node b:\n{}",
                a.proc.output(),
                b.proc.output()
            ),
        }
    };
    assert_eq!(end["session_id"], "k-1", "{end}");
    assert_eq!(end["status"], "completed", "{end}");
    let stored = wait_result(&a, "k-1", |v| v["status"] == "done").await;
    assert_eq!(stored["state"], "completed", "{stored}");
}
