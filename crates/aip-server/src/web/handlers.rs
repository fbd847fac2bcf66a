//! Handling of each AIP message type on a registered connection (protocol.md §2.7,
//! §3.4–3.11, §4). One method per type; refusals are `error` replies, never panics.

use std::sync::Arc;

use aip_protocol::errors as text;
use aip_protocol::plan::parse_commands;
use aip_protocol::transfer::{transfer_kind, TransferKind};
use aip_protocol::validate::{
    is_valid_session_id, sanitize_task_name, MAX_ERROR_LEN, MAX_REQUEST_LEN,
};
use aip_protocol::{
    parse_client_message, ClientMessage, ClientMessageType, ClientType, ServerMessage, TaskStatus,
};
use serde_json::{json, Value};

use crate::cluster::{OpenReply, RemoteDevice, RemoteOpen};
use crate::logsafe::{Clip, Throttle};
use crate::registry::ClientEntry;
use crate::session::{ClientEnd, CreateError, OpenRequest, ReportedResults, SessionEvent};
use crate::state::AppState;

/// A registered connection's message handler.
pub(super) struct ClientConn {
    app: Arc<AppState>,
    entry: Arc<ClientEntry>,
    /// Binary frames announced by a `binary_data` text frame, to discard silently.
    announced_binary: u32,
    /// Inside an announced chunked transfer.
    in_transfer: bool,
    /// This connection's warnings (refusals, its errors, dropped results), rate-limited.
    warnings: parking_lot::Mutex<Throttle>,
}

