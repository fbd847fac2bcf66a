//! Every reference vector (copied from shared/spec/vectors) parses with its model and
//! re-serialises to the same JSON; every invalid one is refused.

use std::path::PathBuf;

use aip_protocol::messages::parse_strict;
use aip_protocol::transfer::{BinaryMetadata, FileTransferComplete, FileTransferStart};
use aip_protocol::{ActionResult, ClientMessage, Command, McpToolInfo, ServerMessage};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Parses, re-serialises and compares; returns whether the bytes matched exactly too.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    name: &str,
    text: &str,
) -> bool {
    let parsed: T = parse_strict(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let out = serde_json::to_string(&parsed).expect("serialise");
    let want: Value = serde_json::from_str(text).expect("json");
    let got: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(got, want, "{name}: re-serialised value differs");

    // absent == null: strip top-level nulls and parse again.
    let mut stripped = want.clone();
    if let Value::Object(map) = &mut stripped {
        map.retain(|_, v| !v.is_null());
    }
    let again: T = parse_strict(&stripped.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(again, parsed, "{name}: null and absent differ");
    out == text
}

#[test]
fn every_vector_round_trips_or_is_refused() {
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(vectors_dir())
        .expect("vectors dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read");
        seen += 1;
        if name.starts_with("invalid_") {
            assert!(
                aip_protocol::parse_client_message(&text).is_err(),
                "{name} must be refused"
            );
            continue;
        }
        let exact = match name.as_str() {
            "command" => round_trip::<Command>(&name, &text),
            "result_success" | "result_failure" => round_trip::<ActionResult>(&name, &text),
            "mcp_tool_info" => round_trip::<McpToolInfo>(&name, &text),
            "binary_metadata" | "chunk_metadata" => round_trip::<BinaryMetadata>(&name, &text),
            "file_transfer_start" => round_trip::<FileTransferStart>(&name, &text),
            "file_transfer_complete" => round_trip::<FileTransferComplete>(&name, &text),
            n if n.starts_with("client_") => round_trip::<ClientMessage>(&name, &text),
            n if n.starts_with("server_") => round_trip::<ServerMessage>(&name, &text),
            other => panic!("no model known for vector {other}"),
        };
        // The envelopes are emitted in declaration order with explicit nulls: byte-exact.
        if name.starts_with("client_") || name.starts_with("server_") || name == "command" {
            assert!(exact, "{name}: bytes differ from the reference");
        }
        // The server's own writer (not serde's) is what goes on the wire.
        if name.starts_with("server_") {
            let m: ServerMessage = serde_json::from_str(&text).expect("parse");
            assert_eq!(m.to_json(), text, "{name}: ServerMessage::to_json differs");
        }
    }
    assert!(seen >= 48, "only {seen} vectors found");
}

#[test]
fn server_constructors_match_vector_shapes() {
    let text = std::fs::read_to_string(vectors_dir().join("server_task_ack.json")).expect("read");
    let want: ServerMessage = serde_json::from_str(&text).expect("parse");
    let mut got = ServerMessage::task_ack("6f1c2e0a-3b7d-4c55-9a9e-1d2f3a4b5c6d");
    got.timestamp = want.timestamp.clone();
    got.response_id = want.response_id.clone();
    assert_eq!(got.to_json(), text);

    let text =
        std::fs::read_to_string(vectors_dir().join("server_task_assignment.json")).expect("read");
    let want: ServerMessage = serde_json::from_str(&text).expect("parse");
    let mut got = ServerMessage::task_assignment(
        "3f4a2b1c-9d8e-4f3a-b2c1-9a8b7c6d5e4f",
        "notepad_hello",
        "Open Notepad and type Hello World",
        None,
    );
    got.timestamp = want.timestamp.clone();
    got.response_id = want.response_id.clone();
    assert_eq!(got.to_json(), text);
}
