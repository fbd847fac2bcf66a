//! The client commands as users run them: the real `aip` binary against a real `aip
//! serve` and the real device agent `aip device`, all child processes on real sockets.
//! What is printed, the exit codes (docs/src/cli.md, "Exit codes"), waiting, cancelling, listing;
//! usage errors; completions and manual pages.

#![allow(clippy::unwrap_used)]

use aip_testkit::process as support;

use serde_json::{json, Value};
use support::{run, Proc, Server, Terminal};

// ## Outcomes: what is printed and how `aip` exits

#[test]
fn dispatch_wait_exits_0_when_completed_and_1_when_failed_showing_commands_codes_and_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let _dev = srv.device("dev", &[]);

    srv.aip(&[
        "dispatch",
        "--target",
        "dev",
        "--task-name",
        "ok",
        "--command",
        "echo hello",
        "--wait",
    ])
    .expect_code(0)
    .stdout_has(&[
        "state: completed after",
        "1. success  (exit 0,",
        "$ echo hello",
        "stdout | hello",
    ]);

    let failing = "echo partial; echo oops >&2; exit 3";
    let bad = srv.aip(&[
        "dispatch",
        "--target",
        "dev",
        "--task-name",
        "bad",
        "--command",
        failing,
        "--command",
        "echo never",
        "--wait",
    ]);
    bad.expect_code(1).stdout_has(&[
        "state: failed",
        "error: Command 'execute_command' failed: Command exited with code 3",
        "round 1\n  1. failure: Command exited with code 3  (exit 3,",
        &format!("$ {failing}"),
        "stdout | partial",
        "stderr | oops",
    ]);
    // The plan stopped at the failure: the second command never ran.
    assert!(!bad.stdout.contains("round 2"), "{bad:#?}");

    // `aip result` later says the same, with the same exit codes.
    srv.aip(&["result", "ok"])
        .expect_code(0)
        .stdout_has(&["stdout | hello"]);
    srv.aip(&["result", "bad"])
        .expect_code(1)
        .stdout_has(&["stderr | oops"]);
    let raw = srv.aip(&["result", "bad", "--json"]);
    raw.expect_code(1);
    let v: Value = serde_json::from_str(raw.stdout.trim()).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    srv.aip(&["result", "no-such-task"])
        .expect_code(1)
        .stderr_has(&["404", "Task not found"]);

    // Long output is cut, saying how much and how to see all of it.
    srv.aip(&[
        "dispatch",
        "--target",
        "dev",
        "--task-name",
        "long",
        "--command",
        "seq 1 100",
        "--wait",
    ])
    .expect_code(0)
    .stdout_has(&[
        "stdout | 20\n",
        "stdout … 80 more lines not shown",
        "`aip result ",
        " --full` shows all of it",
    ]);
    let whole = srv.aip(&["result", "long", "--full"]);
    whole.expect_code(0).stdout_has(&["stdout | 100\n"]);
    assert!(!whole.stdout.contains("not shown"), "{whole:#?}");

    // ## aip sessions: a table, newest first, with relative times and filters
    let all = srv.aip(&["sessions"]);
    all.expect_code(0).stdout_has(&[
        "SESSION", "TASK", "DEVICE", "STATE", "CREATED", "TOOK", "just now",
    ]);
    let tasks: Vec<&str> = all
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(tasks, ["long", "bad", "ok"], "{all:#?}");
    let failed = srv.aip(&["sessions", "--state", "failed"]);
    failed.expect_code(0).stdout_has(&["bad", "failed"]);
    assert_eq!(failed.stdout.lines().count(), 2, "{failed:#?}");
    srv.aip(&["sessions", "--device", "someone-else"])
        .expect_code(0)
        .stdout_has(&["no sessions"]);
    srv.aip(&["sessions", "--since", "1h", "--limit", "2"])
        .expect_code(0)
        .stdout_has(&["long", "bad"]);
    let listed = srv.aip(&["sessions", "--json"]);
    let v: Value = serde_json::from_str(listed.stdout.trim()).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 3, "{v}");
}

