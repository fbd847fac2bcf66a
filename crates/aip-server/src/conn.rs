//! The handle through which anything in the server talks to one live WebSocket.
//!
//! Frames go into a bounded queue drained by the connection's single writer task; a
//! client that stops reading until the queue is full is disconnected (`1011`) instead
//! of letting memory grow (protocol.md §1.5).

use std::sync::atomic::{AtomicI64, AtomicU16, Ordering};
use std::sync::Arc;

use aip_protocol::ServerMessage;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A frame for the writer task.
#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    Ping,
    Close(u16, &'static str),
}

/// Close codes the server uses (protocol.md §1.4).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

/// Cloneable handle to one connection.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    inner: Arc<ConnInner>,
}

#[derive(Debug)]
struct ConnInner {
    id: u64,
    tx: mpsc::Sender<Outgoing>,
    kill: CancellationToken,
    kill_code: AtomicU16,
    /// Microseconds since the epoch of the last inbound frame.
    last_seen: AtomicI64,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection is gone.
    Closed,
    /// The client stopped reading; it is being disconnected.
    Overflow,
}

impl ConnHandle {
    /// A handle for connection `id` writing into `tx`.
    pub fn new(id: u64, tx: mpsc::Sender<Outgoing>) -> Self {
        Self {
            inner: Arc::new(ConnInner {
                id,
                tx,
                kill: CancellationToken::new(),
                kill_code: AtomicU16::new(close::GOING_AWAY),
                last_seen: AtomicI64::new(Utc::now().timestamp_micros()),
            }),
        }
    }

    /// Server-unique connection number.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Queues a message without waiting.
    pub fn send(&self, msg: &ServerMessage) -> Result<(), SendError> {
        self.send_raw(Outgoing::Text(msg.to_json()))
    }

    /// Queues a frame without waiting.
    pub fn send_raw(&self, frame: Outgoing) -> Result<(), SendError> {
        match self.inner.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    conn = self.inner.id,
                    "outgoing queue full; disconnecting slow client"
                );
                self.kill(close::INTERNAL);
                crate::metrics::queue_overflow();
                Err(SendError::Overflow)
            }
        }
    }

    /// Asks the connection to close with `code` and run its disconnect procedure.
    pub fn kill(&self, code: u16) {
        if !self.inner.kill.is_cancelled() {
            self.inner.kill_code.store(code, Ordering::Relaxed);
            self.inner.kill.cancel();
        }
    }

    /// Resolves when [`ConnHandle::kill`] was called.
    pub fn killed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.kill.cancelled()
    }

    /// The close code requested by [`ConnHandle::kill`].
    pub fn kill_code(&self) -> u16 {
        self.inner.kill_code.load(Ordering::Relaxed)
    }

    /// Records that a frame arrived now.
    pub fn touch(&self) {
        self.inner
            .last_seen
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }

    /// Microseconds since the epoch of the last inbound frame.
    pub fn last_seen_micros(&self) -> i64 {
        self.inner.last_seen.load(Ordering::Relaxed)
    }

    /// Time of the last inbound frame.
    pub fn last_seen(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.last_seen_micros()).unwrap_or_else(Utc::now)
    }
}
