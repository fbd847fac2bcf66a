//! The raw floor: the least a WebSocket server must do to answer the `hold`, `heartbeat`
//! and `churn` scenarios. tokio-tungstenite with the server's small buffers, one task per
//! connection, every text frame parsed with serde_json to find its `type`, `register` and
//! `heartbeat` answered with one fixed `heartbeat`/`ok` frame of the real server's size. No
//! registry, no HTTP API, no sessions (so `dispatch` and `session` have no floor), no
//! pings, the path is not checked. aip figures are reported as ratios to it.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// The answer to `register` and `heartbeat`: the real server's acknowledgement, with every
/// field in declaration order, a fixed timestamp and response id.
pub const ACK: &str = concat!(
    r#"{"type":"heartbeat","status":"ok","user_request":null,"agent_name":null,"#,
    r#""process_name":null,"root_name":null,"actions":null,"messages":null,"error":null,"#,
    r#""session_id":null,"task_name":null,"timestamp":"2025-01-01T10:02:00.105800+00:00","#,
    r#""response_id":"e2a9c4d6-1b3f-4e5a-9c7d-8f0a2b4c6d81","result":null}"#
);

/// Serves the floor on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) =
        tokio_tungstenite::accept_async_with_config(stream, Some(crate::client::ws_config())).await
    else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    // Ends when the peer is gone; a close frame is answered by tungstenite itself.
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(text) = msg else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if matches!(
            value.get("type").and_then(|t| t.as_str()),
            Some("register" | "heartbeat")
        ) && tx.send(Message::text(ACK)).await.is_err()
        {
            break;
        }
    }
}
