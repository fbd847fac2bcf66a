//! Limits that fit the host: the open-file limit is raised from its soft value to the
//! hard one at start, and the default connection cap is derived from what results, keeping
//! descriptors for the store, the listener, HTTP requests and the model client.

/// Descriptors kept for everything that is not a WebSocket.
pub const RESERVED_FDS: u64 = 256;
/// The cap when the limit cannot be read (non-Unix).
pub const FALLBACK_MAX_CONNECTIONS: usize = 1000;

/// The open-file limit after raising the soft limit to the hard one: `(soft, hard)`, or
/// `None` where there is no such limit to read.
pub fn raise_nofile_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        // Some systems report an unlimited hard limit that setrlimit refuses: cap it.
        let target = hard.min(1 << 20);
        if soft < target && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
            return Some((target, hard));
        }
        Some((soft, hard))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The default `--max-connections` for a soft open-file limit: one descriptor per
/// WebSocket, [`RESERVED_FDS`] kept back, at least 16.
pub fn default_max_connections(soft_nofile: Option<u64>) -> usize {
    match soft_nofile {
        Some(soft) => {
            usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX)
        }
        None => FALLBACK_MAX_CONNECTIONS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_keeps_headroom_below_the_descriptor_limit() {
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(65_536)), 65_280);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(None), FALLBACK_MAX_CONNECTIONS);
    }

    #[cfg(unix)]
    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let (soft, hard) = raise_nofile_limit().expect("a Unix limit");
        assert!(soft == hard.min(1 << 20), "soft {soft} hard {hard}");
    }
}
