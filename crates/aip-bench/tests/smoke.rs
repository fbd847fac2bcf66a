//! Smoke test: every scenario for about a second with a handful of clients against a real
//! aip server started in-process and the floor (`aip_bench::floor`). Checks that the report
//! has throughput and no failures; no timing assertions.

use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use tokio::sync::oneshot;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: aip_bench::BenchArgs,
}

/// A running server; dropping it shuts the server down.
struct Server {
    url: String,
    _aip: Option<aip_testkit::TestApp>,
    _stop: Option<oneshot::Sender<()>>,
}

async fn aip_server() -> Server {
    aip_server_with_key(None).await
}

async fn aip_server_with_key(api_key: Option<&str>) -> Server {
    let app = aip_testkit::spawn_app_with(|c| {
        c.api_key = api_key.map(str::to_owned);
        // dispatch: devices never accept; keep their sessions from failing mid-run.
        c.accept_timeout = Duration::from_secs(600);
        c.max_active_sessions = 100_000;
    })
    .await;
    Server {
        url: format!("ws://{}/ws", app.addr),
        _aip: Some(app),
        _stop: None,
    }
}

async fn floor_server() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(aip_bench::floor::serve(listener, async move {
        let _ = stopped.await;
    }));
    Server {
        url: format!("ws://{addr}/ws"),
        _aip: None,
        _stop: Some(stop),
    }
}

/// Runs `aip bench <args>` and returns its JSON report.
async fn bench(args: &[&str]) -> Value {
    let argv = std::iter::once("bench").chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).expect("arguments");
    let report = aip_bench::run_report(cli.bench).await.expect("bench run");
    let human = report.human();
    assert!(human.contains("throughput"), "{human}");
    serde_json::to_value(&report).expect("json")
}

fn assert_clean(run: &Value) {
    assert!(
        run["throughput"].as_f64().expect("throughput") > 0.0,
        "no throughput: {run:#}"
    );
    assert_eq!(run["failures"], 0, "failures: {run:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold() {
    let server = aip_server().await;
    let floor = floor_server().await;
    let pid = std::process::id().to_string();
    let report = bench(&[
        "hold",
        "--clients",
        "5",
        "--heartbeat-every",
        "0.2",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--url",
        &server.url,
        "--floor-url",
        &floor.url,
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(report["scenario"], "hold");
    assert_clean(&report["target"]);
    assert_clean(&report["floor"]);
    assert_eq!(report["target"]["details"]["connected"], 5);
    let server = &report["target"]["server"];
    assert!(server["rss_per_conn_kb"].is_number(), "{server:#}");
    assert!(server["cpu_percent"].is_number(), "{server:#}");
    assert!(report["ratio"]["throughput"].is_number(), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat() {
    let server = aip_server().await;
    let floor = floor_server().await;
    let report = bench(&[
        "--url",
        &server.url,
        "heartbeat",
        "--clients",
        "5",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
        "--floor-url",
        &floor.url,
        "--json",
    ])
    .await;
    assert_clean(&report["target"]);
    assert_clean(&report["floor"]);
    assert!(report["ratio"]["p50"].is_number(), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch() {
    let server = aip_server().await;
    let floor = floor_server().await;
    let report = bench(&[
        "dispatch",
        "--devices",
        "5",
        "--concurrency",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--url",
        &server.url,
        "--floor-url",
        &floor.url,
    ])
    .await;
    for run in [&report["target"], &report["floor"]] {
        assert_clean(run);
        assert_eq!(run["details"]["undelivered"], 0);
        assert_eq!(run["details"]["misrouted"], 0);
    }
    assert!(report["ratio"]["throughput"].is_number(), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session() {
    let server = aip_server().await;
    let floor = floor_server().await;
    let report = bench(&[
        "session",
        "--devices",
        "5",
        "--concurrency",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--url",
        &server.url,
        "--floor-url",
        &floor.url,
    ])
    .await;
    assert_clean(&report["target"]);
    assert_clean(&report["floor"]);
    assert!(report["ratio"]["p50"].is_number(), "{report:#}");
}

/// Fleet jobs (the floor has none: aip alone), two devices at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job() {
    let server = aip_server().await;
    let report = bench(&[
        "job",
        "--devices",
        "5",
        "--batch",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--url",
        &server.url,
    ])
    .await;
    assert_clean(&report["target"]);
    let details = &report["target"]["details"];
    assert!(
        details["sessions_per_second"].as_f64() > Some(0.0),
        "{report:#}"
    );
    assert_eq!(details["devices"], 5, "{report:#}");
}

/// With an API key, the devices authenticate with `?token=` and the HTTP calls with
/// `X-API-Key`; without the key every call is refused (and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_with_api_key() {
    let server = aip_server_with_key(Some("k&y")).await;
    let run = |key: Option<&'static str>| {
        let url = server.url.clone();
        async move {
            let mut args = vec![
                "session".to_owned(),
                "--devices".into(),
                "2".into(),
                "--concurrency".into(),
                "2".into(),
                "--seconds".into(),
                "0.5".into(),
                "--warmup".into(),
                "0".into(),
                "--url".into(),
                url,
            ];
            if let Some(key) = key {
                args.extend(["--api-key".to_owned(), key.to_owned()]);
            }
            let argv = std::iter::once("bench".to_owned()).chain(args);
            let cli = Cli::try_parse_from(argv).expect("arguments");
            aip_bench::run_report(cli.bench).await
        }
    };
    let report = serde_json::to_value(run(Some("k&y")).await.expect("bench run")).expect("json");
    assert_clean(&report["target"]);
    // A wrong key: no device can register, so the run is refused outright.
    assert!(run(Some("wrong")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn() {
    let server = aip_server().await;
    let floor = floor_server().await;
    let pid = std::process::id().to_string();
    let report = bench(&[
        "churn",
        "--clients",
        "5",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--url",
        &server.url,
        "--floor-url",
        &floor.url,
        "--server-pid",
        &pid,
    ])
    .await;
    assert_clean(&report["target"]);
    assert_clean(&report["floor"]);
    assert!(report["target"]["server"]["rss_settled_kb"].is_number());
}

#[tokio::test]
async fn refuses_bad_arguments() {
    let cli = Cli::try_parse_from([
        "bench",
        "heartbeat",
        "--clients",
        "0",
        "--url",
        "ws://127.0.0.1:1/ws",
    ])
    .expect("arguments");
    assert!(aip_bench::run_report(cli.bench).await.is_err());
    let cli = Cli::try_parse_from(["bench", "churn", "--url", "http://x/ws"]).expect("arguments");
    assert!(aip_bench::run_report(cli.bench).await.is_err());
}
