//! Optional binary and file-transfer frames (protocol.md §6). These are not
//! `ClientMessage`s; they carry their own `type` literal and keep unknown keys.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn binary_data() -> String {
    "binary_data".into()
}
fn file_transfer_start() -> String {
    "file_transfer_start".into()
}
fn file_transfer_complete() -> String {
    "file_transfer_complete".into()
}

/// Announces the next binary frame (§6.1); chunk keys travel in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetadata {
    #[serde(rename = "type", default = "binary_data")]
    pub kind: String,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
    pub size: u64,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Opens a chunked transfer (§6.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileTransferStart {
    #[serde(rename = "type", default = "file_transfer_start")]
    pub kind: String,
    pub filename: String,
    pub size: u64,
    pub chunk_size: u64,
    pub total_chunks: u64,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Closes a chunked transfer (§6.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileTransferComplete {
    #[serde(rename = "type", default = "file_transfer_complete")]
    pub kind: String,
    pub filename: String,
    pub total_chunks: u64,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The transfer frame a text message announces, if its `type` is one of §6's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    BinaryData,
    FileTransferStart,
    FileTransferComplete,
}

/// Cheap check of a frame's `type` for the §6 literals (without a full parse).
pub fn transfer_kind(value: &Value) -> Option<TransferKind> {
    match value.get("type")?.as_str()? {
        "binary_data" => Some(TransferKind::BinaryData),
        "file_transfer_start" => Some(TransferKind::FileTransferStart),
        "file_transfer_complete" => Some(TransferKind::FileTransferComplete),
        _ => None,
    }
}
