//! Credentials from the command line: `aip keys new`, weak keys refused at start, and a
//! key file reloaded on SIGHUP by the running binary.

#![allow(clippy::unwrap_used)]

use aip_testkit::process as support;

use std::process::Command;
use std::time::{Duration, Instant};

use aip_server::keys::{sha256, to_hex};
use serde_json::json;
use support::{run, Server};

/// `aip keys new <args>`: the token and the TOML entry printed after it.
fn keys_new(args: &[&str]) -> (String, toml::Table) {
    let mut all = vec!["keys", "new"];
    all.extend_from_slice(args);
    let out = run(&all);
    out.expect_code(0);
    let (token, entry) = out.stdout.split_once('\n').unwrap();
    (token.to_owned(), toml::from_str(entry).unwrap())
}

#[test]
fn keys_new_prints_a_fresh_url_safe_token_and_an_entry_holding_only_its_hash() {
    let (token, file) = keys_new(&[
        "--role",
        "device",
        "--client-id",
        "laptop",
        "--client-id",
        "lab-*",
    ]);
    assert!(token.len() >= 32, "{token}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "not URL-safe: {token}"
    );
    let key = &file["key"].as_array().unwrap()[0];
    assert_eq!(key["role"].as_str(), Some("device"));
    assert_eq!(key["name"].as_str(), Some("laptop"));
    assert_eq!(
        key["token_sha256"].as_str(),
        Some(to_hex(&sha256(&token)).as_str())
    );
    assert_eq!(
        key["client_ids"],
        toml::Value::from(vec!["laptop", "lab-*"])
    );
    assert!(key.get("token").is_none());
    assert!(!toml::to_string(&file).unwrap().contains(&token));

    let (other, _) = keys_new(&["--role", "device", "--client-id", "laptop"]);
    assert_ne!(token, other, "tokens are random");
    let (_, file) = keys_new(&[
        "--role",
        "constellation",
        "--target",
        "lab-*",
        "--name",
        "orch",
    ]);
    let key = &file["key"].as_array().unwrap()[0];
    assert_eq!(
        (key["name"].as_str(), key["role"].as_str()),
        (Some("orch"), Some("constellation"))
    );
    assert_eq!(key["targets"], toml::Value::from(vec!["lab-*"]));
    let (_, file) = keys_new(&["--role", "operator"]);
    assert_eq!(file["key"][0]["name"].as_str(), Some("operator"));
}

#[test]
fn keys_new_refuses_options_that_do_not_fit_the_role_with_exit_2() {
    for (args, says) in [
        (&["--role", "device"][..], "needs client_ids"),
        (
            &["--role", "operator", "--target", "x"][..],
            "targets is for",
        ),
        (
            &["--role", "constellation", "--client-id", "x"][..],
            "client_ids is for",
        ),
    ] {
        let mut all = vec!["keys", "new"];
        all.extend_from_slice(args);
        run(&all).expect_code(2).stderr_has(&[says]);
    }
}

#[test]
fn a_weak_key_is_refused_at_start_with_exit_2_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let weak_file = dir.path().join("weak.toml");
    std::fs::write(
        &weak_file,
        "[[key]]\nname = \"w\"\nrole = \"operator\"\ntoken = \"short-two\"\n",
    )
    .unwrap();
    let weak_file = weak_file.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--api-key", "short-one"],
            "--api-key is shorter than 16 characters",
        ),
        (
            vec!["--keys", weak_file],
            "token is shorter than 16 characters",
        ),
    ] {
        let mut all = vec!["serve", "--port", "0", "--data-dir", data];
        all.extend_from_slice(&args);
        let out = run(&all);
        out.expect_code(2).stderr_has(&[says, "--allow-weak-key"]);
        assert!(
            !out.stderr.contains("short-one") && !out.stderr.contains("short-two"),
            "the key is echoed: {out:#?}"
        );
    }
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--api-key",
            "short-one",
            "--keys",
            weak_file,
            "--allow-weak-key",
        ],
    );
    for key in ["short-one", "short-two"] {
        server.aip(&["clients", "--api-key", key]).expect_code(0);
    }
}

/// Sends SIGHUP to the server and waits for the `n`th reload line holding `needle`.
fn hup_and_wait(server: &mut Server, needle: &str, n: usize) {
    let st = Command::new("kill")
        .args(["-HUP", &server.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.proc.output().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {needle:?}:\n{}",
            server.proc.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_to_the_file_works_after_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let ops = "ops-token-0123456789abcdef";
    let ops_entry = format!("[[key]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"{ops}\"\n");
    std::fs::write(&path, &ops_entry).unwrap();
    let mut server = Server::start(
        &dir.path().join("data"),
        &["--keys", path.to_str().unwrap()],
    );

    // Open before the reload, kept after it.
    let mut console = aip_testkit::Ws::connect(&format!("{}?token={ops}", server.ws())).await;
    console.send(json!({"type": "register", "status": "ok", "client_type": "constellation", "client_id": "console"})).await;
    assert_eq!(console.recv().await["status"], "ok");

    let out = run(&["keys", "new", "--role", "device", "--client-id", "laptop"]);
    let (token, entry) = out.stdout.split_once('\n').unwrap();
    let refused = tokio_tungstenite::connect_async(format!("{}?token={token}", server.ws())).await;
    assert!(refused.is_err(), "accepted before the reload");

    std::fs::write(&path, format!("{ops_entry}\n{entry}")).unwrap();
    hup_and_wait(&mut server, "key file reloaded", 1);
    let device = server.device("laptop", &["--api-key", token]);
    aip_testkit::assert_alive(&mut console, "console").await;
    server
        .aip(&["clients", "--api-key", ops])
        .expect_code(0)
        .stdout_has(&["laptop", "console"]);

    // A file that does not load leaves the keys in force.
    std::fs::write(&path, "[[key]]\nname = \"broken\"\n").unwrap();
    hup_and_wait(&mut server, "key file reload failed", 1);
    server.aip(&["clients", "--api-key", ops]).expect_code(0);
    assert!(
        !server.proc.output().contains(token) && !server.proc.output().contains(ops),
        "a token in the log"
    );
    drop(device);
}

/// With nothing to reload (no key file, no certificate), SIGHUP is logged and ignored: its
/// default action would end the server an operator meant to reload.
#[test]
fn sighup_without_anything_to_reload_leaves_the_server_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    hup_and_wait(&mut server, "nothing to reload", 1);
    hup_and_wait(&mut server, "nothing to reload", 2);
    server.aip(&["health"]).expect_code(0);
}