#[test]
fn waiting_gives_up_at_timeout_with_3_and_a_cancelled_session_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let _dev = srv.device("dev", &[]);

    let started = std::time::Instant::now();
    srv.aip(&[
        "dispatch",
        "--target",
        "dev",
        "--task-name",
        "slow",
        "--command",
        "sleep 30",
        "--wait",
        "--timeout",
        "1s",
    ])
    .expect_code(3)
    .stderr_has(&[
        "gave up waiting after 1.0 s",
        "still running",
        "aip cancel ",
    ]);
    assert!(
        started.elapsed().as_secs() < 10,
        "--timeout 1s took {:?}",
        started.elapsed()
    );

    srv.aip(&["result", "slow"])
        .expect_code(4)
        .stdout_has(&["state: running", "not ended yet: `aip result "]);
    srv.aip(&["sessions", "--state", "running"])
        .expect_code(0)
        .stdout_has(&["slow", "running"]);
    srv.aip(&["cancel", "slow"])
        .expect_code(0)
        .stdout_has(&["cancelled session "]);
    srv.aip(&["result", "slow"])
        .expect_code(3)
        .stdout_has(&["state: cancelled (cancelled)", "error: Task was cancelled"]);
    srv.aip(&["cancel", "slow"])
        .expect_code(1)
        .stderr_has(&["already ended: cancelled"]);
    srv.aip(&["sessions", "--state", "running"])
        .expect_code(0)
        .stdout_has(&["no sessions"]);
}

#[test]
fn a_session_that_runs_past_its_time_limit_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &["--session-timeout", "1.5s"]);
    let _dev = srv.device("dev", &[]);
    srv.aip(&[
        "dispatch",
        "--target",
        "dev",
        "--command",
        "sleep 20",
        "--wait",
        "--timeout",
        "1m",
    ])
    .expect_code(3)
    .stdout_has(&["state: failed (timeout)"]);
}

#[test]
fn ctrl_c_while_waiting_off_a_terminal_exits_130_and_leaves_the_session_running() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let _dev = srv.device("dev", &[]);
    let url = srv.url();
    let mut waiting = Proc::spawn(&[
        "dispatch",
        "--url",
        &url,
        "--target",
        "dev",
        "--task-name",
        "held",
        "--command",
        "sleep 30",
        "--wait",
    ]);
    waiting.wait_for_line("waiting for session");
    let st = std::process::Command::new("kill")
        .args(["-INT", &waiting.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(waiting.wait_exit(), Some(130), "{}", waiting.output());
    let said = waiting.output();
    assert!(
        said.contains("interrupted; session ") && said.contains("aip cancel "),
        "{said}"
    );
    srv.aip(&["result", "held"]).expect_code(4);
    srv.aip(&["cancel", "held"]).expect_code(0);
}

#[test]
fn waiting_rides_out_a_server_restart_and_reports_how_the_session_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &[]);
    let _dev = srv.device("dev", &[]);
    let url = srv.url();
    let mut waiting = Proc::spawn(&[
        "dispatch",
        "--url",
        &url,
        "--target",
        "dev",
        "--task-name",
        "across",
        "--command",
        "sleep 30",
        "--wait",
    ]);
    waiting.wait_for_line("waiting for session");
    srv.aip(&["result", "across"]).expect_code(4);
    let port = srv.port;
    drop(srv); // SIGKILL
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _again = Server::start_on(port, &data, &[]);
    assert_eq!(waiting.wait_exit(), Some(1), "{}", waiting.output());
    let said = waiting.output();
    assert!(said.contains("retrying"), "{said}");
    assert!(said.contains("state: failed (server_restarted)"), "{said}");
}

/// On a terminal: the live line, and Ctrl-C asks before it cancels anything.
#[test]
fn on_a_terminal_waiting_shows_a_live_line_and_ctrl_c_asks_before_cancelling() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let _dev = srv.device("dev", &[]);
    let wait = |task: &str| {
        format!(
            "dispatch --url {} --target dev --task-name {task} --command 'sleep 30' --wait",
            srv.url()
        )
    };

    // "y": cancelled, and how it ended is printed.
    let mut term = Terminal::run(&wait("tty-yes"));
    term.wait_for("running on dev · step 1: execute_command");
    term.type_keys(b"\x03");
    term.wait_for("[y/N]");
    assert!(term.text().contains("Cancel session "), "{}", term.text());
    term.type_keys(b"y\n");
    assert_eq!(term.exit_code(), Some(3), "{}", term.text());
    assert!(
        term.text().contains("state: cancelled (cancelled)"),
        "{}",
        term.text()
    );
    srv.aip(&["result", "tty-yes"]).expect_code(3);

    // "n": nothing is cancelled; the wait stops with 130.
    let mut term = Terminal::run(&wait("tty-no"));
    term.wait_for("running on dev");
    term.type_keys(b"\x03");
    term.wait_for("[y/N]");
    term.type_keys(b"n\n");
    assert_eq!(term.exit_code(), Some(130), "{}", term.text());
    assert!(
        term.text().contains("interrupted; session "),
        "{}",
        term.text()
    );
    srv.aip(&["result", "tty-no"]).expect_code(4);
    srv.aip(&["cancel", "tty-no"]).expect_code(0);

    // A terminal without `TERM`: no live line to draw, a plain one instead; Ctrl-C asks.
    let mut term = Terminal::run_as(&wait("tty-dumb"), None);
    term.wait_for("waiting for session");
    term.type_keys(b"\x03");
    term.wait_for("[y/N]");
    term.type_keys(b"y\n");
    assert_eq!(term.exit_code(), Some(3), "{}", term.text());
}

