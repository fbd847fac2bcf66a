//! Client-supplied text in log lines: control characters escaped (no forged lines, no
//! terminal escapes) and cut to a bounded length (no amplification: a 4 MiB error frame
//! logs a few hundred bytes), and repeated warnings about one peer rate-limited
//! ([`PeerThrottle`]): a flood of bad requests logs a few lines a minute, each saying how
//! many were left out.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most characters of one client-supplied value kept in a log line.
pub const MAX_LOGGED_CHARS: usize = 200;

/// Displays `text` escaped and cut; use as `field = %Clip(&value)`.
pub struct Clip<'a>(pub &'a str);

impl fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, (i, c)) in self.0.char_indices().enumerate() {
            if shown == MAX_LOGGED_CHARS {
                return write!(f, "…(+{} bytes)", self.0.len() - i);
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Warnings logged per peer (or per connection) in one [`WINDOW`]; the rest are counted.
pub const BURST: u32 = 5;
/// The period over which [`BURST`] applies.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Peers remembered at once; past it, expired entries are dropped, and a warning about a
/// peer that finds no room is left out (and counted in the next logged one).
const MAX_PEERS: usize = 4096;

/// The warnings of one source (a connection, or one peer in [`PeerThrottle`]).
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    since: Instant,
    logged: u32,
    left_out: u64,
}

impl Throttle {
    /// A source with nothing logged yet, its window starting `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            logged: 0,
            left_out: 0,
        }
    }

    /// `Some(n)`: log this warning, saying that `n` before it were left out; `None`: leave
    /// it out.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.since) >= WINDOW {
            self.since = now;
            self.logged = 0;
        }
        if self.logged < BURST {
            self.logged += 1;
            Some(std::mem::take(&mut self.left_out))
        } else {
            self.left_out += 1;
            None
        }
    }
}

/// [`Throttle`]s by peer address, bounded; use as
/// `if let Some(left_out) = throttle.allow(peer.ip()) { warn!(left_out, …) }`.
#[derive(Default)]
pub struct PeerThrottle {
    peers: Mutex<HashMap<IpAddr, Throttle>>,
    /// Warnings left out because no entry was free (counted in the next one logged).
    homeless: std::sync::atomic::AtomicU64,
}

impl PeerThrottle {
    /// Whether to log a warning about `peer` now (see [`Throttle::allow`]).
    pub fn allow(&self, peer: IpAddr) -> Option<u64> {
        self.allow_at(peer, Instant::now())
    }

    fn allow_at(&self, peer: IpAddr, now: Instant) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, t| now.duration_since(t.since) < WINDOW);
            if peers.len() >= MAX_PEERS {
                self.homeless.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let left_out = peers
            .entry(peer)
            .or_insert_with(|| Throttle::new(now))
            .allow(now)?;
        Some(left_out + self.homeless.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_logs_a_burst_per_window_and_then_says_how_many_it_left_out() {
        let t0 = Instant::now();
        let mut t = Throttle::new(t0);
        let first: Vec<_> = (0..8).map(|_| t.allow(t0)).collect();
        assert_eq!(first[..5], [Some(0); 5]);
        assert_eq!(first[5..], [None; 3]);
        let later = t0 + WINDOW;
        assert_eq!(
            t.allow(later),
            Some(3),
            "the next window's first line counts them"
        );
        assert_eq!(t.allow(later), Some(0));
    }

    #[test]
    fn peers_are_throttled_apart_and_the_memory_is_bounded() {
        let p = PeerThrottle::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..BURST {
            assert_eq!(p.allow_at(a, t0), Some(0));
        }
        assert_eq!(p.allow_at(a, t0), None);
        assert_eq!(p.allow_at(b, t0), Some(0), "another peer is not silenced");
        for i in 0..MAX_PEERS as u32 {
            p.allow_at(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)), t0);
        }
        assert!(p.peers.lock().len() <= MAX_PEERS);
        let stranger: IpAddr = "12.0.0.1".parse().unwrap();
        assert_eq!(p.allow_at(stranger, t0), None, "no room: left out");
        let later = t0 + WINDOW;
        // Two of the loop's peers and the stranger found no room: the next line says so.
        assert_eq!(
            p.allow_at(stranger, later),
            Some(3),
            "expired entries make room"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_long_values_cut() {
        assert_eq!(Clip("ok").to_string(), "ok");
        assert_eq!(
            Clip("a\nINFO forged\u{1b}[2J").to_string(),
            "a\\nINFO forged\\u{1b}[2J"
        );
        let long = "x".repeat(10_000);
        let shown = Clip(&long).to_string();
        assert!(shown.starts_with(&"x".repeat(MAX_LOGGED_CHARS)));
        assert!(shown.ends_with("…(+9800 bytes)"), "{shown}");
    }
}
