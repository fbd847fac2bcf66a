//! Fleet jobs as users run them: `aip run` and `aip job` (the real binary) against a real
//! `aip serve` and real `aip device`s with tags, all child processes on real sockets —
//! the plain-mode progress lines, the summary table and the exit codes; and a job whose
//! server is killed (`kill -9`) and restarted on the same data dir.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use aip_testkit::process as support;
use aip_testkit::{expect_ack, expect_command, Ws};
use serde_json::{json, Value};
use support::{Server, Terminal};

/// The devices of these tests: three web servers and a database, all linux.
fn fleet(srv: &Server) -> Vec<support::Proc> {
    [
        ("web-1", "web"),
        ("web-2", "web"),
        ("web-3", "web"),
        ("db-1", "db"),
    ]
    .iter()
    .map(|(id, role)| srv.device(id, &["--tag", &format!("role={role}"), "--tag", "rack=4"]))
    .collect()
}

/// `aip <subcommand> --url <srv> <args…>`: the URL before a `--` (after it, everything is
/// the command line to run).
fn aip(srv: &Server, args: &[&str]) -> support::Run {
    let url = srv.url();
    let mut all = vec![args[0], "--url", &url];
    all.extend_from_slice(&args[1..]);
    support::run(&all)
}

#[test]
fn aip_run_prints_a_line_per_device_then_a_table_and_exits_0_only_when_all_completed() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let _devices = fleet(&srv);

    let ok = aip(
        &srv,
        &[
            "run",
            "--select",
            "role=web",
            "--platform",
            "linux",
            "--batch",
            "2",
            "--",
            "echo",
            "hello",
        ],
    );
    ok.expect_code(0)
        .stdout_has(&[
            "DEVICE  STATE      EXIT  TOOK",
            "web-1   completed  0",
            "hello",
            ": completed: 3 completed of 3\n",
        ])
        .stderr_has(&["3 devices, 2 at a time", "[1/3] web-", "[3/3] web-"]);
    assert!(!ok.stdout.contains("db-1"), "{ok:#?}");

    // One failure stops the rollout (batch 1): the rest are skipped, and the exit is 1.
    let failed = aip(
        &srv,
        &[
            "run",
            "--client",
            "web-*,db-1",
            "--batch",
            "1",
            "--max-failures",
            "1",
            "--",
            "echo oops >&2; exit 3",
        ],
    );
    failed.expect_code(1).stdout_has(&[
        "db-1    failed                  3",
        "oops",
        "web-1   skipped (max_failures)  -     -",
        "Not started: max_failures was reached",
        ": failed (max_failures): 1 failed, 3 skipped of 4\n",
    ]);

    // --json: the job's document, nothing else on stdout.
    let raw = aip(
        &srv,
        &["run", "--json", "--select", "role=db", "--", "true"],
    );
    raw.expect_code(0);
    let job: Value = serde_json::from_str(raw.stdout.trim()).unwrap();
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["members"][0]["client_id"], "db-1");
    let id = job["job_id"].as_str().unwrap();

    // `aip job` shows a past job the same way, with the same exit code.
    aip(&srv, &["job", id])
        .expect_code(0)
        .stdout_has(&["db-1    completed  0", ": completed: 1 completed of 1"]);

    // Nothing matches: a clear refusal naming the selector.
    aip(
        &srv,
        &[
            "run",
            "--select",
            "role=cache",
            "--platform",
            "linux",
            "--",
            "true",
        ],
    )
    .expect_code(1)
    .stderr_has(&["No connected device matches the selector platform=linux tag=role=cache"]);
    // `aip clients` takes the same selector.
    aip(&srv, &["clients", "--select", "role=db"])
        .expect_code(0)
        .stdout_has(&["db-1", "tags rack=4,role=db"]);
}

#[test]
fn bad_job_command_lines_exit_2_and_a_cancelled_job_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let _devices = fleet(&srv);
    for (args, says) in [
        (vec!["run", "--", "uptime"], "say which devices"),
        (
            vec!["run", "--select", "role"],
            "--select 'role' is not key=value",
        ),
        (
            vec!["run", "--select", "role=web"],
            "give a request, or a command after --",
        ),
    ] {
        aip(&srv, &args).expect_code(2).stderr_has(&[says]);
    }

    let detached = aip(
        &srv,
        &[
            "run", "--detach", "--json", "--select", "role=web", "--batch", "1", "--", "sleep 30",
        ],
    );
    detached.expect_code(0);
    let job: Value = serde_json::from_str(detached.stdout.trim()).unwrap();
    let id = job["job_id"].as_str().unwrap().to_owned();
    wait_member_running(&srv, &id, 0);
    aip(&srv, &["job", &id, "--cancel"])
        .expect_code(3)
        .stdout_has(&[
            "web-1   cancelled",
            "web-2   skipped (cancelled)",
            ": cancelled: 1 cancelled, 2 skipped of 3",
        ]);
    aip(&srv, &["job", &id, "--cancel"])
        .expect_code(1)
        .stderr_has(&["Job already finished"]);
}

