//! How the executor takes up a task pushed to it (protocol.md §3.6, §3.11): every
//! acceptance transition of a session, named. A pushed session awaits; the device's
//! echo makes it echoed (the server drives it), a report on the task first makes it
//! reported (the device runs it itself). Each transition is one compare-and-swap, so
//! an echo and a report racing each other cannot both win.

use std::sync::atomic::Ordering;

use aip_protocol::ServerMessage;

use super::handle::{Acceptance, SessionHandle};
use crate::registry::{ClientEntry, PendingEcho, Registry};

impl SessionHandle {
    /// Current acceptance state.
    pub fn acceptance(&self) -> Acceptance {
        Acceptance::from_u8(self.acceptance.load(Ordering::Acquire))
    }

    /// Moves `from` → `to`; false if the state was something else.
    fn transition(&self, from: Acceptance, to: Acceptance) -> bool {
        self.acceptance
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records that a `task` with `response_id` was pushed to the executor: awaiting.
    fn mark_pushed(&self, response_id: String) {
        *self.task_response_id.lock() = Some(response_id);
        self.acceptance
            .store(Acceptance::Awaiting as u8, Ordering::Release);
    }

    /// `response_id` of the pushed `task`, if any.
    pub fn task_response_id(&self) -> Option<String> {
        self.task_response_id.lock().clone()
    }

    /// The device echoed the pushed task: awaiting → echoed. False if it was not
    /// awaiting (already echoed, or reported).
    pub fn accept_echo(&self) -> bool {
        self.transition(Acceptance::Awaiting, Acceptance::Echoed)
    }

    /// Whether `command_results` answering `prev_response_id` belong to the session
    /// now. While awaiting, only a report on the pushed task does, and it makes the
    /// session reported (awaiting → reported); otherwise every one does (the job
    /// matches them to its rounds).
    pub fn admit_results(&self, prev_response_id: Option<&str>) -> bool {
        if self.acceptance() != Acceptance::Awaiting {
            return true;
        }
        let on_task = prev_response_id
            .is_some_and(|rid| self.task_response_id.lock().as_deref() == Some(rid));
        on_task && self.transition(Acceptance::Awaiting, Acceptance::Reported)
    }

    /// Whether the executor may end the session with its own `task_end`: only if it runs
    /// it itself (reported, or awaiting → reported now).
    pub fn admit_client_end(&self) -> bool {
        self.acceptance() == Acceptance::Reported
            || self.transition(Acceptance::Awaiting, Acceptance::Reported)
    }
}

/// Pushes the `task` assignment `msg` of `handle`'s session to `device` and awaits its
/// echo: the session is marked awaiting and the device remembers the pending echo.
/// False if the device is no longer connected or its queue refused the frame (the
/// pending echo is then forgotten again).
pub(super) fn push_task(
    registry: &Registry,
    handle: &SessionHandle,
    device: &ClientEntry,
    msg: &ServerMessage,
) -> bool {
    handle.mark_pushed(msg.response_id.clone().unwrap_or_default());
    device.push_pending_echo(PendingEcho {
        session_id: handle.session_id.to_string(),
        task_name: handle.task_name.clone(),
    });
    let still_there = registry
        .get_conn(&device.client_id, device.conn.id())
        .is_some();
    if still_there && device.send(msg).is_ok() {
        return true;
    }
    device.remove_pending_echo(&handle.session_id);
    false
}
