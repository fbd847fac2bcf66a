//! The LLM agent loop of aip: a natural-language request → the model proposes tool calls →
//! the caller runs them (on a remote device as AIP `command` rounds, or locally) → the model
//! sees the results → … → the model calls `finish`.
//!
//! The crate only talks to the model (any OpenAI-compatible chat-completions endpoint:
//! OpenAI, Azure OpenAI, Ollama, vLLM, …); executing tool calls is the caller's job:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use aip_llm::{AgentLoop, Decision, LlmConfig, LoopContext, ToolSpec};
//! # async fn run(tools: Vec<ToolSpec>) -> Result<(), aip_llm::LlmError> {
//! let config = Arc::new(LlmConfig::openai("gpt-4.1-mini", "sk-..."));
//! let ctx = LoopContext { request: "check disk".into(), platform: "linux".into(), system_info: None, tools };
//! let mut agent = AgentLoop::new(config, ctx);
//! let mut results = None;
//! loop {
//!     match agent.next(results.take()).await? {
//!         Decision::Call(calls) => {
//!             // run every call (e.g. as one AIP `command` round), in order
//!             # let executed = Vec::new(); let _ = calls;
//!             results = Some(executed);
//!         }
//!         Decision::Finish { completed, answer } => { let _ = (completed, answer); break; }
//!     }
//! }
//! # Ok(()) }
//! ```

mod agent;
mod client;
mod config;
mod error;
mod tools;

/// A scripted model endpoint for tests and examples; not in release binaries.
#[cfg(feature = "scripted")]
pub mod scripted;

pub use agent::{AgentLoop, Decision, LoopContext, ToolCall};
pub use client::LlmClient;
pub use config::LlmConfig;
pub use error::LlmError;
pub use tools::{ToolSpec, FINISH_TOOL};
