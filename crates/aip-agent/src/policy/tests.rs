//! The policies against the command lines they must refuse and let through.

use serde_json::{json, Map, Value};

use super::*;
use crate::tools::Policy;

fn params(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn cmd(line: &str) -> Map<String, Value> {
    params(json!({ "command": line }))
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

/// The example policy file (also shown in the book, docs/src/device-agent.md).
const EXAMPLE: &str = include_str!("../../examples/command-policy.toml");

fn example() -> CommandPolicy {
    CommandPolicy::from_toml_str(EXAMPLE).unwrap()
}

fn deny_only() -> CommandPolicy {
    CommandPolicy::from_toml_str(r#"denied_commands = ["rm", "mkfs*"]"#).unwrap()
}

#[test]
fn wildcards() {
    assert!(wildcard_match("*", ""));
    assert!(wildcard_match("*", "anything.at_all"));
    assert!(wildcard_match("fs.*", "fs.read"));
    assert!(!wildcard_match("fs.*", "fsx.read"));
    assert!(wildcard_match("*.delete_*", "fs.delete_file"));
    assert!(!wildcard_match("*.delete_*", "delete_file"));
    assert!(wildcard_match("read_?ile", "read_file"));
    assert!(!wildcard_match("read_?ile", "read_ile"));
    assert!(wildcard_match("a*b*c", "aXbYbZc"));
    assert!(!wildcard_match("a*b*c", "aXbYbZ"));
    assert!(wildcard_match("*push*", "push origin"));
    assert!(wildcard_match("**", "x"));
    assert!(wildcard_match("*x", "*x"));
    assert!(!wildcard_match("execute_command", "execute_commands"));
    assert!(wildcard_match("é?", "éü"));
}

#[test]
fn no_rules_allow_everything() {
    let p = ToolPolicy::default();
    assert_eq!(p.check("execute_command", &cmd("rm -rf ~")), Ok(()));
    assert_eq!(p.check("anything", &Map::new()), Ok(()));
    assert!(p.shell_enabled());
}

#[test]
fn deny_wins_over_allow() {
    let p = ToolPolicy::new(s(&["fs.*", "read_file"]), s(&["*.delete_*"]), false, None);
    assert_eq!(p.check("fs.read", &Map::new()), Ok(()));
    assert_eq!(p.check("read_file", &Map::new()), Ok(()));
    assert_eq!(
        p.check("fs.delete_file", &Map::new()),
        Err("Refused by policy: tool 'fs.delete_file' matches --deny-tool '*.delete_*'".into())
    );
    assert_eq!(
        p.check("execute_command", &cmd("ls")),
        Err("Refused by policy: tool 'execute_command' is not in any --allow-tool pattern".into())
    );
    assert!(!p.shell_enabled());
    assert!(p.allows_tool("fs.read"));
    assert!(!p.allows_tool("fs.delete_x"));
}

#[test]
fn deny_only_tools() {
    let p = ToolPolicy::new(vec![], s(&["execute_command"]), false, None);
    assert_eq!(p.check("read_file", &Map::new()), Ok(()));
    assert_eq!(
        p.check("execute_command", &cmd("ls")),
        Err(
            "Refused by policy: tool 'execute_command' matches --deny-tool 'execute_command'"
                .into()
        )
    );
    assert!(!p.shell_enabled());
}

#[test]
fn no_shell() {
    let p = ToolPolicy::new(vec![], vec![], true, None);
    assert!(!p.shell_enabled());
    assert!(!p.allows_tool("execute_command"));
    assert!(p.allows_tool("read_file"));
    assert_eq!(
        p.check("execute_command", &cmd("ls")),
        Err("Refused by policy: execute_command is disabled (--no-shell)".into())
    );
    assert_eq!(p.check("read_file", &Map::new()), Ok(()));
}

#[test]
fn command_policy_applies_only_to_the_shell_tool() {
    let p = ToolPolicy::new(vec![], vec![], false, Some(example()));
    assert_eq!(p.check("read_file", &cmd("rm -rf /")), Ok(()));
    assert_eq!(p.check("execute_command", &cmd("ls -la")), Ok(()));
    assert_eq!(
        p.check("execute_command", &cmd("rm x")),
        Err("Refused by command policy: 'rm' is in denied_commands".into())
    );
    // Missing or non-string command: the tool reports it.
    assert_eq!(p.check("execute_command", &Map::new()), Ok(()));
    assert_eq!(
        p.check("execute_command", &params(json!({"command": 3}))),
        Ok(())
    );
}

#[test]
fn rule_texts() {
    let p = example();
    assert_eq!(
        p.check("rm x"),
        Err("Refused by command policy: 'rm' is in denied_commands".into())
    );
    assert_eq!(
        p.check("python3 -c 'print(1)'"),
        Err("Refused by command policy: 'python3' is not in allowed_commands".into())
    );
    assert_eq!(
        p.check("git push origin"),
        Err(
            "Refused by command policy: arguments 'push origin' of 'git' match deny_args '*push*'"
                .into()
        )
    );
    assert_eq!(
        p.check("git log --force"),
        Err("Refused by command policy: arguments 'log --force' of 'git' match deny_args '*--force*'".into())
    );
    assert_eq!(
        p.check("git commit -m x"),
        Err("Refused by command policy: arguments 'commit -m x' of 'git' match no allow_args pattern".into())
    );
    assert_eq!(p.check("git status --short"), Ok(()));
    assert_eq!(p.check("git log --format='%H %s'"), Ok(()));
    assert_eq!(
        p.check("echo rm -rf /"),
        Err("Refused by command policy: command line contains denied pattern 'rm -rf /'".into())
    );
    assert_eq!(
        p.check(":(){ :|:& };:"),
        Err(
            "Refused by command policy: command line contains denied pattern ':(){ :|:& };:'"
                .into()
        )
    );
    assert_eq!(
        deny_only().check("mkfs.ext4 /dev/sda1"),
        Err("Refused by command policy: 'mkfs.ext4' matches denied_commands 'mkfs*'".into())
    );
}

#[test]
fn shell_operators_switch() {
    let p = CommandPolicy {
        allow_shell_operators: false,
        ..CommandPolicy::default()
    };
    assert_eq!(p.check("ls -la /tmp"), Ok(()));
    assert_eq!(p.check("echo 'a; b | c > d'"), Ok(()));
    for (line, op) in [
        ("ls; id", ";"),
        ("ls && id", "&&"),
        ("ls || id", "||"),
        ("ls | wc", "|"),
        ("sleep 9 &", "&"),
        ("echo x > f", ">"),
        ("echo x >> f", ">>"),
        ("cat < f", "<"),
        ("echo `id`", "`"),
        ("echo $(id)", "$("),
        ("echo \"$(id)\"", "$("),
        ("ls 2>&1", ">&"),
        ("(id)", "("),
        ("ls\nid", "\\n"),
    ] {
        assert_eq!(
            p.check(line),
            Err(format!(
                "Refused by command policy: shell operator '{op}' is not allowed"
            )),
            "{line}"
        );
    }
    // A trailing newline is not an operator.
    assert_eq!(p.check("ls\n"), Ok(()));
}

#[test]
fn every_segment_is_checked() {
    let p = example();
    assert_eq!(p.check("ls | grep x"), Ok(()));
    for line in [
        "ls | rm x",
        "ls; rm x",
        "ls && rm x",
        "ls || rm x",
        "ls & rm x",
        "ls\nrm x",
        "ls |& rm x",
        "(rm x)",
        "{ rm x; }",
        "! rm x",
        "if true; then rm x; fi",
        "while :; do rm x; done",
        "for f in a b; do rm $f; done",
    ] {
        let p = if line.contains("do") || line.contains("if") {
            deny_only()
        } else {
            example()
        };
        assert_eq!(
            p.check(line),
            Err("Refused by command policy: 'rm' is in denied_commands".into()),
            "{line}"
        );
    }
}

#[test]
fn quoting() {
    let p = example();
    assert_eq!(p.check(r#"echo "a;b""#), Ok(()));
    assert_eq!(p.check("echo 'a && rm x | b'"), Ok(()));
    assert_eq!(p.check(r"echo a\;rm x"), Ok(()));
    assert_eq!(p.check("echo \"it's\" # rm; don't"), Ok(()));
    // Quote removal: these are `rm` to the shell.
    for line in ["r'm' x", "\"rm\" x", r"\rm x", "r\"\"m x"] {
        assert_eq!(
            p.check(line),
            Err("Refused by command policy: 'rm' is in denied_commands".into()),
            "{line}"
        );
    }
    assert_eq!(
        p.check("echo 'unterminated"),
        Err(
            "Refused by command policy: cannot parse command line: unterminated single quote"
                .into()
        )
    );
    assert!(p.check("echo \"x").is_err());
    assert!(p.check("echo $(ls").is_err());
}

#[test]
fn path_prefixes_are_stripped() {
    let p = example();
    assert_eq!(p.check("/bin/ls -l"), Ok(()));
    assert_eq!(p.check("/usr/bin/git status"), Ok(()));
    assert_eq!(
        p.check("/bin/rm x"),
        Err("Refused by command policy: 'rm' is in denied_commands".into())
    );
    assert_eq!(
        p.check("/usr/bin/python3"),
        Err("Refused by command policy: 'python3' is not in allowed_commands".into())
    );
}

#[test]
fn assignments_are_skipped() {
    let p = example();
    assert_eq!(p.check("LANG=C ls"), Ok(()));
    assert_eq!(p.check("A=1 B='x y' echo hi"), Ok(()));
    assert_eq!(
        p.check("VAR=1 rm x"),
        Err("Refused by command policy: 'rm' is in denied_commands".into())
    );
    // A quoted name is not an assignment: the shell runs a command called `A=1`.
    assert_eq!(
        p.check("'A=1' ls"),
        Err("Refused by command policy: 'A=1' is not in allowed_commands".into())
    );
    assert_eq!(
        p.check("PATH=/tmp ls"),
        Err(
            "Refused by command policy: setting 'PATH' is not allowed when allowed_commands is set"
                .into()
        )
    );
    assert_eq!(
        p.check("LD_PRELOAD=/tmp/x.so ls"),
        Err("Refused by command policy: setting 'LD_PRELOAD' is not allowed when allowed_commands is set".into())
    );
    assert_eq!(deny_only().check("PATH=/tmp ls"), Ok(()));
}

#[test]
fn redirections() {
    let p = example();
    assert_eq!(p.check("ls > out.txt 2>&1"), Ok(()));
    assert_eq!(p.check("> out.txt ls"), Ok(()));
    assert_eq!(p.check("git status 2>/dev/null"), Ok(()));
    assert_eq!(p.check("ls &> /dev/null"), Ok(()));
    assert_eq!(
        p.check("git log > push.txt"),
        Ok(()),
        "a redirection target is not an argument"
    );
}

#[test]
fn substitution() {
    let p = example();
    for (line, op) in [
        ("echo $(id)", "$("),
        ("echo \"$(id)\"", "$("),
        ("echo `id`", "`"),
        ("cat <(id)", "<("),
        ("echo $((1+2))", "$("),
    ] {
        assert_eq!(
            p.check(line),
            Err(format!(
                "Refused by command policy: command substitution '{op}' is not allowed when allowed_commands is set (it could run any command)"
            )),
            "{line}"
        );
    }
    // Quoted in single quotes: literal text.
    assert_eq!(p.check("echo '$(id)'"), Ok(()));
    // Without an allow-list the substitution's content is checked.
    let d = deny_only();
    assert_eq!(d.check("echo $(whoami) `date`"), Ok(()));
    for line in [
        "echo $(rm x)",
        "echo `rm x`",
        "echo \"$(ls; rm x)\"",
        "x=$(rm y)",
    ] {
        assert_eq!(
            d.check(line),
            Err("Refused by command policy: 'rm' is in denied_commands".into()),
            "{line}"
        );
    }
}

#[test]
fn dynamic_command_names() {
    let d = deny_only();
    for line in [
        "$CMD x",
        "${X}m x",
        "$(echo rm) x",
        "r? x",
        "/bin/r* x",
        "{rm,x}",
    ] {
        let e = d.check(line).unwrap_err();
        assert!(e.contains("is not a literal word"), "{line}: {e}");
    }
    // With no command lists there is nothing to compare the name against.
    let free = CommandPolicy::from_toml_str(r#"denied_patterns = ["x"]"#).unwrap();
    assert_eq!(free.check("$EDITOR f"), Ok(()));
    assert_eq!(d.check("[ -f a ] && [[ -d b ]]"), Ok(()));
}

#[test]
fn wrappers_are_checked_and_unwrapped() {
    let d = deny_only();
    for line in [
        "sudo rm x",
        "sudo -u root rm x",
        "sudo -E -- rm x",
        "env A=1 rm x",
        "env -i -u HOME rm x",
        "nohup rm x &",
        "time rm x",
        "exec rm x",
        "nice -n 10 rm x",
        "timeout -s KILL 5 rm x",
        "sudo nice rm x",
        "ls | xargs -n 1 rm",
        "find . -name '*.o' -exec rm {} \\;",
        "sh -c 'rm x'",
        "bash -ec \"ls; rm x\"",
        "eval rm x",
        "env -S 'rm x'",
    ] {
        assert_eq!(
            d.check(line),
            Err("Refused by command policy: 'rm' is in denied_commands".into()),
            "{line}"
        );
    }
    assert_eq!(d.check("sudo ls"), Ok(()));
    assert_eq!(d.check("find . -name x -exec cat {} +"), Ok(()));
    // Under an allow-list the wrapper itself must be allowed too.
    let p = example();
    assert_eq!(
        p.check("sudo ls"),
        Err("Refused by command policy: 'sudo' is not in allowed_commands".into())
    );
    let with_sudo = CommandPolicy {
        allowed_commands: s(&["sudo", "ls", "git"]),
        ..example()
    };
    assert_eq!(with_sudo.check("sudo ls"), Ok(()));
    assert_eq!(
        with_sudo.check("sudo cat x"),
        Err("Refused by command policy: 'cat' is not in allowed_commands".into())
    );
    assert_eq!(
        with_sudo.check("sudo git push"),
        Err("Refused by command policy: arguments 'push' of 'git' match deny_args '*push*'".into())
    );
}

#[test]
fn parsing_the_file() {
    let p = example();
    assert_eq!(p.allowed_commands.len(), 8);
    assert!(p.allow_shell_operators);
    assert_eq!(p.commands["git"].deny_args, s(&["*push*", "*--force*"]));
    let empty = CommandPolicy::from_toml_str("").unwrap();
    assert_eq!(empty, CommandPolicy::default());
    assert!(empty.allow_shell_operators);

    let e = CommandPolicy::from_toml_str("allowed_command = [\"ls\"]").unwrap_err();
    assert!(format!("{e:#}").contains("allowed_command"), "{e:#}");
    let e = CommandPolicy::from_toml_str("[commands.git]\nallow_arg = []").unwrap_err();
    assert!(format!("{e:#}").contains("allow_arg"), "{e:#}");
    // A top-level key written after a table belongs to the table: say so.
    let e =
        CommandPolicy::from_toml_str("[commands.git]\ndeny_args = []\ndenied_patterns = [\"x\"]")
            .unwrap_err();
    assert!(format!("{e:#}").contains("hint: top-level keys"), "{e:#}");
    assert!(CommandPolicy::from_toml_str("denied_patterns = [\"\"]").is_err());
    assert!(CommandPolicy::from_toml_str("allow_shell_operators = \"no\"").is_err());
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmd-policy.toml");
    std::fs::write(&path, "allowed_commands = [\"ls\"]\ndenyed_commands = []\n").unwrap();
    let e = CommandPolicy::load(&path).unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("cmd-policy.toml"), "{text}");
    assert!(text.contains("denyed_commands"), "{text}");

    let missing = dir.path().join("nope.toml");
    let text = format!("{:#}", CommandPolicy::load(&missing).unwrap_err());
    assert!(text.contains("nope.toml"), "{text}");

    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(CommandPolicy::load(&path).unwrap(), example());
}

#[test]
fn nesting_limit() {
    let d = deny_only();
    let mut line = "ls".to_owned();
    for _ in 0..12 {
        line = format!("echo $({line})");
    }
    assert_eq!(
        d.check(&line),
        Err("Refused by command policy: command line nests too deeply".into())
    );
}

#[test]
fn the_book_shows_the_example_policy_file_as_it_is() {
    let chapter = include_str!("../../../../docs/src/device-agent.md");
    assert!(
        chapter.contains(EXAMPLE),
        "docs/src/device-agent.md's command policy differs from examples/command-policy.toml"
    );
}
