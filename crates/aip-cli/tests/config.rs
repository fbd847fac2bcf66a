//! `--config FILE` for `aip serve` and `aip device`: keys are the long options in
//! snake_case; flag > environment > file > default; unknown keys are refused by name;
//! `--print-config` shows the effective settings.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aip_testkit::process as support;

use support::{free_port, BIN};

fn aip(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(&*BIN);
    c.args(args);
    for k in [
        "AIP_PORT",
        "AIP_MAX_RESULTS",
        "AIP_API_KEY",
        "AIP_CONFIG",
        "AIP_DATA_DIR",
        "RUST_LOG",
        "AIP_TAGS",
        "AIP_CLIENT_ID",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "aip.toml",
        "port = 5123\nmax_results = 42\nretention = \"12h\"\napi_key = \"from-the-file-0123456789\"\nlocal = true\n",
    );
    let out = aip(
        &[
            "serve",
            "--config",
            &file,
            "--retention",
            "1d",
            "--print-config",
        ],
        &[("AIP_MAX_RESULTS", "7")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        line(&text, "port").starts_with("port = 5123"),
        "file: {text}"
    );
    assert!(
        line(&text, "max_results").starts_with("max_results = 7 "),
        "env: {text}"
    );
    assert!(line(&text, "retention").contains("\"1d\""), "flag: {text}");
    assert!(line(&text, "local").starts_with("local = true"), "{text}");
    assert!(
        line(&text, "max_active_sessions").contains("# default"),
        "{text}"
    );
    assert!(
        !text.contains("from-the-file"),
        "the key is not printed: {text}"
    );
    assert!(line(&text, "api_key").contains("<hidden>"));
}

#[test]
fn unknown_keys_and_bad_values_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(dir.path(), "u.toml", "port = 5000\nmax_conections = 10\n");
    let out = aip(&["serve", "--config", &unknown], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("max_conections") && err.contains("u.toml"),
        "{err}"
    );

    let bad = write(dir.path(), "b.toml", "max_connections = 0\n");
    let out = aip(&["serve", "--config", &bad], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--max-connections"), "{err}");

    let nested = write(dir.path(), "n.toml", "[server]\nport = 1\n");
    let out = aip(&["serve", "--config", &nested], &[]);
    assert_eq!(out.status.code(), Some(2));

    let out = aip(&["serve", "--config", "/nonexistent/aip.toml"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/aip.toml"), "{err}");
}

#[test]
fn a_server_runs_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = write(
        dir.path(),
        "aip.toml",
        &format!(
            "port = {port}\ndata_dir = \"{}\"\nlog_level = \"WARNING\"\n",
            dir.path().join("data").display()
        ),
    );
    let mut child = Command::new(&*BIN)
        .args(["serve", "--config", &file])
        .env_remove("AIP_PORT")
        .env_remove("AIP_DATA_DIR")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "no server on the file's port");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dir.path().join("data").join("aip.lock").exists());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_device_reads_lists_from_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "device.toml",
        "client_id = \"rack4-web1\"\ntag = [\"rack=4\", \"role=web\"]\nno_shell = true\n",
    );
    let out = aip(&["device", "--config", &file, "--print-config"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        line(&text, "client_id").contains("\"rack4-web1\""),
        "{text}"
    );
    assert!(
        line(&text, "tag").contains("[\"rack=4\", \"role=web\"]"),
        "{text}"
    );
    assert!(
        line(&text, "no_shell").starts_with("no_shell = true"),
        "{text}"
    );
}
