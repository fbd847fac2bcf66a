//! The device agent's connection lifecycle (protocol.md §3.1, §3.4–3.6, §5.4).
//!
//! Connect → register (platform, system_info, tags, tools) → heartbeat every interval,
//! echo task assignments so the server drives them, run each `command` through the
//! [`ToolSet`] and answer with one `command_results`; on any loss, reconnect forever
//! with exponential backoff and jitter under the same `client_id`. A delegated task the
//! device runs with its own model, and the running of a round's actions, are in
//! `delegated.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aip_protocol::features::{self, ServerInfo};
use aip_protocol::{
    ClientMessage, ClientMessageType, ClientType, ServerMessage, ServerMessageType, TaskStatus,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::tools::ToolSet;

mod config;
mod delegated;

pub use config::{Backoff, DeviceConfig};
pub use delegated::run_actions;
use delegated::DelegatedTask;

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// Asked to stop.
    Shutdown,
    /// The server refused the registration.
    Refused(String),
    /// Connect failed or the connection was lost.
    Lost(String),
}

/// A device agent.
pub struct Device {
    config: DeviceConfig,
    tools: Arc<ToolSet>,
}

impl Device {
    /// An agent offering `tools`.
    pub fn new(config: DeviceConfig, tools: ToolSet) -> Self {
        Self {
            config,
            tools: Arc::new(tools),
        }
    }

    /// Runs until `shutdown` is cancelled, reconnecting whenever the connection is lost.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut attempt = 0;
        loop {
            let server = self.config.server_at(attempt);
            // The next attempt, if any, goes to the next server of the list.
            attempt += 1;
            tracing::info!(server = %server, client_id = %self.config.client_id, "connecting");
            let mut registered_at = None;
            let ended = self
                .connect_once(server, &shutdown, &mut registered_at)
                .await;
            // An accepted registration proves the server is back: the next attempt starts
            // from the initial delay (a rolling restart must not stretch it).
            if registered_at.is_some() {
                backoff.reset();
            }
            let why = match ended {
                Ended::Shutdown => {
                    tracing::info!(client_id = %self.config.client_id, "stopped");
                    return;
                }
                Ended::Refused(e) => format!("registration refused: {e}"),
                Ended::Lost(e) => e,
            };
            let delay = backoff.next_delay();
            tracing::warn!(client_id = %self.config.client_id, reason = %why, retry_in_ms = delay.as_millis() as u64, "disconnected; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn register_message(&self) -> ClientMessage {
        let c = &self.config;
        let mut msg = ClientMessage::new(ClientMessageType::Register, TaskStatus::Ok);
        msg.client_type = Some(ClientType::Device);
        msg.client_id = Some(c.client_id.clone());
        let mut meta = Map::new();
        meta.insert(
            "system_info".into(),
            crate::system::system_info(&c.client_id, &c.platform, &c.tags),
        );
        meta.insert(
            "registration_time".into(),
            json!(aip_protocol::time::wire_now()),
        );
        meta.insert("platform".into(), json!(c.platform));
        meta.insert("tags".into(), json!(c.tags));
        meta.insert("tools".into(), json!(self.tools.infos()));
        msg.metadata = Some(meta);
        msg
    }

    fn message(&self, kind: ClientMessageType, status: TaskStatus) -> ClientMessage {
        let mut msg = ClientMessage::new(kind, status);
        msg.client_type = Some(ClientType::Device);
        msg.client_id = Some(self.config.client_id.clone());
        msg
    }

    async fn connect_once(
        &self,
        server: &str,
        shutdown: &CancellationToken,
        registered_at: &mut Option<Instant>,
    ) -> Ended {
        let ws = match self.open(server, shutdown).await {
            Ok(ws) => ws,
            Err(ended) => return ended,
        };
        let (mut sink, mut stream) = ws.split();
        let server = match self.register(&mut sink, &mut stream).await {
            Ok(server) => server,
            Err(ended) => return ended,
        };
        *registered_at = Some(Instant::now());
        let delegation = self.announce(&server);
        let mut link = Link::start(sink, self.config.outgoing_queue, delegation);
        let ended = self.serve(&mut link, &mut stream, shutdown).await;
        self.close(link, &ended).await;
        ended
    }

    /// The WebSocket handshake (10 s at most).
    async fn open(&self, server: &str, shutdown: &CancellationToken) -> Result<WsStream, Ended> {
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(self.config.max_message_size);
        ws_config.max_frame_size = Some(self.config.max_message_size);
        let connector = self
            .config
            .tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            self.config.url(server),
            Some(ws_config),
            false,
            connector,
        );
        tokio::select! {
            _ = shutdown.cancelled() => Err(Ended::Shutdown),
            r = tokio::time::timeout(Duration::from_secs(10), connect) => match r {
                Err(_) => Err(Ended::Lost("connect timed out".into())),
                Ok(Err(e)) => Err(Ended::Lost(format!("connect failed: {e}"))),
                Ok(Ok((ws, _))) => Ok(ws),
            },
        }
    }

