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
//! ```toml
//! # Only these base commands may run (empty or missing: any command not denied).
//! allowed_commands = ["ls", "cat", "echo", "df", "uname", "grep", "git", "sleep"]
//! # Never these, even if allowed above.
//! denied_commands = ["rm", "shutdown", "reboot", "mkfs*", "dd"]
//! # When false, ; && || | |& & ( ) newline > >> < << `...` $(...) <(...) are refused.
//! allow_shell_operators = true
//! # Substrings refused anywhere in the raw command line.
//! denied_patterns = ["rm -rf /", ":(){ :|:& };:"]
//! # Per-command argument rules (TOML: top-level keys must come before these tables).
//! [commands.git]
//! allow_args = ["status*", "log*", "diff*"]
//! deny_args = ["*push*", "*--force*"]
//! ```
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
//! (conservative).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::tools::Policy;

/// The name of the shell tool that `--no-shell` and `--command-policy` govern.
pub const SHELL_TOOL: &str = "execute_command";

/// How deeply substitutions / `sh -c` / `eval` may nest before the line is refused.
const MAX_DEPTH: usize = 8;

/// The operator's policy for one device.
#[derive(Debug, Clone, Default)]
pub struct ToolPolicy {
    allow: Vec<String>,
    deny: Vec<String>,
    no_shell: bool,
    command_policy: Option<CommandPolicy>,
}

impl ToolPolicy {
    /// `allow`/`deny`: the `--allow-tool`/`--deny-tool` patterns; `no_shell`: `--no-shell`;
    /// `command_policy`: the loaded `--command-policy` file.
    pub fn new(
        allow: Vec<String>,
        deny: Vec<String>,
        no_shell: bool,
        command_policy: Option<CommandPolicy>,
    ) -> Self {
        Self {
            allow,
            deny,
            no_shell,
            command_policy,
        }
    }

    /// Whether `execute_command` may be called at all (not `--no-shell`, not excluded by
    /// the tool patterns), i.e. whether the agent should advertise it.
    pub fn shell_enabled(&self) -> bool {
        !self.no_shell && self.allows_tool(SHELL_TOOL)
    }

    /// Whether the tool-name rules (`--deny-tool`, `--allow-tool`, `--no-shell`) let a
    /// tool be called, regardless of its parameters — for deciding what to advertise.
    pub fn allows_tool(&self, tool_name: &str) -> bool {
        self.check_tool_name(tool_name).is_ok() && !(self.no_shell && tool_name == SHELL_TOOL)
    }

    /// The loaded command policy, if any.
    pub fn command_policy(&self) -> Option<&CommandPolicy> {
        self.command_policy.as_ref()
    }

    fn check_tool_name(&self, tool_name: &str) -> Result<(), String> {
        if let Some(p) = self.deny.iter().find(|p| wildcard_match(p, tool_name)) {
            return Err(format!(
                "Refused by policy: tool '{tool_name}' matches --deny-tool '{p}'"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| wildcard_match(p, tool_name)) {
            return Err(format!(
                "Refused by policy: tool '{tool_name}' is not in any --allow-tool pattern"
            ));
        }
        Ok(())
    }
}

impl Policy for ToolPolicy {
    fn check(&self, tool_name: &str, params: &Map<String, Value>) -> Result<(), String> {
        self.check_tool_name(tool_name)?;
        if tool_name != SHELL_TOOL {
            return Ok(());
        }
        if self.no_shell {
            return Err(format!(
                "Refused by policy: {SHELL_TOOL} is disabled (--no-shell)"
            ));
        }
        match (&self.command_policy, params.get("command")) {
            (Some(cp), Some(Value::String(line))) => cp.check(line),
            _ => Ok(()),
        }
    }
}

/// Argument rules for one command (`[commands.NAME]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgRules {
    /// If non-empty, the argument string must match one of these wildcards.
    #[serde(default)]
    pub allow_args: Vec<String>,
    /// The argument string must match none of these wildcards.
    #[serde(default)]
    pub deny_args: Vec<String>,
}

/// The `--command-policy` file: restrictions on `execute_command`'s command line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPolicy {
    /// If non-empty, every command's base name must match one of these.
    #[serde(default)]
    pub allowed_commands: Vec<String>,
    /// No command's base name may match one of these.
    #[serde(default)]
    pub denied_commands: Vec<String>,
    /// When false, any shell operator, redirection or substitution is refused.
    #[serde(default = "default_true")]
    pub allow_shell_operators: bool,
    /// Per-command argument rules, by base name.
    #[serde(default)]
    pub commands: BTreeMap<String, ArgRules>,
    /// Substrings refused anywhere in the command line.
    #[serde(default)]
    pub denied_patterns: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl Default for CommandPolicy {
    fn default() -> Self {
        Self {
            allowed_commands: Vec::new(),
            denied_commands: Vec::new(),
            allow_shell_operators: true,
            commands: BTreeMap::new(),
            denied_patterns: Vec::new(),
        }
    }
}

const TOP_LEVEL_KEYS: [&str; 4] = [
    "allowed_commands",
    "denied_commands",
    "allow_shell_operators",
    "denied_patterns",
];

impl CommandPolicy {
    /// Reads and parses a policy file; errors name the file.
    pub fn load(path: &Path) -> anyhow::Result<CommandPolicy> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read command policy {}", path.display()))?;
        Self::from_toml_str(&text)
            .with_context(|| format!("invalid command policy {}", path.display()))
    }

