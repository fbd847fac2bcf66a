//! The handle through which anything in the server talks to one live WebSocket.
//!
//! Frames go into a bounded queue drained by the connection's single writer task, counted
//! in frames and in bytes ([`QueueMeter`]). Past its budget (`outgoing_queue` frames or
//! `--max-queued-bytes`) a client that has stopped reading — its writer has been stuck on
//! the socket for [`QueueLimits::stall`] — is disconnected (`1011`, protocol.md §1.5); one
//! that is still reading keeps its frames, up to [`CEILING`] times the budget, where it is
//! disconnected whatever it does, so memory per connection is bounded in bytes. Above the
//! high-water mark ([`ConnHandle::is_busy`]) tasks for a device are refused instead of
//! queued (HTTP 503, a busy `error` to a constellation).

use std::sync::atomic::{AtomicI64, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// How many times the budget a reading client may have queued before it is closed anyway.
pub const CEILING: usize = 4;

/// The budget of one connection's outgoing queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Frames (the channel holds [`CEILING`] times this).
    pub frames: usize,
    /// Bytes of text frames.
    pub bytes: usize,
    /// A writer stuck this long on one batch means the client has stopped reading.
    pub stall: Duration,
}

impl QueueLimits {
    /// The capacity of the channel to create for these limits.
    pub fn channel_capacity(&self) -> usize {
        self.frames.saturating_mul(CEILING).max(1)
    }

    /// The high-water mark: three quarters of the budget.
    fn high_water(&self) -> (usize, usize) {
        (self.frames / 4 * 3, self.bytes / 4 * 3)
    }
}

/// What is queued for one connection, shared by its handles and its writer task.
#[derive(Debug)]
pub struct QueueMeter {
    frames: AtomicUsize,
    bytes: AtomicUsize,
    /// Microseconds since the epoch when the writer last took a frame while it had work;
    /// 0 while it waits for frames.
    busy_since: AtomicI64,
}

impl QueueMeter {
    fn new() -> Self {
        Self {
            frames: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            busy_since: AtomicI64::new(0),
        }
    }

    /// The writer took `frame` off the queue.
    pub fn took(&self, frame: &Outgoing) {
        self.busy_since
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
        self.frames.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(frame.len(), Ordering::AcqRel);
    }

    /// The writer has written everything it took and waits for more.
    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Frames queued now.
    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::Acquire)
    }

    /// The writer has been on one batch for longer than `stall`.
    fn stalled(&self, stall: Duration) -> bool {
        let since = self.busy_since.load(Ordering::Relaxed);
        let stall_us = i64::try_from(stall.as_micros()).unwrap_or(i64::MAX);
        since != 0 && Utc::now().timestamp_micros() - since > stall_us
    }
}

impl Outgoing {
    /// The bytes it counts for in the queue.
    pub fn len(&self) -> usize {
        match self {
            Outgoing::Text(s) => s.len(),
            Outgoing::Ping | Outgoing::Close(..) => 0,
        }
    }

    /// Nothing to count (a control frame or an empty text).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    meter: Arc<QueueMeter>,
    limits: QueueLimits,
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
    /// A handle for connection `id` writing into `tx`, with no budget beyond the
    /// channel's capacity (in-process tests and benchmarks).
    pub fn new(id: u64, tx: mpsc::Sender<Outgoing>) -> Self {
        let limits = QueueLimits {
            frames: tx.max_capacity(),
            bytes: usize::MAX,
            stall: Duration::MAX,
        };
        Self::with_limits(id, tx, limits)
    }

    /// A handle for connection `id` writing into `tx` (of
    /// [`QueueLimits::channel_capacity`]) within `limits`.
    pub fn with_limits(id: u64, tx: mpsc::Sender<Outgoing>, limits: QueueLimits) -> Self {
        Self {
            inner: Arc::new(ConnInner {
                id,
                tx,
                kill: CancellationToken::new(),
                kill_code: AtomicU16::new(close::GOING_AWAY),
                last_seen: AtomicI64::new(Utc::now().timestamp_micros()),
                meter: Arc::new(QueueMeter::new()),
                limits,
            }),
        }
    }

    /// What is queued, for the writer task to count down.
    pub fn meter(&self) -> Arc<QueueMeter> {
        Arc::clone(&self.inner.meter)
    }

    /// Above the high-water mark: new tasks for this client are refused, not queued.
    pub fn is_busy(&self) -> bool {
        let (frames, bytes) = self.inner.limits.high_water();
        let m = &self.inner.meter;
        m.frames() >= frames || m.bytes() >= bytes
    }

    /// Server-unique connection number.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Queues a message without waiting.
    pub fn send(&self, msg: &ServerMessage) -> Result<(), SendError> {
        self.send_raw(Outgoing::Text(msg.to_json()))
    }

