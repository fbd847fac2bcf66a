//! `GET /metrics`: a real `aip serve` and a real `aip device` run a session; the scrape is
//! read with a Prometheus exposition-format parser (prometheus-parse).

#![allow(clippy::unwrap_used)]

use aip_testkit::process as support;

use prometheus_parse::{Sample, Scrape, Value};
use support::Server;

const KEY: &str = "metrics-test-key-0123456789";

fn scrape(server: &Server, key: Option<&str>) -> (u16, String) {
    let mut req = get_request(&format!("{}/metrics", server.url()));
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

fn get_request(url: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().get(url)
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include every `(k, v)` of `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s: &&Sample| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
            Value::Summary(_) => f64::NAN,
        })
}

#[test]
fn metrics_count_connections_frames_sessions_and_store_commits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--api-key", KEY]);
    let _device = server.device("metered", &["--api-key", KEY, "--heartbeat-interval", "1"]);
    server
        .aip(&[
            "dispatch",
            "--target",
            "metered",
            "--command",
            "echo metered",
            "--wait",
            "--api-key",
            KEY,
        ])
        .expect_code(0);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // a heartbeat or two

    let (status, _) = scrape(&server, None);
    assert_eq!(status, 401, "metrics are behind the API key");
    let (status, text) = scrape(&server, Some(KEY));
    assert_eq!(status, 200);
    let m = parse(&text);
    assert_eq!(
        value(&m, "aip_connections", &[("role", "device")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "aip_connections", &[("role", "constellation")]),
        Some(0.0)
    );
    assert_eq!(value(&m, "aip_sessions_live", &[]), Some(0.0));
    assert_eq!(
        value(&m, "aip_registrations_total", &[("role", "device")]),
        Some(1.0)
    );
    assert!(value(&m, "aip_frames_received_total", &[("type", "heartbeat")]).unwrap() >= 1.0);
    assert_eq!(
        value(
            &m,
            "aip_frames_received_total",
            &[("type", "command_results")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "aip_sessions_started_total", &[("origin", "http")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "aip_sessions_ended_total",
            &[("state", "completed"), ("reason", "none")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "aip_dispatch_delivery_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "aip_session_duration_seconds_count",
            &[("state", "completed")]
        ),
        Some(1.0)
    );
    assert!(value(&m, "aip_store_commit_seconds_count", &[]).unwrap() >= 1.0);
    assert!(value(&m, "aip_store_commit_batch_size_count", &[]).unwrap() >= 1.0);
    assert!(text.contains("# HELP aip_sessions_ended_total"));
}

#[test]
fn metrics_public_needs_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--api-key", KEY, "--metrics-public"]);
    let (status, text) = scrape(&server, None);
    assert_eq!(status, 200);
    let m = parse(&text);
    assert_eq!(
        value(&m, "aip_connections", &[("role", "device")]),
        Some(0.0)
    );
}