    /// Parses a policy from TOML text; unknown keys are refused.
    pub fn from_toml_str(text: &str) -> anyhow::Result<CommandPolicy> {
        let policy: CommandPolicy = toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            let misplaced = TOP_LEVEL_KEYS
                .iter()
                .any(|k| msg.contains(&format!("unknown field `{k}`")));
            if misplaced {
                anyhow::anyhow!(
                    "{msg}\nhint: top-level keys must come before the first [commands.NAME] table"
                )
            } else {
                anyhow::anyhow!(msg)
            }
        })?;
        if policy.denied_patterns.iter().any(String::is_empty) {
            anyhow::bail!("denied_patterns must not contain an empty string");
        }
        Ok(policy)
    }

    /// Checks one command line; `Err` is the refusal text naming the rule.
    pub fn check(&self, command_line: &str) -> Result<(), String> {
        self.check_line(command_line, 0)
    }

    fn check_line(&self, line: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("Refused by command policy: command line nests too deeply".to_owned());
        }
        if let Some(p) = self
            .denied_patterns
            .iter()
            .find(|p| line.contains(p.as_str()))
        {
            return Err(format!(
                "Refused by command policy: command line contains denied pattern '{p}'"
            ));
        }
        let parsed = parse(line.trim())
            .map_err(|e| format!("Refused by command policy: cannot parse command line: {e}"))?;
        if !self.allow_shell_operators {
            if let Some(op) = parsed.operators.first() {
                return Err(format!(
                    "Refused by command policy: shell operator '{}' is not allowed",
                    op.escape_default()
                ));
            }
        }
        if !self.allowed_commands.is_empty() {
            if let Some((op, _)) = parsed.substitutions.first() {
                return Err(format!(
                    "Refused by command policy: command substitution '{op}' is not allowed \
                     when allowed_commands is set (it could run any command)"
                ));
            }
        }
        let mut nested: Vec<String> = parsed.substitutions.into_iter().map(|(_, s)| s).collect();
        for segment in &parsed.segments {
            let words = strip_redirections(segment);
            let mut invocations = Vec::new();
            command_chain(&words, true, &mut invocations, &mut nested);
            for inv in &invocations {
                self.check_invocation(inv)?;
            }
        }
        for line in &nested {
            self.check_line(line, depth + 1)?;
        }
        Ok(())
    }

    fn check_invocation(&self, inv: &Invocation) -> Result<(), String> {
        let restricted = !self.allowed_commands.is_empty() || !self.denied_commands.is_empty();
        if !self.allowed_commands.is_empty() {
            if let Some(var) = inv.assigns.iter().find(|v| is_sensitive_var(v)) {
                return Err(format!(
                    "Refused by command policy: setting '{var}' is not allowed when \
                     allowed_commands is set"
                ));
            }
        }
        if !inv.is_command {
            return Ok(());
        }
        let name = inv.name.as_str();
        if restricted && inv.dynamic {
            return Err(format!(
                "Refused by command policy: command name '{}' is not a literal word \
                 (the shell would expand it)",
                inv.raw
            ));
        }
        if let Some(p) = self
            .denied_commands
            .iter()
            .find(|p| wildcard_match(p, name))
        {
            return Err(if p == name {
                format!("Refused by command policy: '{name}' is in denied_commands")
            } else {
                format!("Refused by command policy: '{name}' matches denied_commands '{p}'")
            });
        }
        if !self.allowed_commands.is_empty()
            && !self
                .allowed_commands
                .iter()
                .any(|p| wildcard_match(p, name))
        {
            return Err(format!(
                "Refused by command policy: '{name}' is not in allowed_commands"
            ));
        }
        if let Some(rules) = self.commands.get(name) {
            let args = inv.args.join(" ");
            if let Some(p) = rules.deny_args.iter().find(|p| wildcard_match(p, &args)) {
                return Err(format!(
                    "Refused by command policy: arguments '{args}' of '{name}' match deny_args '{p}'"
                ));
            }
            if !rules.allow_args.is_empty()
                && !rules.allow_args.iter().any(|p| wildcard_match(p, &args))
            {
                return Err(format!(
                    "Refused by command policy: arguments '{args}' of '{name}' match no allow_args pattern"
                ));
            }
        }
        Ok(())
    }
}

