//! `aip-mcp-demo`: a tiny MCP server over stdio, for trying `aip device --tools` and for
//! the MCP bridge's tests.
//!
//! Tools: `echo {text}` returns the text, `add {a, b}` returns the sum as text,
//! `fail {}` returns an error result ("deliberate failure"), and `crash {}` makes the
//! process exit with code 3 at once (to exercise the agent's respawn).
//!
//! ```toml
//! [servers.demo]
//! command = "aip-mcp-demo"
//! ```

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::transport::stdio;
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler, ServiceExt};
use serde::Deserialize;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EchoParams {
    /// The text to send back.
    text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct AddParams {
    /// First addend.
    a: f64,
    /// Second addend.
    b: f64,
}

#[derive(Debug, Clone, Default)]
struct Demo;

#[tool_router]
impl Demo {
    #[tool(description = "Returns the given text unchanged.")]
    fn echo(&self, Parameters(EchoParams { text }): Parameters<EchoParams>) -> String {
        text
    }

    #[tool(description = "Adds two numbers and returns the sum as text.")]
    fn add(&self, Parameters(AddParams { a, b }): Parameters<AddParams>) -> String {
        let sum = a + b;
        // Whole numbers print without a fraction ("5", not "5.0").
        if sum.fract() == 0.0 && sum.abs() < 1e15 {
            format!("{}", sum as i64)
        } else {
            sum.to_string()
        }
    }

    #[tool(
        description = "Always fails: returns an error result with the text \"deliberate failure\"."
    )]
    fn fail(&self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text("deliberate failure")])
    }

    #[tool(description = "Makes this server exit at once with code 3 (simulates a crash).")]
    fn crash(&self) -> String {
        std::process::exit(3)
    }
}

#[tool_handler(
    name = "aip-mcp-demo",
    instructions = "Demo tools for AIP: echo, add, fail, crash."
)]
impl ServerHandler for Demo {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let service = Demo.serve(stdio()).await?;
    service.waiting().await?;
    Ok(())
}
