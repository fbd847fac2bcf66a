//! Any text as a task `request` or an HTTP `commands` list: the plan parser and the strict
//! command-list parser never panic, and a plan never exceeds its step limit.
#![no_main]

use aip_protocol::messages::parse_strict;
use aip_protocol::plan::{Plan, MAX_STEPS};
use aip_protocol::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(plan) = Plan::parse(text) {
        assert!(!plan.steps.is_empty() && plan.steps.len() <= MAX_STEPS);
        assert!(plan.steps.iter().all(|s| !s.actions.is_empty()));
    }
    let _ = parse_strict::<Vec<Command>>(text);
});
