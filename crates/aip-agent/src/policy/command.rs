//! The `--command-policy` file and the rules it puts on every command a line runs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use super::chain::{command_chain, Invocation};
use super::lexer::{parse, strip_redirections};

/// How deeply substitutions / `sh -c` / `eval` may nest before the line is refused.
const MAX_DEPTH: usize = 8;

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
