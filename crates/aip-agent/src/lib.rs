//! The AIP client side: the device agent behind `aip device`.
//!
//! - [`device`]: connection lifecycle — register, heartbeat, accept tasks, run commands,
//!   reconnect with backoff, shut down cleanly.
//! - [`tools`]: the [`tools::Tool`] trait and the [`tools::ToolSet`] that runs commands;
//!   [`tools::builtin`]: shell, files, system info; [`tools::mcp`]: MCP servers' tools.
//! - [`policy`]: what the operator allows the server to make this machine do.
//! - [`system`]: the `system_info` the device registers with.
//! - [`tls`]: which certificate authorities `wss://` (and the CLI's `https://`) trust.

pub mod device;
pub mod policy;
pub mod system;
pub mod tls;
pub mod tools;

pub use aip_protocol::time::fmt_secs;