    /// Sends the registration and reads its answer (the first text frame, 10 s at most):
    /// what the server says of itself, or why it refused.
    async fn register(
        &self,
        sink: &mut WsSink,
        stream: &mut WsSource,
    ) -> Result<ServerInfo, Ended> {
        let register = self.register_message().to_json();
        if let Err(e) = sink.send(Message::Text(register.into())).await {
            return Err(Ended::Lost(format!("sending the registration failed: {e}")));
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), first_text(stream))
            .await
            .map_err(|_| Ended::Lost("no answer to the registration".into()))?
            .map_err(Ended::Lost)?;
        match serde_json::from_str::<ServerMessage>(&answer) {
            Ok(m) if m.status == TaskStatus::Ok => {
                Ok(ServerInfo::from_ack_result(m.result.as_ref()))
            }
            Ok(m) => Err(Ended::Refused(
                m.error.unwrap_or_else(|| "unknown reason".into()),
            )),
            Err(e) => Err(Ended::Lost(format!("unreadable registration answer: {e}"))),
        }
    }

    /// Logs the registration; true when the server announced delegation: only such a
    /// server runs a `task` with `agent_name` null as ours to plan (the reference pushes
    /// every task that way and expects an echo).
    fn announce(&self, server: &ServerInfo) -> bool {
        let delegation = server.supports(features::DELEGATION);
        tracing::info!(
            client_id = %self.config.client_id,
            tools = self.tools.infos().len(),
            server = server.server.as_deref().unwrap_or("unknown (reference?)"),
            server_version = server.version.as_deref().unwrap_or(""),
            delegation,
            "registered"
        );
        if self.config.llm.is_some() && !delegation {
            tracing::warn!("the server does not announce delegation: tasks are echoed for it to drive, the local model is not used");
        }
        delegation
    }

    /// Heartbeats, reads and dispatches frames until the connection ends or `shutdown`.
    async fn serve(
        &self,
        link: &mut Link,
        stream: &mut WsSource,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.reset();
        let mut last_rx = Instant::now();
        let silence_limit = self.config.heartbeat_interval * 3;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = &mut link.writer => return Ended::Lost("connection lost while sending".into()),
                Some(_) = link.running.join_next(), if !link.running.is_empty() => {}
                _ = tick.tick() => {
                    if last_rx.elapsed() > silence_limit {
                        return Ended::Lost(format!("nothing heard from the server for {} s", silence_limit.as_secs()));
                    }
                    if let Some(ended) = self.heartbeat(link) {
                        return ended;
                    }
                }
                frame = stream.next() => {
                    last_rx = Instant::now();
                    match frame {
                        None => return Ended::Lost("the server closed the connection".into()),
                        Some(Err(e)) => return Ended::Lost(format!("read error: {e}")),
                        Some(Ok(Message::Close(f))) => {
                            let why = f.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                            return Ended::Lost(format!("the server closed the connection ({why})"));
                        }
                        Some(Ok(Message::Text(t))) => self.on_text(t.as_str(), link),
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    /// Queues a heartbeat. A full queue means frames are on their way: the heartbeat is
    /// skipped, the connection is not ended for being busy.
    fn heartbeat(&self, link: &Link) -> Option<Ended> {
        let hb = self.message(ClientMessageType::Heartbeat, TaskStatus::Ok);
        match link.tx.try_send(Message::Text(hb.to_json().into())) {
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Some(Ended::Lost("the connection's writer stopped".into()))
            }
            _ => None,
        }
    }

    /// Ends a connection: on shutdown running commands get the grace period and the
    /// server a close frame; otherwise they are aborted at once.
    async fn close(&self, mut link: Link, ended: &Ended) {
        if matches!(ended, Ended::Shutdown) {
            let grace = self.config.shutdown_grace;
            if !link.running.is_empty() {
                tracing::info!(
                    commands = link.running.len(),
                    grace_s = grace.as_secs(),
                    "waiting for running commands"
                );
            }
            let _ = tokio::time::timeout(grace, async {
                while link.running.join_next().await.is_some() {}
            })
            .await;
            link.running.abort_all();
            let _ = link
                .tx
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "device shutting down".into(),
                })))
                .await;
            drop(link.tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut link.writer).await;
        } else {
            link.running.abort_all();
        }
        link.writer.abort();
    }

    fn on_text(&self, text: &str, link: &mut Link) {
        let msg: ServerMessage = match aip_protocol::messages::parse_strict(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(cause = %e, "unreadable message from the server");
                return;
            }
        };
        match msg.kind {
            ServerMessageType::Task
                if link.delegation && msg.agent_name.is_none() && self.config.llm.is_some() =>
            {
                self.run_delegated(msg, link)
            }
            ServerMessageType::Task => self.echo(msg, link),
            ServerMessageType::Command => self.on_command(msg, link),
            ServerMessageType::TaskEnd => {
                let sid = msg.session_id.unwrap_or_default();
                tracing::info!(session_id = %sid, status = ?msg.status, error = msg.error.as_deref().unwrap_or(""), "task ended");
                for h in link.by_session.remove(&sid).unwrap_or_default() {
                    h.abort();
                }
            }
            ServerMessageType::Error => {
                tracing::warn!(
                    error = msg.error.as_deref().unwrap_or(""),
                    "the server reported an error"
                );
            }
            ServerMessageType::Heartbeat
            | ServerMessageType::DeviceInfoRequest
            | ServerMessageType::DeviceInfoResponse => {}
        }
    }

    /// Nothing on the server plans the task and it announced delegation: run it here with
    /// our own model (§3.6 step 2, §3.11).
    fn run_delegated(&self, msg: ServerMessage, link: &mut Link) {
        let Some(client) = self.config.llm.clone() else {
            return;
        };
        let session_id = msg.session_id.clone().unwrap_or_default();
        tracing::info!(session_id = %session_id, "delegated task received; running it with the local model");
        let job = DelegatedTask {
            tools: self.tools.clone(),
            tx: link.tx.clone(),
            results: self.message(ClientMessageType::CommandResults, TaskStatus::Continue),
            end: self.message(ClientMessageType::TaskEnd, TaskStatus::Completed),
            platform: self.config.platform.clone(),
            system_info: crate::system::system_info(
                &self.config.client_id,
                &self.config.platform,
                &self.config.tags,
            ),
        };
        let handle = link.running.spawn(job.run(client, msg));
        link.by_session.entry(session_id).or_default().push(handle);
    }

    /// Echoes a task assignment, as the reference device does: the server then drives the
    /// session. The echo waits for room in the queue instead of being dropped (the server
    /// would fail the session `not_accepted` without it).
    fn echo(&self, msg: ServerMessage, link: &mut Link) {
        let mut echo = self.message(ClientMessageType::Task, TaskStatus::Continue);
        echo.session_id = msg.session_id.clone();
        echo.task_name = msg.task_name.clone();
        echo.request = msg.user_request.clone();
        let mut meta = Map::new();
        meta.insert("platform".into(), json!(self.config.platform));
        echo.metadata = Some(meta);
        tracing::info!(
            session_id = msg.session_id.as_deref().unwrap_or(""),
            "task received; accepting"
        );
        let tx = link.tx.clone();
        let echo = Message::Text(echo.to_json().into());
        link.running.spawn(async move {
            let _ = tx.send(echo).await;
        });
    }

    /// Runs a `command`'s actions and answers with one `command_results`.
    fn on_command(&self, msg: ServerMessage, link: &mut Link) {
        let session_id = msg.session_id.clone().unwrap_or_default();
        let tools = self.tools.clone();
        let tx = link.tx.clone();
        let base = self.message(ClientMessageType::CommandResults, msg.status);
        let handle = link.running.spawn(async move {
            let results = run_actions(&tools, msg.actions.unwrap_or_default()).await;
            let mut reply = base;
            reply.timestamp = Some(aip_protocol::time::wire_now());
            reply.session_id = msg.session_id;
            reply.prev_response_id = msg.response_id;
            reply.action_results = Some(results);
            let _ = tx.send(Message::Text(reply.to_json().into())).await;
        });
        let handles = link.by_session.entry(session_id).or_default();
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsSink = futures_util::stream::SplitSink<WsStream, Message>;
type WsSource = futures_util::stream::SplitStream<WsStream>;

/// One registered connection: the writer task and its queue, the running tool calls by
/// session, and whether the server announced delegation.
struct Link {
    tx: mpsc::Sender<Message>,
    writer: tokio::task::JoinHandle<()>,
    running: JoinSet<()>,
    by_session: HashMap<String, Vec<AbortHandle>>,
    delegation: bool,
}

impl Link {
    /// Starts the writer: the only task that writes to the socket, from a queue of `queue`.
    fn start(mut sink: WsSink, queue: usize, delegation: bool) -> Link {
        let (tx, mut rx) = mpsc::channel::<Message>(queue.max(1));
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        Link {
            tx,
            writer,
            running: JoinSet::new(),
            by_session: HashMap::new(),
            delegation,
        }
    }
}

/// The first text frame (the registration's answer), or why there is none.
async fn first_text(stream: &mut WsSource) -> Result<String, String> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(f))) => {
                return Err(format!(
                    "closed during registration: {:?}",
                    f.map(|f| f.reason.to_string())
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("registration failed: {e}")),
            None => return Err("closed during registration".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut bases = Vec::new();
        for _ in 0..9 {
            let d = b.next_delay();
            bases.push(d);
        }
        assert!(bases[0] >= Duration::from_millis(500) && bases[0] <= Duration::from_secs(1));
        assert!(bases[1] >= Duration::from_secs(1) && bases[1] <= Duration::from_secs(2));
        assert!(bases[8] >= Duration::from_secs(30) && bases[8] <= Duration::from_secs(60));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn token_is_added_to_the_url_encoded() {
        let mut c = DeviceConfig::new("ws://h:1/ws", "d");
        c.api_key = Some("a b&c".into());
        assert_eq!(c.url(&c.server), "ws://h:1/ws?token=a%20b%26c");
    }

    #[test]
    fn servers_are_tried_in_turn_round_the_list() {
        let mut c = DeviceConfig::new("ws://a/ws", "d");
        assert_eq!([c.server_at(0), c.server_at(1)], ["ws://a/ws", "ws://a/ws"]);
        c.fallback_servers = vec!["ws://b/ws".into(), "ws://c/ws?x=1".into()];
        let turns: Vec<&str> = (0..4).map(|n| c.server_at(n)).collect();
        assert_eq!(
            turns,
            ["ws://a/ws", "ws://b/ws", "ws://c/ws?x=1", "ws://a/ws"]
        );
        c.api_key = Some("k".into());
        assert_eq!(c.url(c.server_at(2)), "ws://c/ws?x=1&token=k");
    }
}