impl ClientConn {
    pub(super) fn new(app: Arc<AppState>, entry: Arc<ClientEntry>) -> Self {
        Self {
            app,
            entry,
            announced_binary: 0,
            in_transfer: false,
            warnings: parking_lot::Mutex::new(Throttle::new(std::time::Instant::now())),
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.entry.client_id
    }

    fn reply(&self, msg: ServerMessage) {
        let _ = self.entry.send(&msg);
    }

    /// `Some(n)`: log a warning now, `n` having been left out before it (see [`Throttle`]).
    fn may_warn(&self) -> Option<u64> {
        self.warnings.lock().allow(std::time::Instant::now())
    }

    fn refuse(&self, error: impl Into<String>) {
        let error = error.into();
        if let Some(left_out) = self.may_warn() {
            tracing::warn!(client_id = %self.entry.client_id, reason = %Clip(&error), left_out, "message refused");
        }
        self.reply(ServerMessage::error(error));
    }

    /// A binary frame (protocol.md §6.3: transfers are not supported).
    pub(super) fn on_binary(&mut self) {
        if self.in_transfer {
            return;
        }
        if self.announced_binary > 0 {
            self.announced_binary -= 1;
            return;
        }
        self.refuse(text::BINARY_UNSUPPORTED);
    }

    /// A text frame.
    pub(super) async fn on_text(&mut self, text_frame: &str) {
        let msg = match parse_client_message(text_frame) {
            Ok(m) => m,
            Err(e) => {
                if let Some(kind) = serde_json::from_str::<Value>(text_frame)
                    .ok()
                    .as_ref()
                    .and_then(transfer_kind)
                {
                    self.on_transfer_frame(kind);
                } else {
                    crate::metrics::invalid_frame();
                    self.refuse(text::invalid_message(&e.detail));
                }
                return;
            }
        };
        crate::metrics::frame_received(msg.kind);
        tracing::debug!(client_id = %self.entry.client_id, kind = msg.kind.as_str(), "message");
        if msg
            .client_id
            .as_deref()
            .is_some_and(|id| id != self.entry.client_id)
        {
            return self.refuse(text::CLIENT_ID_MISMATCH);
        }
        let privileged = matches!(
            msg.kind,
            ClientMessageType::Task
                | ClientMessageType::CommandResults
                | ClientMessageType::DeviceInfoRequest
        );
        if privileged && msg.role() != self.entry.role {
            return self.refuse(text::CLIENT_TYPE_MISMATCH);
        }
        match msg.kind {
            ClientMessageType::Register => self.refuse(text::ALREADY_REGISTERED),
            ClientMessageType::Heartbeat => self.reply(ServerMessage::heartbeat_ok()),
            ClientMessageType::Task => self.on_task(msg).await,
            ClientMessageType::CommandResults => self.on_command_results(msg).await,
            ClientMessageType::TaskEnd => self.on_task_end(msg).await,
            ClientMessageType::DeviceInfoRequest => self.on_device_info_request(msg).await,
            ClientMessageType::DeviceInfoResponse => {}
            ClientMessageType::Error => {
                let error = msg.error.filter(|e| !e.is_empty());
                if let Some(left_out) = self.may_warn() {
                    tracing::warn!(client_id = %self.entry.client_id, error = %Clip(error.as_deref().unwrap_or("")), left_out, "client reported an error");
                }
                self.reply(ServerMessage::error(
                    error.unwrap_or_else(|| text::UNKNOWN_ERROR.to_owned()),
                ));
            }
        }
    }

    fn on_transfer_frame(&mut self, kind: TransferKind) {
        match kind {
            TransferKind::BinaryData if self.in_transfer => {}
            TransferKind::BinaryData => {
                self.announced_binary = self.announced_binary.saturating_add(1);
                self.refuse(text::BINARY_UNSUPPORTED);
            }
            TransferKind::FileTransferStart => {
                if !self.in_transfer {
                    self.in_transfer = true;
                    self.refuse(text::BINARY_UNSUPPORTED);
                }
            }
            TransferKind::FileTransferComplete => self.in_transfer = false,
        }
    }

    /// `task` (protocol.md §3.5–3.7): validated in the normative order, then opened.
    async fn on_task(&mut self, msg: ClientMessage) {
        let me = self.entry.client_id.clone();
        let executor = match self.entry.role {
            ClientType::Device => {
                if msg.target_id.as_deref().is_some_and(|t| t != me) {
                    return self.refuse(text::DEVICE_TARGETS_OTHER);
                }
                if self.try_echo(&msg).await {
                    return;
                }
                self.entry.clone()
            }
            ClientType::Constellation => match self.constellation_target(&msg).await {
                Ok(Target::Local(e)) if e.conn.is_busy() => {
                    crate::metrics::dispatch_busy();
                    return self.refuse(text::DEVICE_BUSY);
                }
                Ok(Target::Local(e)) => e,
                Ok(Target::Remote(device)) => return self.on_remote_task(msg, device).await,
                Err(refusal) => return self.refuse(refusal),
            },
        };
        let valid = match self.valid_task(&msg).await {
            Ok(v) => v,
            Err(refusal) => return self.refuse(refusal),
        };
        let open = OpenRequest {
            session_id: valid.session_id,
            generated_id: valid.generated_id,
            task_name: valid.task_name,
            request: valid.request,
            requester: Some(Arc::clone(&self.entry)),
            executor,
            commands: valid.commands,
            job_id: None,
        };
        match self.app.sessions.open(open).await {
            Ok(h) => {
                tracing::info!(session_id = %h.session_id, client_id = %me, executor = %h.executor, "task accepted");
            }
            Err(e) => self.refuse(open_refusal(e, &me, msg.session_id.as_deref())),
        }
    }

    /// The checks of a `task` after its target's, in the normative order: the request,
    /// the session id, the commands. `Err`: the refusal.
    async fn valid_task(&self, msg: &ClientMessage) -> Result<RemoteOpen, String> {
        let Some(request) = msg.request.clone().filter(|r| !r.trim().is_empty()) else {
            return Err(text::EMPTY_REQUEST.to_owned());
        };
        if request.len() > MAX_REQUEST_LEN {
            return Err(text::field_too_long("request", MAX_REQUEST_LEN));
        }
        let (session_id, generated_id) = match msg.session_id.as_deref() {
            None | Some("") => (uuid::Uuid::new_v4().to_string(), true),
            Some(s) if !is_valid_session_id(s) => return Err(text::INVALID_SESSION_ID.to_owned()),
            Some(s) => (s.to_owned(), false),
        };
        if let Some(refusal) = self.session_id_refusal(&session_id, generated_id).await {
            return Err(refusal);
        }
        let commands = metadata_commands(msg)?;
        Ok(RemoteOpen {
            session_id,
            generated_id,
            task_name: sanitize_task_name(msg.task_name.as_deref()),
            request,
            commands,
            job_id: None,
        })
    }

    /// Cluster mode: a constellation's `task` for a device on another node, which runs
    /// the session; its acknowledgement and `task_end` come back through this node.
    async fn on_remote_task(&mut self, msg: ClientMessage, device: RemoteDevice) {
        let valid = match self.valid_task(&msg).await {
            Ok(v) => v,
            Err(refusal) => return self.refuse(refusal),
        };
        let Some(cluster) = self.app.cluster.clone() else {
            return;
        };
        let sid = valid.session_id.clone();
        let outcome = match cluster.open_remote_for(&self.entry, &device, valid).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(client_id = %self.id(), cause = %e, "could not reach the device's node");
                return self.refuse(text::STORAGE_UNAVAILABLE);
            }
        };
        match outcome {
            Some(OpenReply::Ok) => {
                tracing::info!(session_id = %sid, client_id = %self.id(), executor = %device.client_id, node = %device.node, "task accepted for a device on another node");
            }
            Some(OpenReply::Busy) => {
                crate::metrics::dispatch_busy();
                self.refuse(text::DEVICE_BUSY);
            }
            Some(OpenReply::Refused(r)) => self.refuse(r.detail()),
            None => self.refuse(text::NODE_UNAVAILABLE),
        }
    }

    /// The device a constellation's `task` targets, or the refusal.
    async fn constellation_target(&self, msg: &ClientMessage) -> Result<Target, String> {
        let Some(target) = msg.target_id.as_deref().filter(|t| !t.is_empty()) else {
            return Err(text::CONSTELLATION_NEEDS_TARGET.to_owned());
        };
        if !self.entry.grant.may_address(target) {
            return Err(text::target_not_permitted(target));
        }
        let Some(e) = self.app.registry.get(target) else {
            return match self.remote_client(target).await {
                Some(d) if d.is_device => Ok(Target::Remote(d)),
                Some(_) => Err(text::TARGET_NOT_DEVICE.to_owned()),
                None => Err(text::target_not_connected(target)),
            };
        };
        if e.role != ClientType::Device {
            return Err(text::TARGET_NOT_DEVICE.to_owned());
        }
        Ok(Target::Local(e))
    }

    /// Cluster mode: `client_id` connected to another node, with its registration.
    async fn remote_client(&self, client_id: &str) -> Option<RemoteDevice> {
        self.remote_registration(client_id).await.map(|(d, _)| d)
    }

    async fn remote_registration(&self, client_id: &str) -> Option<(RemoteDevice, Value)> {
        let cluster = self.app.cluster.as_ref()?;
        match cluster.lookup(client_id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(client_id, cause = %e, "presence lookup failed");
                None
            }
        }
    }

    /// Why this client may not use `session_id`: live, or stored and someone else's or not
    /// ended. `None`: it may.
    async fn session_id_refusal(&self, session_id: &str, generated_id: bool) -> Option<String> {
        let me = self.entry.client_id.as_str();
        if let Some(live) = self.app.sessions.get(session_id) {
            return Some(if live.requester.as_deref() == Some(me) {
                text::session_active(session_id)
            } else {
                text::session_owned(session_id)
            });
        }
        // A generated UUID cannot be known; only a client-supplied id needs the store lookup.
        if generated_id {
            return None;
        }
        match self.app.sessions.record(session_id).await {
            Ok(Some(old)) if old.requester.as_deref() != Some(me) => {
                Some(text::session_owned(session_id))
            }
            Ok(Some(old)) if !old.state.is_terminal() => Some(text::session_active(session_id)),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(client_id = %me, cause = %e, "session lookup failed");
                Some(text::STORAGE_UNAVAILABLE.to_owned())
            }
        }
    }

    /// A device `task` that echoes a pushed assignment (protocol.md §3.6): acknowledge
    /// and attach, never create. Returns false when it is not an echo.
    async fn try_echo(&self, msg: &ClientMessage) -> bool {
        let Some(pending) = self
            .entry
            .take_pending_echo(msg.session_id.as_deref(), msg.task_name.as_deref())
        else {
            return false;
        };
        let sid = pending.session_id;
        match self.app.sessions.get(&sid) {
            None => self.reply(ServerMessage::task_ack(&sid)),
            Some(h) => {
                if h.accept_echo() {
                    self.reply(ServerMessage::task_ack(&sid));
                    h.deliver(SessionEvent::Echo).await;
                } else {
                    self.refuse(text::session_active(&sid));
                }
            }
        }
        true
    }

    /// `command_results` (protocol.md §4.4): applied or dropped silently.
    async fn on_command_results(&self, msg: ClientMessage) {
        let drop = |why: &str| {
            if let Some(left_out) = self.may_warn() {
                tracing::warn!(client_id = %self.entry.client_id, session_id = %Clip(msg.session_id.as_deref().unwrap_or("")), why, left_out, "command_results dropped");
            }
        };
        let Some(sid) = msg.session_id.as_deref() else {
            return drop("no session_id");
        };
        let Some(h) = self.app.sessions.get(sid) else {
            return drop("unknown or finished session");
        };
        if h.executor != self.entry.client_id || h.executor_conn != self.entry.conn.id() {
            return drop("sender is not the executor");
        }
        if !h.admit_results(msg.prev_response_id.as_deref()) {
            return drop("no command outstanding");
        }
        h.deliver(SessionEvent::Results(Box::new(ReportedResults {
            prev_response_id: msg.prev_response_id,
            results: msg.action_results.unwrap_or_default(),
        })))
        .await;
    }

    /// `task_end` from the executor of a session it runs itself (protocol.md §3.11).
    async fn on_task_end(&self, msg: ClientMessage) {
        let h = msg
            .session_id
            .as_deref()
            .and_then(|sid| self.app.sessions.get(sid))
            .filter(|h| {
                h.executor == self.entry.client_id && h.executor_conn == self.entry.conn.id()
            });
        let Some(h) = h else {
            return self.refuse(text::UNSUPPORTED_TASK_END);
        };
        if msg.error.as_ref().is_some_and(|e| e.len() > MAX_ERROR_LEN) {
            return self.refuse(text::field_too_long("error", MAX_ERROR_LEN));
        }
        if !h.admit_client_end() {
            return self.refuse(text::UNSUPPORTED_TASK_END);
        }
        let result = msg.metadata.as_ref().and_then(|m| m.get("result")).cloned();
        h.deliver(SessionEvent::ClientEnd(Box::new(ClientEnd {
            completed: matches!(msg.status, TaskStatus::Completed | TaskStatus::Ok),
            error: msg.error,
            result,
        })))
        .await;
    }

    /// `device_info_request` (protocol.md §3.8): answered from registration data.
    async fn on_device_info_request(&self, msg: ClientMessage) {
        if self.entry.role != ClientType::Constellation {
            return self.refuse(text::DEVICE_INFO_ONLY_CONSTELLATION);
        }
        let Some(target) = msg.target_id.as_deref().filter(|t| !t.is_empty()) else {
            return self.refuse(text::DEVICE_INFO_NEEDS_TARGET);
        };
        if self.entry.scope.as_deref().is_some_and(|s| s != target)
            || !self.entry.grant.may_address(target)
        {
            return self.refuse(text::DEVICE_INFO_OUT_OF_SCOPE);
        }
        let info = match self.app.registry.device(target) {
            Some(d) => d.system_info.as_deref().cloned(),
            // Cluster mode: a device on another node, as it registered there.
            None => self
                .remote_registration(target)
                .await
                .filter(|(d, _)| d.is_device)
                .map(|(_, mut v)| v["system_info"].take())
                .filter(Value::is_object),
        }
        .unwrap_or_else(|| json!({"error": text::device_info_unknown(target)}));
        self.reply(ServerMessage::device_info_response(msg.request_id, info));
    }
}

