//! Every text a peer can see: the normative error texts of `error` frames and session
//! ends (protocol.md §3.3, §4.7), and in [`http`] the `detail` of every HTTP error
//! answer (http-api.md). Tests compare them verbatim.

/// Longest `error` text the server sends, in bytes: longer ones echo a client's input.
pub const MAX_ECHO: usize = 1024;
/// What follows an `error` text cut at [`MAX_ECHO`].
pub const CLIPPED: &str = "… (truncated)";

/// `text` cut to at most [`MAX_ECHO`] bytes (at a character boundary), marked as cut.
pub fn clip_echo(mut text: String) -> String {
    if text.len() <= MAX_ECHO {
        return text;
    }
    let mut end = MAX_ECHO - CLIPPED.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(CLIPPED);
    text
}

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
pub const DEVICE_BUSY: &str =
    "Device is busy: too many frames are waiting to be sent to it; retry later";
pub const CANCELLED_OVER_HTTP: &str = "Task was cancelled through the HTTP API";
/// Cluster mode: the node that ran the session stopped heartbeating.
pub const NODE_LOST: &str = "The server node running this task was lost";
/// Cluster mode: the store held the session live under a node that no longer ran it.
pub const LOST_IN_FLIGHT: &str =
    "The server node owning this task no longer ran it (lost in flight)";
