//! The AIP wire format (Agent Interaction Protocol), and nothing else: no I/O.
//!
//! - [`messages`]: the envelopes (`ClientMessage`, `ServerMessage`), their enums and
//!   building blocks (`Command`, `ActionResult`, `McpToolInfo`), strict parsing.
//! - [`parse`]: strict parsing of frames (the rules of protocol.md §2.1).
//! - [`transfer`]: the optional binary / file-transfer frames (protocol.md §6).
//! - [`validate`]: identifier rules, `task_name` sanitisation and validation.
//! - [`plan`]: the explicit command plan a `request` may carry (server.md §5.2).
//! - [`errors`]: the normative error texts the server sends.
//! - [`features`]: what a server announces in its registration acknowledgement.
//! - [`time`]: timestamp formats used on the wire and over HTTP.

pub mod errors;
pub mod features;
pub mod messages;
pub mod parse;
pub mod plan;
pub mod time;
pub mod transfer;
pub mod validate;

pub use messages::tool_key;
pub use messages::{
    parse_client_message, push_json_str, ActionResult, ClientMessage, ClientMessageType,
    ClientType, Command, McpToolInfo, ParseError, ResultStatus, ServerMessage, ServerMessageType,
    TaskStatus, ToolType, LIST_TOOLS,
};