    /// Queues a frame without waiting; a client over its budget that has stopped
    /// reading, or over the ceiling, is disconnected instead.
    pub fn send_raw(&self, frame: Outgoing) -> Result<(), SendError> {
        let (m, limits) = (&self.inner.meter, &self.inner.limits);
        let len = frame.len();
        let frames = m.frames.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = m.bytes.fetch_add(len, Ordering::AcqRel).saturating_add(len);
        // One frame alone is never over the byte budget: the message size caps it.
        let over_bytes = bytes > limits.bytes && bytes > len;
        let over = frames > limits.frames || over_bytes;
        let over_ceiling =
            frames > limits.channel_capacity() || (over_bytes && bytes / CEILING > limits.bytes);
        let outcome = if over && (over_ceiling || m.stalled(limits.stall)) {
            Err(self.overflow(frames, bytes))
        } else {
            match self.inner.tx.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
                Err(mpsc::error::TrySendError::Full(_)) => Err(self.overflow(frames, bytes)),
            }
        };
        m.frames.fetch_sub(1, Ordering::AcqRel);
        m.bytes.fetch_sub(len, Ordering::AcqRel);
        outcome
    }

    fn overflow(&self, frames: usize, bytes: usize) -> SendError {
        if !self.inner.kill.is_cancelled() {
            tracing::warn!(
                conn = self.inner.id,
                frames,
                bytes,
                "outgoing queue over its budget and the client is not reading; disconnecting it"
            );
            crate::metrics::queue_overflow();
        }
        self.kill(close::INTERNAL);
        SendError::Overflow
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn conn(
        frames: usize,
        bytes: usize,
        stall: Duration,
    ) -> (ConnHandle, mpsc::Receiver<Outgoing>) {
        let limits = QueueLimits {
            frames,
            bytes,
            stall,
        };
        let (tx, rx) = mpsc::channel(limits.channel_capacity());
        (ConnHandle::with_limits(1, tx, limits), rx)
    }

    fn big() -> Outgoing {
        Outgoing::Text("e".repeat(4 * MIB))
    }

    #[test]
    fn a_never_read_queue_stays_within_its_byte_ceiling_and_the_client_is_closed() {
        // The writer has not started (or is stuck before its first frame): only the
        // ceiling applies.
        let (c, _rx) = conn(256, 16 * MIB, Duration::from_secs(3600));
        let mut queued = 0;
        while c.send_raw(big()).is_ok() {
            queued += 1;
            assert!(c.meter().bytes() <= CEILING * 16 * MIB);
            assert!(queued < 100, "never refused");
        }
        assert_eq!(queued, 16, "4 MiB frames up to four times 16 MiB");
        assert!(c.inner.kill.is_cancelled(), "closed");
        assert_eq!(c.kill_code(), close::INTERNAL);
        assert_eq!(
            c.meter().bytes(),
            16 * 4 * MIB,
            "the refused frame is not counted"
        );
        assert!(c.is_busy());
    }

    #[test]
    fn over_its_budget_a_stuck_writer_means_the_client_is_closed_at_once() {
        let (c, mut rx) = conn(256, 16 * MIB, Duration::from_millis(20));
        let meter = c.meter();
        for _ in 0..4 {
            c.send_raw(big()).unwrap();
        }
        // The writer takes one frame and is then stuck on the socket.
        meter.took(&rx.try_recv().unwrap());
        std::thread::sleep(Duration::from_millis(40));
        c.send_raw(big()).unwrap(); // 16 MiB: within the budget
        assert_eq!(c.send_raw(big()), Err(SendError::Overflow));
        assert!(c.inner.kill.is_cancelled());
    }

    #[test]
    fn a_reading_client_over_its_budget_keeps_its_frames_and_a_drained_queue_counts_zero() {
        let (c, mut rx) = conn(4, usize::MAX, Duration::from_millis(20));
        let meter = c.meter();
        for _ in 0..10 {
            c.send_raw(Outgoing::Text("x".into())).unwrap();
            // The writer keeps taking frames: it is not stuck.
            meter.took(&rx.try_recv().unwrap());
            c.send_raw(Outgoing::Text("y".into())).unwrap();
        }
        assert_eq!(meter.frames(), 10, "over the budget of 4, never refused");
        assert!(!c.inner.kill.is_cancelled());
        while let Ok(f) = rx.try_recv() {
            meter.took(&f);
        }
        meter.idle();
        assert_eq!((meter.frames(), meter.bytes()), (0, 0));
        // Past the ceiling even a reading client is closed.
        for _ in 0..16 {
            c.send_raw(Outgoing::Ping).unwrap();
        }
        assert_eq!(c.send_raw(Outgoing::Ping), Err(SendError::Overflow));
    }

    #[test]
    fn the_high_water_mark_is_three_quarters_of_frames_or_bytes() {
        let (c, _rx) = conn(8, 1000, Duration::from_secs(3600));
        for _ in 0..5 {
            c.send_raw(Outgoing::Ping).unwrap();
        }
        assert!(!c.is_busy(), "5 of 8 frames");
        c.send_raw(Outgoing::Ping).unwrap();
        assert!(c.is_busy(), "6 of 8 frames");
        let (c, _rx) = conn(8, 1000, Duration::from_secs(3600));
        c.send_raw(Outgoing::Text("x".repeat(749))).unwrap();
        assert!(!c.is_busy());
        c.send_raw(Outgoing::Text("x".into())).unwrap();
        assert!(c.is_busy(), "750 of 1000 bytes");
    }
}
