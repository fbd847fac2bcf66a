//! What the operator allows the server to make this machine do: the [`ToolPolicy`] built
//! from the `aip device` options `--allow-tool`, `--deny-tool`, `--no-shell` and
//! `--command-policy FILE`.
//!
//! # Order of the checks
//!
//! Every call is checked in this order; the first rule that refuses wins and its text
//! (always starting with `Refused by policy:` or `Refused by command policy:`) becomes the
//! call's failure `error`.
//!
//! 1. `--deny-tool PATTERN`: a tool whose name matches any deny pattern is refused, even
//!    if an allow pattern matches too (deny wins).
//! 2. `--allow-tool PATTERN`: if at least one is given, the tool name must match one.
//! 3. `--no-shell`: `execute_command` is refused (and [`ToolPolicy::shell_enabled`] says
//!    not to advertise it).
//! 4. `--command-policy FILE`: only for `execute_command`, on its `command` parameter (a
//!    missing or non-string `command` is left to the tool). See [`CommandPolicy`].
//!
//! Tool patterns are wildcards matched against the whole (canonical, possibly
//! `server.tool`-qualified) tool name: `*` matches any run of characters, `.` included,
//! `?` exactly one character, everything else itself (case-sensitive).
//!
//! # The command policy
//!
//! The example policy, `crates/aip-agent/examples/command-policy.toml` (the tests load
//! it and the book shows it, docs/src/device-agent.md), allows `ls`, `cat`, `echo`, `df`, `uname`, `grep`, `git`
//! and `sleep`, denies `rm`, `shutdown`, `reboot`, `mkfs*` and `dd`, refuses the patterns
//! `rm -rf /` and the fork bomb, and lets `git` run only `status`, `log` and `diff`. Its
//! keys: `allowed_commands`, `denied_commands`, `allow_shell_operators` (when false,
//! `; && || | |& & ( )`, newlines, redirections and substitutions are refused),
//! `denied_patterns`, and `[commands.NAME]` tables with `allow_args` / `deny_args` (after
//! the top-level keys).
//!
//! A command line is checked in this order:
//!
//! 1. `denied_patterns`: plain substrings of the raw command line.
//! 2. Parsing: the line is split into words and segments like a POSIX shell would, on
//!    `;`, `&&`, `||`, `|`, `|&`, `&`, `(`, `)` and newlines, outside quotes. `'...'`,
//!    `"..."` and backslash escapes are honoured (`echo "a;b"` is one segment, `r'm'` is
//!    the word `rm`); `#` at the start of a word starts a comment. An unterminated quote
//!    or substitution is refused, since the shell would not run it as we read it.
//! 3. `allow_shell_operators = false`: the first operator found (including redirections
//!    and substitutions) is refused.
//! 4. Command substitution (`$(...)`, backticks, `<(...)`, `>(...)`; `$((...))` counts
//!    too) is refused outright when `allowed_commands` is non-empty; otherwise its
//!    content is checked as a command line of its own (step 6).
//! 5. Every segment, in order: leading `VAR=value` assignments, redirections (and their
//!    targets) and the reserved words `! { } if then else elif fi do done while until
//!    esac` are skipped; segments starting with `for`, `case`, `select` or `function` are
//!    not commands and are skipped. The next word is the command; its base name (path
//!    prefix stripped: `/bin/ls` → `ls`) must be a literal word (no `$`, globs or brace
//!    expansion) when `allowed_commands` or `denied_commands` is set, must not match
//!    `denied_commands`, must match `allowed_commands` if that is non-empty, and its
//!    arguments (the unquoted words after it, joined by single spaces) must not match
//!    its `deny_args` and must match one of its `allow_args` if any are given. Entries
//!    of `allowed_commands`/`denied_commands` may be wildcards too.
//! 6. Nested command lines, checked recursively with the same rules: the content of
//!    substitutions, the script of `sh|bash|dash|zsh|ksh|... -c SCRIPT`, the arguments
//!    of `eval`, and `env -S STRING`.
//!
//! **Wrappers** — `sudo`, `doas`, `env`, `nohup`, `time`, `exec`, `nice`, `ionice`,
//! `timeout`, `stdbuf`, `setsid`, `command`, `builtin`, `xargs`, `busybox` — are checked as
//! commands themselves *and* unwrapped: their options (and `env`'s assignments,
//! `timeout`'s duration) are skipped and the wrapped command is checked with its own
//! arguments too. So with an allow-list, `sudo ls` needs both `sudo` and `ls` allowed;
//! with a deny-list, `sudo rm x` is refused because of `rm`. Likewise `find ... -exec
//! CMD ... ;` checks `CMD`.
//!
//! When `allowed_commands` is set, assignments to variables that change which program
//! runs or what a shell executes (`PATH`, `IFS`, `BASH_ENV`, `ENV`, `SHELLOPTS`,
//! `BASHOPTS`, `PS4`, `PROMPT_COMMAND`, `LD_*`, `DYLD_*`) are refused as well.
//!
//! Limits: this reads the command line, it does not sandbox it. An allow-list is the
//! real control; a deny-list is best-effort (a program can always be reached through an
//! allowed interpreter, a script file or a variable's value). Commands are named by
//! base name, so `./ls` counts as `ls`. Here-document bodies are read as commands
//!
//! Files: [`tool`] (the tool-name rules), [`command`] (the command policy file and its
//! rules), [`lexer`] (reading a shell command line), [`chain`] (the commands a segment
//! runs, through wrappers and nested shells).

mod chain;
mod command;
mod lexer;
mod tool;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use command::{wildcard_match, ArgRules, CommandPolicy};
pub use tool::ToolPolicy;

/// The name of the shell tool that `--no-shell` and `--command-policy` govern.
pub const SHELL_TOOL: &str = "execute_command";