/// Whether `text` matches the wildcard `pattern` as a whole: `*` is any run of
/// characters (possibly empty), `?` exactly one character, anything else itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Last `*` seen and the text position it is currently assumed to stretch to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn is_sensitive_var(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "IFS" | "BASH_ENV" | "ENV" | "SHELLOPTS" | "BASHOPTS" | "PS4" | "PROMPT_COMMAND"
    ) || name.starts_with("LD_")
        || name.starts_with("DYLD_")
}

// ---------------------------------------------------------------------------------------
// Shell command-line reading.

/// One shell word after quote removal.
#[derive(Debug, Clone, Default)]
struct Word {
    text: String,
    /// Contains something the shell expands (`$`, globs, braces): its value is unknown.
    dynamic: bool,
    /// Length of `text` before the first quoted or escaped character, if any.
    quoted_at: Option<usize>,
    open_bracket: bool,
    open_brace: bool,
}

impl Word {
    fn mark_quoted(&mut self) {
        if self.quoted_at.is_none() {
            self.quoted_at = Some(self.text.len());
        }
    }

    /// An unquoted literal, e.g. a reserved word.
    fn is_plain(&self, s: &str) -> bool {
        self.quoted_at.is_none() && self.text == s
    }

    /// The variable name if this is a `NAME=value` (or `NAME+=value`) assignment.
    fn assignment(&self) -> Option<&str> {
        let eq = self.text.find('=')?;
        if self.quoted_at.is_some_and(|q| q <= eq) {
            return None;
        }
        let name = self.text[..eq]
            .strip_suffix('+')
            .unwrap_or(&self.text[..eq]);
        let mut chars = name.chars();
        let first = chars.next()?;
        let valid = (first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        valid.then_some(name)
    }
}

#[derive(Debug)]
enum Tok {
    Word(Word),
    Redirect,
}

#[derive(Debug, Default)]
struct Parsed {
    segments: Vec<Vec<Tok>>,
    /// Operators in order of appearance (separators, redirections, substitutions).
    operators: Vec<String>,
    /// (opening operator, inner command line) of each substitution.
    substitutions: Vec<(String, String)>,
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    word: Option<Word>,
    segment: Vec<Tok>,
    out: Parsed,
}

impl Lexer {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn word(&mut self) -> &mut Word {
        self.word.get_or_insert_with(Word::default)
    }

    fn finish_word(&mut self) {
        if let Some(w) = self.word.take() {
            self.segment.push(Tok::Word(w));
        }
    }

    fn separator(&mut self, op: &str) {
        self.finish_word();
        self.out.segments.push(std::mem::take(&mut self.segment));
        self.out.operators.push(op.to_owned());
        self.i += op.chars().count();
    }

