//! The tool policy through the crate's public API, as the device agent uses it.

#![allow(clippy::unwrap_used)]

use aip_agent::policy::{CommandPolicy, ToolPolicy};
use aip_agent::tools::Policy;
use serde_json::{json, Map, Value};

fn shell(line: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("command".to_owned(), json!(line));
    m
}

/// The example policy file.
const POLICY: &str = include_str!("../examples/command-policy.toml");

fn loaded() -> ToolPolicy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    let cp = CommandPolicy::load(&path).unwrap();
    ToolPolicy::new(
        vec!["execute_command".into(), "fs.*".into()],
        vec!["*.delete_*".into()],
        false,
        Some(cp),
    )
}

#[test]
fn tool_rules() {
    let p = loaded();
    assert!(p.shell_enabled());
    assert_eq!(p.check("fs.read", &Map::new()), Ok(()));
    assert_eq!(
        p.check("fs.delete_file", &Map::new()),
        Err("Refused by policy: tool 'fs.delete_file' matches --deny-tool '*.delete_*'".into())
    );
    assert_eq!(
        p.check("read_file", &Map::new()),
        Err("Refused by policy: tool 'read_file' is not in any --allow-tool pattern".into())
    );
    let no_shell = ToolPolicy::new(vec![], vec![], true, None);
    assert!(!no_shell.shell_enabled());
    assert_eq!(
        no_shell.check("execute_command", &shell("ls")),
        Err("Refused by policy: execute_command is disabled (--no-shell)".into())
    );
}

#[test]
fn command_rules() {
    let p = loaded();
    let check = |line: &str| p.check("execute_command", &shell(line));
    assert_eq!(check("ls -la | grep x && git status"), Ok(()));
    assert_eq!(check(r#"echo "a;b""#), Ok(()));
    assert_eq!(check("/bin/ls"), Ok(()));
    assert_eq!(check("VAR=1 ls"), Ok(()));
    assert_eq!(
        check("ls | rm x"),
        Err("Refused by command policy: 'rm' is in denied_commands".into())
    );
    assert_eq!(
        check("python3 x.py"),
        Err("Refused by command policy: 'python3' is not in allowed_commands".into())
    );
    assert_eq!(
        check("git push origin"),
        Err(
            "Refused by command policy: arguments 'push origin' of 'git' match deny_args '*push*'"
                .into()
        )
    );
    assert_eq!(
        check("echo rm -rf /"),
        Err("Refused by command policy: command line contains denied pattern 'rm -rf /'".into())
    );
    assert!(check("echo $(id)")
        .unwrap_err()
        .starts_with("Refused by command policy: command substitution '$(' is not allowed"));
    // Non-shell tools and a missing command are not the command policy's business.
    assert_eq!(p.check("fs.write", &shell("rm x")), Ok(()));
    assert_eq!(p.check("execute_command", &Map::new()), Ok(()));
}

#[test]
fn unknown_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo-policy.toml");
    std::fs::write(&path, "allowed_comands = [\"ls\"]\n").unwrap();
    let err = format!("{:#}", CommandPolicy::load(&path).unwrap_err());
    assert!(err.contains("typo-policy.toml"), "{err}");
    assert!(err.contains("allowed_comands"), "{err}");
}
