//! Connection-level actions on a registered client, beside the registry: the disconnect
//! procedure (server.md §7) and the liveness probe of a holder (protocol.md §4.2). The
//! WebSocket layer calls them for its own connections, the cluster's answering side for
//! a holder another node asks about; neither reaches into the other.

use std::time::Duration;

use aip_protocol::ClientType;
use serde_json::json;
use tokio::time::Instant;

use crate::conn::Outgoing;
use crate::events::{EventBus, EventKind};
use crate::registry::ClientEntry;
use crate::session::CancelReason;
use crate::state::AppState;

/// Pings the holder of a `client_id` and waits for any inbound frame (protocol.md §4.2).
pub async fn probe_alive(app: &AppState, existing: &ClientEntry) -> bool {
    let before = existing.conn.last_seen_micros();
    if existing.conn.send_raw(Outgoing::Ping).is_err() {
        return false;
    }
    let deadline = Instant::now() + app.config.duplicate_probe_timeout;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if existing.conn.last_seen_micros() > before {
            return true;
        }
        if app
            .registry
            .get_conn(&existing.client_id, existing.conn.id())
            .is_none()
        {
            return false;
        }
    }
    false
}

/// The disconnect procedure (server.md §7), run once per connection: whoever removes
/// the registry entry cancels its sessions.
pub fn disconnect(app: &AppState, client_id: &str, conn_id: u64) {
    let Some(entry) = app.registry.remove_if_conn(client_id, conn_id) else {
        return;
    };
    let (sessions, reason) = match entry.role {
        ClientType::Device => (
            std::mem::take(&mut *entry.as_executor.lock()),
            CancelReason::DeviceDisconnected,
        ),
        ClientType::Constellation => (
            std::mem::take(&mut *entry.as_requester.lock()),
            CancelReason::RequesterDisconnected,
        ),
    };
    tracing::info!(client_id, sessions = sessions.len(), "client disconnected");
    client_disconnected(&app.sessions.events, &entry);
    if let Some(cluster) = &app.cluster {
        cluster.release(client_id, conn_id);
        cluster.client_gone(client_id, conn_id);
    }
    for sid in sessions {
        if let Some(h) = app.sessions.get(&sid) {
            h.cancel(reason);
        }
    }
}

/// `client_disconnected`.
fn client_disconnected(bus: &EventBus, entry: &ClientEntry) {
    bus.publish(EventKind::ClientDisconnected, || {
        json!({
            "client_id": entry.client_id,
            "client_type": entry.role.as_str(),
        })
    });
}