#[test]
fn a_transcript_the_device_ran_with_its_own_model_prints_as_steps_not_json() {
    use aip_llm::scripted::{call, finish, Mock};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let model = rt
        .block_on(Mock::start(vec![
            call(
                "c1",
                "execute_command",
                json!({"command": "echo from-the-model"}),
            ),
            finish("completed", "All good."),
        ]))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let base = format!("http://{}/v1", model.addr);
    let _dev = srv.device("dev", &["--llm-base-url", &base, "--llm-model", "scripted"]);
    let out = srv.aip(&[
        "dispatch",
        "--target",
        "dev",
        "Say something",
        "--wait",
        "--timeout",
        "30",
    ]);
    out.expect_code(0).stdout_has(&[
        "state: completed",
        "step 1",
        "→ execute_command {\"command\":\"echo from-the-model\"}",
        "stdout | from-the-model",
        "tokens: 200 prompt + 40 completion",
        "answer: All good.",
    ]);
    assert!(
        !out.stdout.contains("\"transcript\""),
        "raw JSON printed: {out:#?}"
    );
}

// ## Bad command lines exit 2; an unreachable server exits 1

#[test]
fn bad_command_lines_exit_2_with_a_message_and_an_unreachable_server_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let empty = empty.to_str().unwrap();
    let rows: &[(&[&str], &str)] = &[
        (
            &["dispatch", "--target", "d", "r", "--timeout", "5"],
            "--wait",
        ),
        (
            &[
                "dispatch",
                "--target",
                "d",
                "r",
                "--wait",
                "--timeout",
                "soon",
            ],
            "not a duration",
        ),
        (
            &["dispatch", "--target", "d", "r", "--wait", "--timeout", "0"],
            "greater than zero",
        ),
        (
            &["result", "x", "--url", "ftp://127.0.0.1"],
            "not an http:// or https:// URL",
        ),
        (
            &["clients", "--ca-cert", "/nonexistent/ca.pem"],
            "cannot read CA certificate file",
        ),
        (&["clients", "--ca-cert", empty], "holds no PEM certificate"),
        (&["sessions", "--limit", "0"], "--limit"),
        (&["sessions", "--state", "sleeping"], "--state"),
        (
            &["device", "--server", "http://127.0.0.1:1/ws"],
            "not a ws:// or wss:// URL",
        ),
        (
            &[
                "device",
                "--server",
                "wss://127.0.0.1:1/ws",
                "--ca-cert",
                empty,
            ],
            "holds no PEM certificate",
        ),
        (&["device", "--heartbeat-interval=-5"], "negative"),
        (&["serve", "--retention", "7 fortnights"], "not a duration"),
        (&["completions", "tcsh"], "tcsh"),
    ];
    for (args, says) in rows {
        let r = run(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:#?}");
        assert!(
            r.stderr.contains(says),
            "{args:?} should say {says:?}: {r:#?}"
        );
    }
    // Port 1 on loopback: nothing listens there.
    run(&["clients", "--url", "http://127.0.0.1:1"])
        .expect_code(1)
        .stderr_has(&["cannot reach http://127.0.0.1:1"]);
}

// ## Completions and manual pages

#[test]
fn completions_and_manual_pages_are_generated_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bash = run(&["completions", "bash"]);
    bash.expect_code(0);
    let script = tmp.path().join("aip.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p aip", script.display()))
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{loaded:?}");
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("aip"),
        "{loaded:?}"
    );
    for sub in ["dispatch", "sessions", "cancel", "completions", "man"] {
        assert!(bash.stdout.contains(sub), "bash completion lacks {sub}");
    }
    run(&["completions", "zsh"])
        .expect_code(0)
        .stdout_has(&["#compdef aip"]);
    run(&["completions", "fish"])
        .expect_code(0)
        .stdout_has(&["complete -c aip"]);

    run(&["man"])
        .expect_code(0)
        .stdout_has(&[".TH aip 1", "dispatch", "sessions", "cancel"]);
    let dir = tmp.path().join("man");
    run(&["man", "--dir", dir.to_str().unwrap()]).expect_code(0);
    let page = std::fs::read_to_string(dir.join("aip-dispatch.1")).unwrap();
    assert!(
        page.contains("\\-\\-timeout") && page.contains("\\-\\-ca\\-cert"),
        "{page}"
    );
    assert!(dir.join("aip-serve.1").is_file() && dir.join("aip.1").is_file());
}