    /// At `(` (index `open`): the text up to the matching `)`, and the index after it.
    fn scan_parens(&self, open: usize) -> Result<(String, usize), String> {
        let c = &self.chars;
        let (mut depth, mut j) = (0usize, open);
        while j < c.len() {
            match c[j] {
                '\\' => j += 1,
                '\'' => j = find_from(c, j + 1, '\'').ok_or("unterminated single quote")?,
                '"' => {
                    j += 1;
                    while j < c.len() && c[j] != '"' {
                        j += if c[j] == '\\' { 2 } else { 1 };
                    }
                    if j >= c.len() {
                        return Err("unterminated double quote".to_owned());
                    }
                }
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok((c[open + 1..j].iter().collect(), j + 1));
                    }
                }
                _ => {}
            }
            j += 1;
        }
        Err("unterminated '('".to_owned())
    }

    /// At `$(`, `<(` or `>(`: records the substitution and appends it to the word.
    fn paren_substitution(&mut self) -> Result<(), String> {
        let op: String = self.chars[self.i..self.i + 2].iter().collect();
        let (inner, end) = self
            .scan_parens(self.i + 1)
            .map_err(|_| format!("unterminated '{op}'"))?;
        let w = self.word();
        w.text.push_str(&format!("{op}{inner})"));
        w.dynamic = true;
        self.out.operators.push(op.clone());
        self.out.substitutions.push((op, inner));
        self.i = end;
        Ok(())
    }

    /// At a backtick: records the substitution and appends it to the word.
    fn backtick_substitution(&mut self) -> Result<(), String> {
        let c = &self.chars;
        let mut j = self.i + 1;
        let mut inner = String::new();
        loop {
            match c.get(j) {
                None => return Err("unterminated '`'".to_owned()),
                Some('`') => break,
                Some('\\') if matches!(c.get(j + 1), Some('`' | '\\' | '$')) => {
                    inner.push(c[j + 1]);
                    j += 2;
                }
                Some(&ch) => {
                    inner.push(ch);
                    j += 1;
                }
            }
        }
        let w = self.word();
        w.text.push_str(&format!("`{inner}`"));
        w.dynamic = true;
        self.out.operators.push("`".to_owned());
        self.out.substitutions.push(("`".to_owned(), inner));
        self.i = j + 1;
        Ok(())
    }

    /// At `$` outside single quotes.
    fn dollar(&mut self) -> Result<(), String> {
        match self.peek(1) {
            Some('(') => self.paren_substitution(),
            Some('\'') => {
                // ANSI-C quoting: its value is computed by the shell.
                let c = &self.chars;
                let mut j = self.i + 2;
                let mut raw = String::new();
                while j < c.len() && c[j] != '\'' {
                    if c[j] == '\\' && j + 1 < c.len() {
                        raw.push(c[j]);
                        j += 1;
                    }
                    raw.push(c[j]);
                    j += 1;
                }
                if j >= c.len() {
                    return Err("unterminated $'...' quote".to_owned());
                }
                let w = self.word();
                w.mark_quoted();
                w.text.push_str(&raw);
                w.dynamic = true;
                self.i = j + 1;
                Ok(())
            }
            _ => {
                let w = self.word();
                w.text.push('$');
                w.dynamic = true;
                self.i += 1;
                Ok(())
            }
        }
    }

    fn double_quoted(&mut self) -> Result<(), String> {
        self.word().mark_quoted();
        self.i += 1;
        loop {
            match self.peek(0) {
                None => return Err("unterminated double quote".to_owned()),
                Some('"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some('\\') => match self.peek(1) {
                    Some('\n') => self.i += 2,
                    Some(c @ ('$' | '`' | '"' | '\\')) => {
                        self.word().text.push(c);
                        self.i += 2;
                    }
                    _ => {
                        self.word().text.push('\\');
                        self.i += 1;
                    }
                },
                Some('$') if self.peek(1) == Some('(') => self.paren_substitution()?,
                Some('$') => {
                    let w = self.word();
                    w.text.push('$');
                    w.dynamic = true;
                    self.i += 1;
                }
                Some('`') => self.backtick_substitution()?,
                Some(c) => {
                    self.word().text.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn redirection(&mut self) {
        // A bare number right before `<`/`>` is a file descriptor, not a word.
        if self
            .word
            .as_ref()
            .is_some_and(|w| w.quoted_at.is_none() && w.text.chars().all(|c| c.is_ascii_digit()))
        {
            self.word = None;
        }
        self.finish_word();
        let mut op = String::new();
        let first = self.chars[self.i];
        op.push(first);
        self.i += 1;
        if first == '&' {
            op.push('>');
            self.i += 1;
            if self.peek(0) == Some('>') {
                op.push('>');
                self.i += 1;
            }
        } else if first == '>' {
            if let Some(c @ ('>' | '|' | '&')) = self.peek(0) {
                op.push(c);
                self.i += 1;
            }
        } else if let Some(c @ ('<' | '&' | '>')) = self.peek(0) {
            op.push(c);
            self.i += 1;
            if c == '<' {
                if let Some(c2 @ ('<' | '-')) = self.peek(0) {
                    op.push(c2);
                    self.i += 1;
                }
            }
        }
        self.segment.push(Tok::Redirect);
        self.out.operators.push(op);
    }

    fn run(mut self) -> Result<Parsed, String> {
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' | '\r' => {
                    self.finish_word();
                    self.i += 1;
                }
                '\n' => self.separator("\n"),
                '#' if self.word.is_none() => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.i += 1;
                    }
                }
                '\\' => match self.peek(1) {
                    Some('\n') => self.i += 2,
                    Some(next) => {
                        let w = self.word();
                        w.mark_quoted();
                        w.text.push(next);
                        self.i += 2;
                    }
                    None => {
                        self.word().text.push('\\');
                        self.i += 1;
                    }
                },
                '\'' => {
                    let end = find_from(&self.chars, self.i + 1, '\'')
                        .ok_or("unterminated single quote")?;
                    let inner: String = self.chars[self.i + 1..end].iter().collect();
                    let w = self.word();
                    w.mark_quoted();
                    w.text.push_str(&inner);
                    self.i = end + 1;
                }
                '"' => self.double_quoted()?,
                '$' => self.dollar()?,
                '`' => self.backtick_substitution()?,
                ';' => self.separator(";"),
                '&' => match self.peek(1) {
                    Some('&') => self.separator("&&"),
                    Some('>') => self.redirection(),
                    _ => self.separator("&"),
                },
                '|' => match self.peek(1) {
                    Some('|') => self.separator("||"),
                    Some('&') => self.separator("|&"),
                    _ => self.separator("|"),
                },
                '(' => self.separator("("),
                ')' => self.separator(")"),
                '<' | '>' if self.peek(1) == Some('(') => self.paren_substitution()?,
                '<' | '>' => self.redirection(),
                _ => {
                    let w = self.word();
                    match c {
                        '*' | '?' => w.dynamic = true,
                        '[' => w.open_bracket = true,
                        ']' if w.open_bracket => w.dynamic = true,
                        '{' => w.open_brace = true,
                        '}' if w.open_brace => w.dynamic = true,
                        _ => {}
                    }
                    w.text.push(c);
                    self.i += 1;
                }
            }
        }
        self.finish_word();
        self.out.segments.push(self.segment);
        Ok(self.out)
    }
}

