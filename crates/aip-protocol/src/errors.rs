//! Normative error texts (protocol.md §3.3, §4.7). Tests compare them verbatim.

pub const REGISTRATION_TIMED_OUT: &str = "Registration timed out";
pub const FIRST_MESSAGE_NOT_REGISTER: &str = "First message must be a registration message";
pub const CLIENT_ID_REQUIRED: &str = "Client ID is required for WebSocket registration";
pub const INVALID_CLIENT_ID: &str = "Invalid client_id";
pub const CLIENT_ID_MISMATCH: &str = "client_id does not match the registered connection";
pub const CLIENT_TYPE_MISMATCH: &str = "client_type does not match the registered connection";
pub const DEVICE_TARGETS_OTHER: &str = "Device clients may not target other devices";
pub const CONSTELLATION_NEEDS_TARGET: &str = "Constellation task requests require target_id";
pub const TARGET_NOT_DEVICE: &str = "Constellation tasks may only target device clients";
pub const EMPTY_REQUEST: &str = "Task request must include a non-empty request";
pub const INVALID_SESSION_ID: &str = "Invalid session_id";
pub const TOO_MANY_SESSIONS: &str = "Too many active sessions";
pub const DEVICE_INFO_ONLY_CONSTELLATION: &str =
    "DEVICE_INFO_REQUEST is permitted only for constellation clients";
pub const DEVICE_INFO_NEEDS_TARGET: &str = "DEVICE_INFO_REQUEST requires target_id";
pub const DEVICE_INFO_OUT_OF_SCOPE: &str = "Not authorized to request device info for this device";
pub const ALREADY_REGISTERED: &str = "Client is already registered";
pub const UNSUPPORTED_TASK_END: &str = "Unsupported message type: task_end";
pub const BINARY_UNSUPPORTED: &str = "Binary transfer is not supported by this server";
pub const UNKNOWN_ERROR: &str = "Unknown error";
pub const NO_AGENT: &str = "No agent is configured to plan natural-language requests";
pub const DEVICE_DISCONNECTED: &str = "Task was cancelled because target device disconnected";
pub const REQUESTER_DISCONNECTED: &str = "Task was cancelled due to client disconnection";
pub const SHUTTING_DOWN: &str = "Server shutting down";
pub const SERVER_RESTARTED: &str = "Server restarted while the task was running";

/// `Invalid registration message: <detail>`
pub fn invalid_registration(detail: &str) -> String {
    format!("Invalid registration message: {detail}")
}
/// `Invalid message: <detail>`
pub fn invalid_message(detail: &str) -> String {
    format!("Invalid message: {detail}")
}
/// `Target device '<id>' is not connected`
pub fn target_not_connected(id: &str) -> String {
    format!("Target device '{id}' is not connected")
}
/// `client_id '<id>' is already registered; duplicate registrations are not allowed`
pub fn duplicate_client(id: &str) -> String {
    format!("client_id '{id}' is already registered; duplicate registrations are not allowed")
}
/// `session_id '<id>' is owned by another client`
pub fn session_owned(id: &str) -> String {
    format!("session_id '{id}' is owned by another client")
}
/// `session_id '<id>' is already active`
pub fn session_active(id: &str) -> String {
    format!("session_id '{id}' is already active")
}
/// `Device did not accept the task within <n> s`
pub fn not_accepted(secs: impl std::fmt::Display) -> String {
    format!("Device did not accept the task within {secs} s")
}
/// `Session timed out after <n> s`
pub fn session_timed_out(secs: impl std::fmt::Display) -> String {
    format!("Session timed out after {secs} s")
}
/// `Timed out waiting for command results after <n> s`
pub fn command_timed_out(secs: impl std::fmt::Display) -> String {
    format!("Timed out waiting for command results after {secs} s")
}
/// `Device <id> not found or no system info available`
pub fn device_info_unknown(id: &str) -> String {
    format!("Device {id} not found or no system info available")
}
