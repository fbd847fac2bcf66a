//! Session manager (server.md §4): creates sessions, runs each as an independent job
//! (`job.rs`), routes device reports to it and cancels it.
//!
//! All state changes of one session happen inside its job, so results, timeouts,
//! cancellations and completion cannot race into two terminal states. Everybody else
//! talks to the job through its [`SessionHandle`]: an event channel and a cancel token.
//!
//! A session whose `task` was pushed (HTTP dispatch) may wait a long time for the
//! device's echo, and many may wait at once. Until something happens to it, such a
//! session has no task and no channel of its own: its job is parked in the handle
//! (`Run::Dormant`) and one shared timer (`alarm::Alarms`) wakes it when its accept
//! timeout (or session timeout) is due. The first event, cancellation or alarm spawns
//! the job, which then runs exactly as if it had been spawned at once. A parked session
//! holds no task and no channel, and costs nothing to schedule.
//!
//! The manager owns what jobs need (registry, store, settings, driver factory), so the
//! layer is built and tested without the web layer (`tests.rs`). Files: `open.rs` (the
//! one way to open a session), `accept.rs` (acceptance transitions), `job.rs` (a
//! session's state machine), `records.rs` (reads, and writes the store refused),
//! `alarm.rs` (the timer of parked jobs), `flag.rs`,
//! [`driver`] (the driver trait, the plan driver) and [`llm`] (the LLM agent driver).
//!
//! Dependencies point one way: `open` → `job` → `manager` → `handle`; the handle holds
//! its parked job only as a `Parked` trait object.

mod accept;
mod alarm;
pub mod driver;
mod flag;
mod handle;
mod job;
pub mod llm;
mod manager;
mod open;
mod publish;
mod records;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod unsaved;

pub use driver::Driving;
pub use handle::{
    Acceptance, CancelReason, ClientEnd, CurrentStep, ReportedResults, SessionEvent, SessionHandle,
};
pub use manager::{CreateError, SessionManager, SessionSettings};
pub use open::OpenRequest;
