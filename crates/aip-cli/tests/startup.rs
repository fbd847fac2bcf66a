//! How `aip serve` starts: everything is opened before it listens, one server per data
//! directory, and every start-up error names the path or option at fault (exit code 1;
//! 2 for an option value that makes no sense).

#![allow(clippy::unwrap_used)]

use aip_testkit::process as support;

use std::fs::File;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, BIN};

fn serve(args: &[&str]) -> Command {
    let mut c = Command::new(&*BIN);
    c.arg("serve").args(args).env_remove("RUST_LOG");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_server_on_the_same_data_dir_exits_naming_the_directory_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let log = dir.path().join("first.log");
    let first = Running(
        serve(&[
            "--port",
            &port.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(Instant::now() < deadline, "the first server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = serve(&[
        "--port",
        &free_port().to_string(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains(data.to_str().unwrap()), "{err}");
    assert!(err.contains(&format!("pid {}", first.0.id())), "{err}");
    assert!(!err.contains("listening"), "nothing is served: {err}");
    drop(first);
    // Once the holder is gone (even by SIGKILL), the directory is free again.
    let third = Running(
        serve(&[
            "--port",
            &free_port().to_string(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(File::create(dir.path().join("third.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(dir.path().join("third.log"))
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(Instant::now() < deadline, "the directory stayed locked");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(third);
}

#[test]
fn a_data_dir_that_cannot_be_opened_fails_before_listening_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let out = serve(&[
        "--port",
        &free_port().to_string(),
        "--data-dir",
        not_a_dir.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(not_a_dir.to_str().unwrap()), "{err}");
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn option_values_that_make_no_sense_are_usage_errors() {
    for (opt, value) in [
        ("--max-connections", "0"),
        ("--max-active-sessions", "0"),
        ("--max-results", "0"),
        ("--max-message-size", "100"),
        ("--client-timeout", "0"),
        ("--port", "70000"),
    ] {
        let out = serve(&[opt, value]).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{opt} {value}: {err}");
        assert!(err.contains(opt), "{opt}: {err}");
    }
}

#[test]
fn the_connection_cap_follows_the_open_file_limit_raised_to_its_hard_value() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("limits.log");
    let script = format!(
        "ulimit -Sn 1024 && ulimit -Hn 4096 && exec '{}' serve --port {} --data-dir '{}'",
        *BIN,
        free_port(),
        dir.path().join("data").display()
    );
    let server = Running(
        Command::new("sh")
            .args(["-c", &script])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening") {
            break text;
        }
        assert!(Instant::now() < deadline, "never listened:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(server);
    let line = text
        .lines()
        .find(|l| l.contains("open-file limit"))
        .unwrap();
    assert!(line.contains("open_files=4096"), "{line}");
    assert!(line.contains("max_connections=3840"), "{line}");
}
