//! Explicit command plans (server.md §5.2): `{"steps": [...]}` or `{"actions": [...]}`
//! carried in a task's `request`, or a bare command list.

use serde::Deserialize;

use crate::messages::{parse_strict, Command};

/// Most steps a plan may have.
pub const MAX_STEPS: usize = 100;

/// One round of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStep {
    pub agent_name: Option<String>,
    pub process_name: Option<String>,
    pub root_name: Option<String>,
    pub actions: Vec<Command>,
}

/// A validated plan. `agent_name: None` means "the platform's default".
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub agent_name: Option<String>,
    pub process_name: Option<String>,
    pub root_name: Option<String>,
    pub stop_on_failure: bool,
    pub steps: Vec<PlanStep>,
}

#[derive(Deserialize)]
struct RawStep {
    #[serde(default)]
    agent_name: Option<String>,
    #[serde(default)]
    process_name: Option<String>,
    #[serde(default)]
    root_name: Option<String>,
    actions: Vec<Command>,
}

#[derive(Deserialize)]
struct RawPlan {
    #[serde(default)]
    agent_name: Option<String>,
    #[serde(default)]
    process_name: Option<String>,
    #[serde(default)]
    root_name: Option<String>,
    #[serde(default)]
    stop_on_failure: Option<bool>,
    #[serde(default)]
    steps: Option<Vec<RawStep>>,
    #[serde(default)]
    actions: Option<Vec<Command>>,
}

/// True when a `request` is meant as a JSON plan (it starts with `{` after trimming).
pub fn looks_like_plan(request: &str) -> bool {
    request.trim_start().starts_with('{')
}

impl Plan {
    /// Parses a JSON plan; the error text is the `<detail>` of `Invalid plan: <detail>`.
    pub fn parse(request: &str) -> Result<Plan, String> {
        let raw: RawPlan = parse_strict(request.trim()).map_err(|e| e.detail)?;
        let steps = match (raw.steps, raw.actions) {
            (Some(_), Some(_)) => {
                return Err("exactly one of 'steps' and 'actions' must be present".into())
            }
            (None, None) => {
                return Err("exactly one of 'steps' and 'actions' must be present".into())
            }
            (Some(steps), None) => steps
                .into_iter()
                .map(|s| PlanStep {
                    agent_name: s.agent_name,
                    process_name: s.process_name,
                    root_name: s.root_name,
                    actions: s.actions,
                })
                .collect(),
            (None, Some(actions)) => vec![PlanStep {
                agent_name: None,
                process_name: None,
                root_name: None,
                actions,
            }],
        };
        let plan = Plan {
            agent_name: raw.agent_name,
            process_name: raw.process_name,
            root_name: raw.root_name,
            stop_on_failure: raw.stop_on_failure.unwrap_or(true),
            steps,
        };
        plan.check()?;
        Ok(plan)
    }

    /// The `commands` shorthand: every command its own step, stop on failure.
    pub fn from_commands(commands: Vec<Command>) -> Result<Plan, String> {
        let mut steps: Vec<PlanStep> = commands
            .into_iter()
            .map(|c| PlanStep {
                agent_name: None,
                process_name: None,
                root_name: None,
                actions: vec![c],
            })
            .collect();
        // The collect reuses the commands' buffer, whose capacity a parse from a byte
        // stream rounds up (4 for one command): a plan lives as long as its session.
        steps.shrink_to_fit();
        let plan = Plan {
            agent_name: None,
            process_name: None,
            root_name: None,
            stop_on_failure: true,
            steps,
        };
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("a plan needs at least one step".into());
        }
        if self.steps.len() > MAX_STEPS {
            return Err(format!("a plan may have at most {MAX_STEPS} steps"));
        }
        if let Some(i) = self.steps.iter().position(|s| s.actions.is_empty()) {
            return Err(format!("step {i} has no actions"));
        }
        Ok(())
    }
}

/// The effective platform's default `agent_name` (`windows` or `linux`).
pub fn default_agent_name(platform: &str) -> &'static str {
    if platform == "windows" {
        "HostAgent"
    } else {
        "LinuxAgent"
    }
}

