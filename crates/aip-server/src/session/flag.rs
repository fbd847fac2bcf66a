//! A flag set once that tasks can wait for: a session's cancellation and its end.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A flag set once that tasks can wait for: what a `CancellationToken` would do for a
/// session's cancellation and end, without the tree node it allocates (paid twice by
/// every session waiting for its device).
#[derive(Default)]
pub(super) struct Flag {
    set: AtomicBool,
    notify: Notify,
}

impl Flag {
    /// Sets the flag and wakes every waiter; later calls do nothing.
    pub(super) fn set(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Resolves once the flag is set.
    pub(super) async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a `set` in between still wakes this waiter.
        notified.as_mut().enable();
        if self.set.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::Flag;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn flag_wakes_waiters_set_before_and_after_they_wait() {
        let flag = Arc::new(Flag::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let flag = flag.clone();
                tokio::spawn(async move { flag.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        flag.set();
        flag.set();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
        // Already set: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), flag.wait())
            .await
            .expect("waiting on a set flag did not resolve");
    }

    #[tokio::test]
    async fn flag_not_set_keeps_waiting() {
        let flag = Flag::default();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), flag.wait())
                .await
                .is_err(),
            "an unset flag resolved"
        );
    }
}
