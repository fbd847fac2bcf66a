//! The one test harness of the workspace (dev-only, never in a release binary): every
//! crate's integration tests start servers and talk to them through it.
//!
//! - [`app`]: [`TestApp`], a real server in this process on 127.0.0.1 (port 0) with a
//!   fresh data dir, and its HTTP API (`get`, `dispatch`, `run`, `wait_done`, …).
//! - [`peer`]: [`Ws`], a WebSocket peer, and the assertions on what it receives
//!   (`expect_error`, `expect_ack`, `expect_command`, `expect_task_end`, …).
//! - [`frames`]: frames and bodies tests send (`results_for`, `commands`).
//! - [`process`]: the real `aip` binary as child processes (a server, devices, client
//!   runs with their exit codes), for the tests of `aip-cli`.
//!
//! Server logs only when asked: `TEST_LOG=1` (or a filter such as `TEST_LOG=debug`).

pub mod app;
pub mod frames;
pub mod peer;
pub mod process;
pub mod redis;

use std::time::Duration;

pub use app::{
    init_tracing, spawn_app, spawn_app_with, spawn_at, spawn_on, spawn_with_store, TestApp,
};
pub use frames::{commands, results_for};
pub use peer::{
    assert_alive, expect_ack, expect_command, expect_error, expect_error_prefix, expect_task_end,
    Ended, Ws,
};

/// How long a test waits for any single frame or answer.
pub const WAIT: Duration = Duration::from_secs(5);
