//! The commands one segment runs: its command, and through wrappers (`sudo`, `env`,
//! `xargs`, `find -exec`, …) the commands they run, plus nested command lines (`sh -c`,
//! `eval`, `env -S`) to check recursively.

use super::lexer::Word;

/// One command to check: a base name and its arguments.
#[derive(Debug)]
pub(super) struct Invocation {
    /// False for a segment of assignments only (`PATH=/x`): nothing runs.
    pub(super) is_command: bool,
    pub(super) name: String,
    pub(super) raw: String,
    pub(super) dynamic: bool,
    pub(super) args: Vec<String>,
    pub(super) assigns: Vec<String>,
}

const SKIPPED_WORDS: [&str; 13] = [
    "!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "esac",
];
const NON_COMMAND_SEGMENTS: [&str; 4] = ["for", "case", "select", "function"];
const SHELLS: [&str; 8] = ["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish"];

/// For a wrapper, the options that take a separate argument; `None` if not a wrapper.
fn wrapper_options(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "sudo" => &[
            "-u",
            "-g",
            "-h",
            "-p",
            "-r",
            "-t",
            "-C",
            "-D",
            "-T",
            "-U",
            "-R",
            "--user",
            "--group",
            "--host",
            "--prompt",
            "--role",
            "--type",
            "--close-from",
            "--chdir",
            "--other-user",
            "--chroot",
            "--command-timeout",
        ],
        "doas" => &["-u", "-C"],
        "env" => &["-u", "--unset", "-C", "--chdir"],
        "nice" => &["-n", "--adjustment"],
        "ionice" => &["-c", "-n", "-p", "-P", "-u", "--class", "--classdata"],
        "timeout" => &["-s", "--signal", "-k", "--kill-after"],
        "exec" => &["-a"],
        "time" => &["-f", "-o", "--format", "--output"],
        "stdbuf" => &["-i", "-o", "-e"],
        "xargs" => &[
            "-a",
            "-d",
            "-E",
            "-I",
            "-L",
            "-n",
            "-P",
            "-s",
            "--arg-file",
            "--delimiter",
            "--max-args",
            "--max-procs",
            "--max-chars",
            "--max-lines",
        ],
        "nohup" | "setsid" | "command" | "builtin" | "busybox" => &[],
        _ => return None,
    })
}

/// Finds the command of `words` (after assignments and, if `skip_keywords`, reserved
/// words), pushes it and — through wrappers — the commands it runs, and collects
/// nested command lines (`sh -c`, `eval`, `env -S`).
pub(super) fn command_chain(
    words: &[Word],
    skip_keywords: bool,
    out: &mut Vec<Invocation>,
    nested: &mut Vec<String>,
) {
    let mut i = 0;
    let mut assigns = Vec::new();
    while let Some(w) = words.get(i) {
        if let Some(var) = w.assignment() {
            assigns.push(var.to_owned());
        } else if skip_keywords && NON_COMMAND_SEGMENTS.iter().any(|k| w.is_plain(k)) {
            return;
        } else if !(skip_keywords && SKIPPED_WORDS.iter().any(|k| w.is_plain(k))) {
            break;
        }
        i += 1;
    }
    let Some(cmd) = words.get(i) else {
        // Assignments alone still count (e.g. `PATH=/tmp` before a later command).
        if !assigns.is_empty() {
            out.push(Invocation {
                is_command: false,
                name: String::new(),
                raw: String::new(),
                dynamic: false,
                args: Vec::new(),
                assigns,
            });
        }
        return;
    };
    let rest = &words[i + 1..];
    let name = cmd.text.rsplit('/').next().unwrap_or(&cmd.text).to_owned();
    out.push(Invocation {
        is_command: true,
        name: name.clone(),
        raw: cmd.text.clone(),
        dynamic: cmd.dynamic,
        args: rest.iter().map(|w| w.text.clone()).collect(),
        assigns,
    });
    if cmd.dynamic {
        return;
    }
    if let Some(with_arg) = wrapper_options(&name) {
        unwrap(&name, with_arg, rest, out, nested);
    } else if SHELLS.contains(&name.as_str()) {
        if let Some(script) = dash_c_script(rest) {
            nested.push(script);
        }
    } else if name == "eval" {
        let args: Vec<&str> = rest.iter().map(|w| w.text.as_str()).collect();
        nested.push(args.join(" "));
    } else if name == "find" {
        find_exec(rest, out, nested);
    }
}

/// The command a wrapper runs: its options (and `env`'s `-S`, `timeout`'s duration)
/// skipped, the rest checked as a command of its own.
fn unwrap(
    name: &str,
    with_arg: &[&str],
    rest: &[Word],
    out: &mut Vec<Invocation>,
    nested: &mut Vec<String>,
) {
    let mut j = 0;
    while let Some(w) = rest.get(j) {
        let t = w.text.as_str();
        if t == "--" {
            j += 1;
            break;
        }
        if name == "env" && (t == "-S" || t == "--split-string") {
            let tail: Vec<&str> = rest[j + 1..].iter().map(|w| w.text.as_str()).collect();
            nested.push(tail.join(" "));
            return;
        }
        if !t.starts_with('-') || t == "-" {
            break;
        }
        j += if with_arg.contains(&t) { 2 } else { 1 };
    }
    if name == "timeout" {
        j += 1; // the duration
    }
    if let Some(inner) = rest.get(j..) {
        command_chain(inner, false, out, nested);
    }
}

/// The script of a shell's `-c` (possibly among other short options), if given.
fn dash_c_script(rest: &[Word]) -> Option<String> {
    let mut dash_c = false;
    let mut j = 0;
    while let Some(w) = rest.get(j) {
        let t = w.text.as_str();
        if matches!(t, "-o" | "+o" | "-O" | "+O" | "--rcfile" | "--init-file") {
            j += 2;
            continue;
        }
        if t.starts_with('-') && t != "-" && t != "--" {
            if !t.starts_with("--") && t.contains('c') {
                dash_c = true;
            }
            j += 1;
            continue;
        }
        return dash_c.then(|| t.to_owned());
    }
    None
}

/// The commands of `find`'s `-exec`, `-execdir`, `-ok` and `-okdir`.
fn find_exec(rest: &[Word], out: &mut Vec<Invocation>, nested: &mut Vec<String>) {
    let mut j = 0;
    while j < rest.len() {
        if matches!(
            rest[j].text.as_str(),
            "-exec" | "-execdir" | "-ok" | "-okdir"
        ) {
            let start = j + 1;
            let mut end = start;
            while end < rest.len() && !matches!(rest[end].text.as_str(), ";" | "+") {
                end += 1;
            }
            command_chain(&rest[start..end], false, out, nested);
            j = end;
        }
        j += 1;
    }
}