/// The reference agent that serves a device registered with `metadata.platform`, or
/// `None` for a platform it has no agent for. A UFO device looks up its MCP servers by
/// `agent_name` and answers nothing for an agent it has no configuration for, so the name
/// must follow the device. macOS has no reference agent; aip's own device ignores the
/// name, and `LinuxAgent` (a shell) is the closest.
pub fn platform_agent_name(platform: &str) -> Option<&'static str> {
    match platform.to_ascii_lowercase().as_str() {
        "windows" => Some("HostAgent"),
        "linux" | "macos" | "darwin" => Some("LinuxAgent"),
        "android" | "mobile" => Some("MobileAgent"),
        _ => None,
    }
}

/// Parses a list of `Command`s given as JSON (HTTP `commands`, `metadata.commands`).
pub fn parse_commands(value: &serde_json::Value) -> Result<Vec<Command>, String> {
    // Straight from the parsed value; only a list that fails is printed and parsed again
    // for the strict parser's error detail.
    let commands = match Vec::<Command>::deserialize(value) {
        Ok(commands) => commands,
        Err(_) => parse_strict(&value.to_string()).map_err(|e| e.detail)?,
    };
    non_empty_commands(commands)
}

/// `commands`, unless the list is empty.
pub fn non_empty_commands(commands: Vec<Command>) -> Result<Vec<Command>, String> {
    if commands.is_empty() {
        return Err("the list of commands is empty".into());
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_and_actions() {
        let p = Plan::parse(r#" {"steps":[{"actions":[{"tool_name":"a","tool_type":"action"}]},{"agent_name":"AppAgent","actions":[{"tool_name":"b","tool_type":"data_collection","parameters":{}}]}]}"#).expect("plan");
        assert_eq!(p.steps.len(), 2);
        assert!(p.stop_on_failure);
        assert_eq!(p.steps[1].agent_name.as_deref(), Some("AppAgent"));
        let p = Plan::parse(
            r#"{"actions":[{"tool_name":"a","tool_type":"action"}],"stop_on_failure":false}"#,
        )
        .expect("plan");
        assert_eq!(p.steps.len(), 1);
        assert!(!p.stop_on_failure);
    }

    #[test]
    fn refuses_bad_plans() {
        for bad in [
            "{",
            "{}",
            r#"{"actions":[]}"#,
            r#"{"actions":[{"tool_name":"a","tool_type":"other"}]}"#,
            r#"{"actions":[{"tool_name":"a","tool_type":"action"}],"steps":[]}"#,
            r#"{"steps":[{"actions":[]}]}"#,
        ] {
            assert!(Plan::parse(bad).is_err(), "{bad}");
        }
        let many = format!(
            r#"{{"steps":[{}]}}"#,
            vec![r#"{"actions":[{"tool_name":"a","tool_type":"action"}]}"#; 101].join(",")
        );
        assert!(Plan::parse(&many)
            .expect_err("too many")
            .contains("at most 100"));
    }

    #[test]
    fn parse_commands_takes_a_list_and_explains_what_is_wrong_with_one() {
        use serde_json::json;
        let ok = parse_commands(&json!([
            {"tool_name": "click", "tool_type": "action", "parameters": {"x": 1}},
            {"tool_name": "screenshot", "tool_type": "data_collection", "call_id": "c2"},
        ]))
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].tool_name, "click");
        assert_eq!(ok[1].call_id.as_deref(), Some("c2"));

        assert_eq!(
            parse_commands(&json!([])).unwrap_err(),
            "the list of commands is empty"
        );
        // The strict parser's detail, with the path to the bad field.
        let err = parse_commands(&json!([{"tool_name": "t", "tool_type": "bogus"}])).unwrap_err();
        assert!(
            err.starts_with("[0].tool_type: unknown variant `bogus`"),
            "{err}"
        );
        let err = parse_commands(&json!([{"tool_type": "action"}])).unwrap_err();
        assert!(err.contains("missing field `tool_name`"), "{err}");
        let err = parse_commands(&json!({"tool_name": "t"})).unwrap_err();
        assert!(err.contains("expected a sequence"), "{err}");
    }
}
