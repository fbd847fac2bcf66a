//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and
//! metrics-exporter-prometheus.
//!
//! Counters and histograms are recorded where things happen, through the functions below
//! (one place names every metric); gauges that are a count of live things (connections by
//! role, live sessions) are read from the server's own state at scrape time, so they can
//! never drift. The recorder is process-wide: several servers in one process (tests)
//! share it. Per-frame counters are registered once and kept as handles, so the hot path
//! is one atomic add.

use std::sync::OnceLock;
use std::time::Duration;

use aip_protocol::ClientMessageType;
use metrics::{counter, gauge, histogram, Counter};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds buckets for latencies measured in milliseconds to minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Seconds buckets for whole sessions.
const SESSION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Operations per store commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once); `None` when another recorder was installed
/// first by the embedding program.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("aip_dispatch_delivery_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("aip_store_commit_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("aip_session_duration_seconds".into()),
                        SESSION_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("aip_llm_call_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("aip_store_commit_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::error!(cause = %e, "metrics buckets refused; /metrics is off");
                    return None;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics is off");
                return None;
            }
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("aip_connections", "Registered WebSocket clients, by role.");
    describe_gauge!("aip_sessions_live", "Sessions in state created or running.");
    describe_gauge!(
        "aip_sessions_unsaved",
        "Sessions whose latest state the store refused, kept in memory while the write is retried."
    );
    describe_counter!(
        "aip_registrations_total",
        "Accepted registrations, by role."
    );
    describe_counter!(
        "aip_registrations_refused_total",
        "Refused registrations, by reason."
    );
    describe_counter!(
        "aip_frames_received_total",
        "WebSocket text frames received from registered clients, by AIP message type (invalid: unparsable)."
    );
    describe_counter!(
        "aip_sessions_started_total",
        "Sessions created, by origin (http or ws)."
    );
    describe_counter!(
        "aip_sessions_ended_total",
        "Sessions ended, by state and reason."
    );
    describe_histogram!(
        "aip_dispatch_delivery_seconds",
        Unit::Seconds,
        "From an HTTP dispatch to the device's acceptance (echo or first report)."
    );
    describe_histogram!(
        "aip_session_duration_seconds",
        Unit::Seconds,
        "From creation to end, by state."
    );
    describe_histogram!(
        "aip_store_commit_seconds",
        Unit::Seconds,
        "Duration of one store commit (a batch of writes, one fsync)."
    );
    describe_histogram!(
        "aip_store_commit_batch_size",
        "Writes committed together in one transaction."
    );
    describe_counter!(
        "aip_outgoing_queue_overflows_total",
        "Connections closed because their outgoing queue was full."
    );
    describe_counter!(
        "aip_sockets_refused_total",
        "TCP connections closed at accept: over --max-sockets or --max-sockets-per-ip."
    );
    describe_counter!(
        "aip_cluster_nodes_lost_total",
        "Cluster mode: other nodes this node declared lost (and cleaned up after)"
    );
    describe_counter!(
        "aip_dispatch_busy_total",
        "Tasks refused because the target device's outgoing queue was above its high-water mark (HTTP 503, or a busy error to a constellation)."
    );
    describe_counter!(
        "aip_event_subscribers_dropped_total",
        "GET /api/events subscribers disconnected for falling behind the live events."
    );
    describe_counter!(
        "aip_llm_calls_total",
        "Calls to the model, by outcome (ok or error)."
    );
    describe_histogram!(
        "aip_llm_call_seconds",
        Unit::Seconds,
        "Duration of one model call, retries included."
    );
    describe_counter!(
        "aip_llm_tokens_total",
        "Tokens reported by the model, by kind (prompt or completion)."
    );
}

/// The exposition text, with the state-derived gauges set first.
pub fn render(
    handle: &PrometheusHandle,
    devices: usize,
    constellations: usize,
    live: usize,
    unsaved: usize,
) -> String {
    gauge!("aip_connections", "role" => "device").set(devices as f64);
    gauge!("aip_connections", "role" => "constellation").set(constellations as f64);
    gauge!("aip_sessions_live").set(live as f64);
    gauge!("aip_sessions_unsaved").set(unsaved as f64);
    handle.render()
}

/// Per-type frame counters, registered once (index: [`frame_index`]).
fn frames() -> &'static [Counter; 9] {
    static FRAMES: OnceLock<[Counter; 9]> = OnceLock::new();
    FRAMES.get_or_init(|| {
        [
            "register",
            "heartbeat",
            "task",
            "command_results",
            "task_end",
            "device_info_request",
            "device_info_response",
            "error",
            "invalid",
        ]
        .map(|t| counter!("aip_frames_received_total", "type" => t))
    })
}

fn frame_index(kind: ClientMessageType) -> usize {
    match kind {
        ClientMessageType::Register => 0,
        ClientMessageType::Heartbeat => 1,
        ClientMessageType::Task => 2,
        ClientMessageType::CommandResults => 3,
        ClientMessageType::TaskEnd => 4,
        ClientMessageType::DeviceInfoRequest => 5,
        ClientMessageType::DeviceInfoResponse => 6,
        ClientMessageType::Error => 7,
    }
}

/// A parsed frame from a registered client.
pub fn frame_received(kind: ClientMessageType) {
    frames()[frame_index(kind)].increment(1);
}

/// A frame that did not parse.
pub fn invalid_frame() {
    frames()[8].increment(1);
}

/// A registration accepted.
pub fn registered(role: &'static str) {
    counter!("aip_registrations_total", "role" => role).increment(1);
}

/// A registration refused; `reason` is a short fixed code.
pub fn registration_refused(reason: &'static str) {
    counter!("aip_registrations_refused_total", "reason" => reason).increment(1);
}

/// A session created.
pub fn session_started(origin: &'static str) {
    counter!("aip_sessions_started_total", "origin" => origin).increment(1);
}

/// A session ended after `lasted`.
pub fn session_ended(state: &'static str, reason: &'static str, lasted: Duration) {
    counter!("aip_sessions_ended_total", "state" => state, "reason" => reason).increment(1);
    histogram!("aip_session_duration_seconds", "state" => state).record(lasted.as_secs_f64());
}

/// A dispatched task accepted by its device after `waited`.
pub fn delivered(waited: Duration) {
    histogram!("aip_dispatch_delivery_seconds").record(waited.as_secs_f64());
}

/// One store commit of `writes` operations that took `took`.
pub fn store_commit(writes: usize, took: Duration) {
    histogram!("aip_store_commit_seconds").record(took.as_secs_f64());
    histogram!("aip_store_commit_batch_size").record(writes as f64);
}

/// A connection closed for a full outgoing queue.
pub fn queue_overflow() {
    counter!("aip_outgoing_queue_overflows_total").increment(1);
}

/// A socket closed at accept for being over a connection cap.
pub fn socket_refused() {
    counter!("aip_sockets_refused_total").increment(1);
}

/// A task refused because its device's outgoing queue was above the high-water mark.
pub fn dispatch_busy() {
    counter!("aip_dispatch_busy_total").increment(1);
}

/// An event stream subscriber dropped for falling behind.
pub fn subscriber_dropped() {
    counter!("aip_event_subscribers_dropped_total").increment(1);
}

/// Cluster mode: this node cleaned up after a lost node.
pub fn node_lost() {
    counter!("aip_cluster_nodes_lost_total").increment(1);
}