#[test]
fn on_a_terminal_aip_run_draws_a_bar_and_a_line_per_running_device_and_ctrl_c_detaches() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let _devices = fleet(&srv);
    let run = format!(
        "run --url {} --select role=web --batch 2 -- 'sleep 1; echo done'",
        srv.url()
    );
    let mut term = Terminal::run(&run);
    // The overall bar with its counts, and a line for each device running.
    term.wait_for("2 running, 1 pending");
    term.wait_for("web-1");
    term.wait_for("running");
    assert_eq!(term.exit_code(), Some(0), "{}", term.text());
    let screen = term.text();
    assert!(screen.contains("3 completed of 3"), "{screen}");
    assert!(
        !screen.contains("[1/3]"),
        "no plain lines on a terminal: {screen}"
    );

    // Without TERM nothing can be drawn: plain lines.
    let mut plain = Terminal::run_as(&run, None);
    assert_eq!(plain.exit_code(), Some(0), "{}", plain.text());
    assert!(plain.text().contains("[3/3] web-"), "{}", plain.text());

    // Ctrl-C stops following; the job keeps running and the message says how to follow it.
    let long = format!("run --url {} --select role=db -- 'sleep 5'", srv.url());
    let mut term = Terminal::run(&long);
    term.wait_for("1 running");
    term.type_keys(b"\x03");
    assert_eq!(term.exit_code(), Some(130), "{}", term.text());
    assert!(
        term.text().contains("keeps running (aip job "),
        "{}",
        term.text()
    );
}

/// Job `id` as `aip job --json --no-wait` prints it.
fn get(srv: &Server, path: &str) -> Value {
    let out = support::run(&["job", "--json", "--no-wait", "--url", &srv.url(), path]);
    serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null)
}

/// Waits until member `i` of job `id` is running.
fn wait_member_running(srv: &Server, id: &str, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = get(srv, id);
        if job["members"][i]["state"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "member {i} not running: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WebSocket device with a `role=web` tag that takes pushed tasks by hand.
async fn ws_device(srv: &Server, id: &str) -> Ws {
    let mut ws = Ws::connect(&srv.ws()).await;
    ws.send(
        json!({"type": "register", "status": "ok", "client_type": "device",
        "client_id": id, "metadata": {"platform": "linux", "tags": {"role": "web"}}}),
    )
    .await;
    assert_eq!(ws.recv().await["status"], "ok");
    ws
}

/// Takes the pushed task and echoes it; returns the session id.
async fn take_task(ws: &mut Ws, id: &str) -> String {
    let task = ws.recv().await;
    let sid = task["session_id"].as_str().unwrap().to_owned();
    ws.send(
        json!({"type": "task", "status": "continue", "client_id": id,
                   "session_id": sid, "request": task["user_request"]}),
    )
    .await;
    expect_ack(ws, &sid).await;
    sid
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_survives_kill_9_its_finished_part_kept_and_its_live_part_failed_server_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let mut d1 = ws_device(&srv, "k-1").await;
    let mut d2 = ws_device(&srv, "k-2").await;
    let _d3 = ws_device(&srv, "k-3").await;
    let url = srv.url();
    let created = support::run(&[
        "run", "--detach", "--json", "--url", &url, "--client", "k-*", "--batch", "1", "--",
        "uptime",
    ]);
    created.expect_code(0);
    let job: Value = serde_json::from_str(created.stdout.trim()).unwrap();
    let id = job["job_id"].as_str().unwrap().to_owned();

    // k-1 completes, k-2 is running when the server dies, k-3 never started.
    let s1 = take_task(&mut d1, "k-1").await;
    let cmd = expect_command(&mut d1, &s1).await;
    d1.send(
        json!({"type": "command_results", "status": "continue", "client_id": "k-1",
        "session_id": s1, "prev_response_id": cmd["response_id"],
        "action_results": [{"status": "success", "namespace": "aip",
            "call_id": cmd["actions"][0]["call_id"],
            "result": {"success": true, "exit_code": 0, "stdout": "up 3 days\n", "stderr": ""}}]}),
    )
    .await;
    let _s2 = take_task(&mut d2, "k-2").await;
    let srv_ref = &srv;
    let id_ref = id.clone();
    tokio::task::block_in_place(|| wait_member_running(srv_ref, &id_ref, 1));
    // Past a flush of the job's progress (every 250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(srv); // SIGKILL

    let again = Server::start(tmp.path(), &[]);
    let shown = support::run(&["job", &id, "--url", &again.url()]);
    shown.expect_code(1).stdout_has(&[
        "k-1     completed                   0",
        "up 3 days",
        "k-2     failed (server_restarted)",
        "k-3     skipped (server_restarted)",
        ": failed (server_restarted): 1 completed, 1 failed, 1 skipped of 3",
    ]);
    let session = get(&again, &id)["members"][1]["session_id"].clone();
    assert!(session.is_string(), "{session}");
}
