//! SIGHUP, the operator's "reload": one listener loop for each thing that reloads on it
//! (the TLS certificate, the key file), or, with nothing to reload, a line in the log —
//! the signal's default action would end the server.

use tokio_util::sync::CancellationToken;

/// Calls `reload` on every SIGHUP until `stop` (Unix; elsewhere never). `what` names what
/// is reloaded, in the warning if the signal cannot be caught.
pub fn on_sighup(what: &'static str, stop: CancellationToken, reload: impl Fn() + Send + 'static) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: {what} will not be reloaded");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            reload();
        }
    });
    #[cfg(not(unix))]
    let _ = (what, stop, reload);
}