/// Cluster mode: the device's node did not answer in time.
pub const NODE_UNAVAILABLE: &str =
    "The server node holding this device did not answer; try again later";

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
/// `client_id '<id>' is already registered; …`: a stale holder registered with a device
/// credential that the newcomer's credential does not cover (it is not probed).
pub fn takeover_refused(id: &str) -> String {
    format!(
        "{} (it was registered with a device credential, and this credential may not replace it)",
        duplicate_client(id)
    )
}
/// `Not authorized: this credential may not register as <role> '<id>'`
pub fn register_not_permitted(role: &str, id: &str) -> String {
    format!("Not authorized: this credential may not register as {role} '{id}'")
}
/// `Not authorized: this credential may not address device '<id>'`
pub fn target_not_permitted(id: &str) -> String {
    format!("Not authorized: this credential may not address device '{id}'")
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
/// A storage failure behind a request; the store's own error text stays in the log.
pub const STORAGE_UNAVAILABLE: &str = "Storage unavailable; try again later";
/// `Internal error: <detail>`
pub fn internal_error(detail: impl std::fmt::Display) -> String {
    format!("Internal error: {detail}")
}
/// `Driver error: <detail>`
pub fn driver_error(detail: &str) -> String {
    format!("Driver error: {detail}")
}
/// `Invalid plan: <detail>`
pub fn invalid_plan(detail: &str) -> String {
    format!("Invalid plan: {detail}")
}
/// `Command '<tool>' failed: <error>`
pub fn command_failed(tool: &str, error: &str) -> String {
    format!("Command '{tool}' failed: {error}")
}

/// `<field> is too long: at most <max> bytes`
pub fn field_too_long(field: &str, max: usize) -> String {
    format!("{field} is too long: at most {max} bytes")
}

/// The `detail` of HTTP error answers (http-api.md).
pub mod http {
    pub const NOT_FOUND: &str = "Not Found";
    pub const METHOD_NOT_ALLOWED: &str = "Method Not Allowed";
    pub const BODY_NOT_OBJECT: &str = "Request body must be a JSON object";
    pub const EMPTY_TASK: &str = "Empty task content";
    pub const EMPTY_CLIENT_ID: &str = "Empty client ID";
    pub const TARGETS_DIFFER: &str = "target_id and client_id refer to different clients";
    pub const INVALID_TASK_NAME: &str = "Invalid task_name: must be a non-empty string of characters [A-Za-z0-9._-], at most 128 long, and must not start with '.'";
    pub const INVALID_SESSION_ID: &str = "Invalid session_id";
    pub const SESSION_ID_IN_USE: &str = "session_id already in use";
    pub const CLIENT_NOT_ONLINE: &str = "Client not online";
    pub const TARGET_NOT_DEVICE: &str = "Target is not a device client";
    pub const SHUTTING_DOWN: &str = "Server is shutting down";
    pub const TOO_MANY_SESSIONS: &str = "Too many active sessions";
    pub const TOO_MANY_CONNECTIONS: &str = "Too many connections";
    /// `GET /api/events` while the most subscribers the server keeps are connected.
    pub const TOO_MANY_SUBSCRIBERS: &str = "Too many event stream subscribers; try again later";
    pub const TASK_NOT_FOUND: &str = "Task not found";
    pub const INVALID_STATE: &str =
        "Invalid state: expected created, running, completed, failed or cancelled";
    pub const INVALID_LIMIT: &str = "Invalid limit: expected 1 to 1000";
    pub const ALREADY_FINISHED: &str = "Session already finished";
    pub const DID_NOT_STOP: &str = "Session did not stop in time";
    pub const INVALID_API_KEY: &str = "Invalid API key";
    pub const API_NOT_PERMITTED: &str = "This credential may not use the HTTP API";
    pub const LOOPBACK_ONLY: &str = "Only loopback clients are accepted (--local)";
    pub const METRICS_UNAVAILABLE: &str = "Metrics are not available";
    pub const BODY_TIMEOUT: &str = "Request body not received in time";
    pub const BODY_TOO_LARGE: &str = "Request body too large";
    pub const DEVICE_BUSY: &str =
        "Device is busy: too many frames are waiting to be sent to it; retry later";
    /// The store failed; its own error text stays in the server's log.
    pub const STORAGE_UNAVAILABLE: &str = super::STORAGE_UNAVAILABLE;
    pub const NODE_UNAVAILABLE: &str = super::NODE_UNAVAILABLE;

    /// `Invalid commands: <detail>`
    pub fn invalid_commands(detail: &str) -> String {
        format!("Invalid commands: {detail}")
    }

    // Fleet jobs (`/api/jobs`) and device selectors (`/api/clients?tag=…`).
    pub const JOB_NOT_FOUND: &str = "Job not found";
    pub const JOB_ALREADY_FINISHED: &str = "Job already finished";
    /// A server built without a job store (an embedding of the library).
    pub const JOBS_UNAVAILABLE: &str = "Fleet jobs are not available on this server";
    /// Cluster mode: the node running the job did not answer a cancel.
    pub const JOB_NODE_UNAVAILABLE: &str =
        "The server node running this job did not answer; try again later";
    pub const SELECTOR_REQUIRED: &str =
        "Invalid selector: expected an object with client_ids, platform or tags";
    pub const INVALID_BATCH: &str =
        "Invalid batch: expected a number of devices (at least 1) or a percentage such as \"25%\"";
    pub const INVALID_MAX_FAILURES: &str = "Invalid max_failures: expected a number of at least 1";
    pub const INVALID_TIMEOUT: &str =
        "Invalid timeout: expected seconds (a positive number) or a duration such as \"90s\"";
    pub const INVALID_MEMBER_STATE: &str =
        "Invalid state: expected pending, running, completed, failed, cancelled or skipped";
    /// `Invalid selector: <detail>`
    pub fn invalid_selector(detail: &str) -> String {
        format!("Invalid selector: {detail}")
    }
    /// `No connected device matches the selector <selector>`
    pub fn no_device_matches(selector: &str) -> String {
        format!("No connected device matches the selector {selector}")
    }
}

/// Why a member of a fleet job did not run or did not finish (shown as its `error`).
pub mod job {
    /// The `error` of a member's session ended by `DELETE /api/jobs/{id}`.
    pub const CANCELLED_WITH_JOB: &str = "Task was cancelled with its fleet job";
    pub const DEVICE_OFFLINE: &str = "Device was not connected at its turn";
    pub const MAX_FAILURES: &str = "Not started: max_failures was reached";
    pub const CANCELLED: &str = "Not started: the job was cancelled";
    pub const SHUTDOWN: &str = "Not started: the server was shutting down";
    pub const SERVER_RESTARTED: &str = "The server restarted during the job";
    /// `Did not finish within the job's timeout of <n> s`
    pub fn timed_out(secs: impl std::fmt::Display) -> String {
        format!("Did not finish within the job's timeout of {secs} s")
    }
    /// `Could not start: <detail>`
    pub fn not_started(detail: &str) -> String {
        format!("Could not start: {detail}")
    }
}