fn find_from(chars: &[char], from: usize, target: char) -> Option<usize> {
    chars
        .get(from..)?
        .iter()
        .position(|&c| c == target)
        .map(|p| from + p)
}

fn parse(line: &str) -> Result<Parsed, String> {
    Lexer {
        chars: line.chars().collect(),
        i: 0,
        word: None,
        segment: Vec::new(),
        out: Parsed::default(),
    }
    .run()
}

/// The words of a segment without redirection operators and their targets.
fn strip_redirections(segment: &[Tok]) -> Vec<Word> {
    let mut words = Vec::new();
    let mut skip_next = false;
    for tok in segment {
        match tok {
            Tok::Redirect => skip_next = true,
            Tok::Word(_) if skip_next => skip_next = false,
            Tok::Word(w) => words.push(w.clone()),
        }
    }
    words
}

/// One command to check: a base name and its arguments.
#[derive(Debug)]
struct Invocation {
    /// False for a segment of assignments only (`PATH=/x`): nothing runs.
    is_command: bool,
    name: String,
    raw: String,
    dynamic: bool,
    args: Vec<String>,
    assigns: Vec<String>,
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
fn command_chain(
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
    } else if SHELLS.contains(&name.as_str()) {
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
            if dash_c {
                nested.push(t.to_owned());
            }
            break;
        }
    } else if name == "eval" {
        let args: Vec<&str> = rest.iter().map(|w| w.text.as_str()).collect();
        nested.push(args.join(" "));
    } else if name == "find" {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    const EXAMPLE: &str = r#"
allowed_commands = ["ls", "cat", "echo", "df", "uname", "grep", "git", "sleep"]
denied_commands = ["rm", "shutdown", "reboot", "mkfs", "dd"]
allow_shell_operators = true
denied_patterns = ["rm -rf /", ":(){ :|:& };:"]

[commands.git]
allow_args = ["status*", "log*", "diff*"]
deny_args = ["*push*", "*--force*"]
"#;

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
            Err(
                "Refused by policy: tool 'execute_command' is not in any --allow-tool pattern"
                    .into()
            )
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
            Err("Refused by command policy: arguments 'push origin' of 'git' match deny_args '*push*'".into())
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
            Err(
                "Refused by command policy: command line contains denied pattern 'rm -rf /'".into()
            )
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
            Err("Refused by command policy: setting 'PATH' is not allowed when allowed_commands is set".into())
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
            Err(
                "Refused by command policy: arguments 'push' of 'git' match deny_args '*push*'"
                    .into()
            )
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
        let e = CommandPolicy::from_toml_str(
            "[commands.git]\ndeny_args = []\ndenied_patterns = [\"x\"]",
        )
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
}