/// Where a constellation's `task` goes: a device here, or on another node.
enum Target {
    Local(Arc<ClientEntry>),
    Remote(RemoteDevice),
}

/// `metadata.commands` of a `task`, if given, or the refusal.
fn metadata_commands(msg: &ClientMessage) -> Result<Option<Vec<aip_protocol::Command>>, String> {
    match msg
        .metadata
        .as_ref()
        .and_then(|m| m.get("commands"))
        .filter(|v| !v.is_null())
    {
        None => Ok(None),
        Some(v) => parse_commands(v)
            .map(Some)
            .map_err(|e| text::invalid_message(&format!("metadata.commands: {e}"))),
    }
}

/// The `error` text for a session `me` could not open. `session_id`: the one the `task`
/// gave, if any.
fn open_refusal(e: CreateError, me: &str, session_id: Option<&str>) -> String {
    let sid = session_id.unwrap_or("");
    match e {
        CreateError::TooMany => text::TOO_MANY_SESSIONS.to_owned(),
        CreateError::Live { requester } if requester.as_deref() == Some(me) => {
            text::session_active(sid)
        }
        CreateError::Live { .. } => text::session_owned(sid),
        CreateError::ExecutorGone => text::internal_error(e),
        CreateError::Store(e) => {
            tracing::error!(client_id = %me, cause = %e, "could not store a new session");
            text::STORAGE_UNAVAILABLE.to_owned()
        }
    }
}
