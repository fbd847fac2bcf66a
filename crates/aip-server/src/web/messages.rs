//! Handling of each AIP message type on a registered connection (protocol.md §2.7,
//! §3.4–3.11, §4). One method per type; refusals are `error` replies, never panics.

use std::sync::Arc;

use aip_protocol::errors as text;
use aip_protocol::transfer::{transfer_kind, TransferKind};
use aip_protocol::validate::{is_valid_session_id, sanitize_task_name};
use aip_protocol::{
    parse_client_message, ClientMessage, ClientMessageType, ClientType, ServerMessage, TaskStatus,
};
use chrono::Utc;
use serde_json::{json, Value};

use crate::registry::ClientEntry;
use crate::session::{
    Acceptance, ClientEnd, CreateError, NewSession, ReportedResults, SessionEvent,
};
use crate::state::{parse_commands, AppState};
use crate::storage::{Origin, SessionRecord, SessionState};

/// A registered connection's message handler.
pub(super) struct ClientConn {
    app: Arc<AppState>,
    entry: Arc<ClientEntry>,
    /// Binary frames announced by a `binary_data` text frame, to discard silently.
    announced_binary: u32,
    /// Inside an announced chunked transfer.
    in_transfer: bool,
}

impl ClientConn {
    pub(super) fn new(app: Arc<AppState>, entry: Arc<ClientEntry>) -> Self {
        Self {
            app,
            entry,
            announced_binary: 0,
            in_transfer: false,
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.entry.client_id
    }

    fn reply(&self, msg: ServerMessage) {
        let _ = self.entry.send(&msg);
    }

    fn refuse(&self, error: impl Into<String>) {
        let error = error.into();
        tracing::warn!(client_id = %self.entry.client_id, reason = %error, "message refused");
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
            ClientMessageType::DeviceInfoRequest => self.on_device_info_request(msg),
            ClientMessageType::DeviceInfoResponse => {}
            ClientMessageType::Error => {
                let error = msg.error.filter(|e| !e.is_empty());
                tracing::warn!(client_id = %self.entry.client_id, error = error.as_deref().unwrap_or(""), "client reported an error");
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

    /// `task` (protocol.md §3.5–3.7).
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
            ClientType::Constellation => {
                let Some(target) = msg.target_id.as_deref().filter(|t| !t.is_empty()) else {
                    return self.refuse(text::CONSTELLATION_NEEDS_TARGET);
                };
                let Some(e) = self.app.registry.get(target) else {
                    return self.refuse(text::target_not_connected(target));
                };
                if e.role != ClientType::Device {
                    return self.refuse(text::TARGET_NOT_DEVICE);
                }
                e
            }
        };
        let Some(request) = msg.request.clone().filter(|r| !r.trim().is_empty()) else {
            return self.refuse(text::EMPTY_REQUEST);
        };
        let (session_id, client_supplied) = match msg.session_id.as_deref() {
            None | Some("") => (uuid::Uuid::new_v4().to_string(), false),
            Some(s) if !is_valid_session_id(s) => return self.refuse(text::INVALID_SESSION_ID),
            Some(s) => (s.to_owned(), true),
        };
        if let Some(live) = self.app.sessions.get(&session_id) {
            return self.refuse(if live.owner.as_deref() == Some(me.as_str()) {
                text::session_active(&session_id)
            } else {
                text::session_owned(&session_id)
            });
        }
        // A fresh UUID cannot be known; only a client-supplied id needs the store lookup.
        let known = if client_supplied {
            self.app.store.get(&session_id).await
        } else {
            Ok(None)
        };
        match known {
            Ok(Some(old)) if old.owner.as_deref() != Some(me.as_str()) => {
                return self.refuse(text::session_owned(&session_id))
            }
            Ok(Some(old)) if !old.state.is_terminal() => {
                return self.refuse(text::session_active(&session_id))
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(client_id = %me, cause = %e, "session lookup failed");
                return self.refuse(format!("Internal error: {e}"));
            }
        }
        let task_name = sanitize_task_name(msg.task_name.as_deref());
        let commands = match msg
            .metadata
            .as_ref()
            .and_then(|m| m.get("commands"))
            .filter(|v| !v.is_null())
        {
            None => None,
            Some(v) => match parse_commands(v) {
                Ok(c) => Some(c),
                Err(e) => {
                    return self.refuse(text::invalid_message(&format!("metadata.commands: {e}")))
                }
            },
        };
        let platform = self.app.effective_platform(executor.platform.as_deref());
        let now = Utc::now();
        let record = SessionRecord {
            session_id: session_id.clone(),
            task_name,
            request,
            origin: match self.entry.role {
                ClientType::Device => Origin::Device,
                ClientType::Constellation => Origin::Constellation,
            },
            owner: Some(me.clone()),
            executor: executor.client_id.clone(),
            platform,
            state: SessionState::Running,
            reason: None,
            error: None,
            result: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            echo_received: false,
        };
        let executor_info = executor.executor_info();
        let planner = self.app.planner(&record, &executor_info, commands);
        let new = NewSession {
            record,
            fresh_id: !client_supplied,
            owner_conn: Some(self.entry.conn.id()),
            executor_conn: executor.conn.id(),
            planner,
            executor_info,
        };
        match self.app.sessions.create(&self.app, new).await {
            Ok(pending) => {
                // The acknowledgement precedes the session's first command.
                self.reply(ServerMessage::task_ack(&session_id));
                tracing::info!(session_id = %session_id, client_id = %me, executor = %executor.client_id, "task accepted");
                pending.start(&self.app);
            }
            Err(CreateError::TooMany) => self.refuse(text::TOO_MANY_SESSIONS),
            Err(CreateError::Live { owner }) => {
                self.refuse(if owner.as_deref() == Some(me.as_str()) {
                    text::session_active(&session_id)
                } else {
                    text::session_owned(&session_id)
                })
            }
            Err(CreateError::Store(e)) => self.refuse(format!("Internal error: {e}")),
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
                if h.transition(Acceptance::Awaiting, Acceptance::Echoed) {
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
            tracing::warn!(client_id = %self.entry.client_id, session_id = msg.session_id.as_deref().unwrap_or(""), why, "command_results dropped");
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
        if h.acceptance() == Acceptance::Awaiting {
            let reports_on_task =
                msg.prev_response_id.is_some() && msg.prev_response_id == h.task_response_id();
            if !(reports_on_task && h.transition(Acceptance::Awaiting, Acceptance::Reported)) {
                return drop("no command outstanding");
            }
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
        let runs_itself = h.acceptance() == Acceptance::Reported
            || h.transition(Acceptance::Awaiting, Acceptance::Reported);
        if !runs_itself {
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
    fn on_device_info_request(&self, msg: ClientMessage) {
        if self.entry.role != ClientType::Constellation {
            return self.refuse(text::DEVICE_INFO_ONLY_CONSTELLATION);
        }
        let Some(target) = msg.target_id.as_deref().filter(|t| !t.is_empty()) else {
            return self.refuse(text::DEVICE_INFO_NEEDS_TARGET);
        };
        if self.entry.scope.as_deref().is_some_and(|s| s != target) {
            return self.refuse(text::DEVICE_INFO_OUT_OF_SCOPE);
        }
        let info = self
            .app
            .registry
            .device(target)
            .and_then(|d| d.system_info.as_deref().cloned())
            .unwrap_or_else(|| json!({"error": text::device_info_unknown(target)}));
        self.reply(ServerMessage::device_info_response(msg.request_id, info));
    }
}
