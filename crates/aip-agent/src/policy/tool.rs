//! The tool-name rules: `--allow-tool`, `--deny-tool`, `--no-shell`, then the command
//! policy for the shell tool.

use serde_json::{Map, Value};

use super::{wildcard_match, CommandPolicy, SHELL_TOOL};
use crate::tools::Policy;

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
