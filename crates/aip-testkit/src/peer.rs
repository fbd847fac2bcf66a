//! A WebSocket peer ([`Ws`]) as a device or constellation sees the server, and the
//! assertions tests make on the frames it receives.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a read ended when no text frame came.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Timeout,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (inner, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Ws { inner }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: String) {
        self.inner
            .send(Message::Text(s.into()))
            .await
            .expect("ws send");
    }

    /// The next text frame as JSON (skipping pings); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_text(WAIT).await {
            Ok(v) => v,
            Err(e) => panic!("expected a frame, got {e:?}"),
        }
    }

    /// The next text frame, or how the wait ended.
    pub async fn next_text(&mut self, wait: Duration) -> Result<Value, Ended> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.inner.next()).await;
            match next {
                Err(_) => return Err(Ended::Timeout),
                Ok(None) | Ok(Some(Err(_))) => return Err(Ended::Closed(None)),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("server sent JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(Ended::Closed(frame.map(|f| u16::from(f.code))))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(v) = self.next_text(wait).await {
            panic!("expected silence, got {v}");
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_text(WAIT).await {
                Ok(_) => continue,
                Err(Ended::Closed(code)) => return code,
                Err(Ended::Timeout) => panic!("server did not close the connection"),
            }
        }
    }

    /// Reads frames until one matches `pred`.
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .inner
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

impl Ws {
    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.inner
            .send(Message::Binary(bytes.into()))
            .await
            .expect("ws send binary");
    }
}

/// The next frame is an `error` with exactly this text.
pub async fn expect_error(ws: &mut Ws, text: &str) {
    let m = ws.recv().await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["status"], "error", "{m}");
    assert_eq!(m["error"], text, "{m}");
    assert!(m["response_id"].is_string(), "{m}");
}

/// The next frame is an `error` whose text starts with `prefix`; returns the text.
pub async fn expect_error_prefix(ws: &mut Ws, prefix: &str) -> String {
    let m = ws.recv().await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["status"], "error", "{m}");
    let text = m["error"].as_str().unwrap_or_default().to_owned();
    assert!(text.starts_with(prefix), "{m}");
    assert!(text.len() > prefix.len(), "no detail: {m}");
    text
}

/// A heartbeat is still acknowledged: the connection is open and working.
pub async fn assert_alive(ws: &mut Ws, id: &str) {
    ws.send(json!({"type": "heartbeat", "status": "ok", "client_id": id}))
        .await;
    let ack = ws.recv().await;
    assert_eq!(ack["type"], "heartbeat", "{ack}");
    assert_eq!(ack["status"], "ok", "{ack}");
    assert!(ack["session_id"].is_null(), "{ack}");
}

/// The next frame is a task acknowledgement for `sid`.
pub async fn expect_ack(ws: &mut Ws, sid: &str) {
    let ack = ws.recv().await;
    assert_eq!(ack["type"], "heartbeat", "{ack}");
    assert_eq!(ack["status"], "ok", "{ack}");
    assert_eq!(ack["session_id"], sid, "{ack}");
}

/// The next frame is a `command` of session `sid`.
pub async fn expect_command(ws: &mut Ws, sid: &str) -> Value {
    let cmd = ws.recv().await;
    assert_eq!(cmd["type"], "command", "{cmd}");
    assert_eq!(cmd["session_id"], sid, "{cmd}");
    cmd
}

/// The next frame is a `task_end` of `sid` with this status.
pub async fn expect_task_end(ws: &mut Ws, sid: &str, status: &str) -> Value {
    let end = ws.recv().await;
    assert_eq!(end["type"], "task_end", "{end}");
    assert_eq!(end["session_id"], sid, "{end}");
    assert_eq!(end["status"], status, "{end}");
    end
}
