//! The deploy kit (`deploy/`), run for real: nginx with the shipped site file terminating
//! TLS (certificates made here with rcgen) in front of a real `aip serve`, a real `aip
//! device` on `wss://` and the clients on `https://`; the systemd unit through
//! `systemd-analyze`; and aip's own TLS (`--tls-cert`) reached by the same clients.

#![allow(clippy::unwrap_used)]

use aip_testkit::process as support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::{free_port, run, run_env, Proc, Server};

/// The site file as shipped: the test runs this text, not a copy of it.
const SITE: &str = include_str!("../../../deploy/nginx/aip.conf");
const UNIT: &str = include_str!("../../../deploy/systemd/aip.service");
const CLUSTER_SITE: &str = include_str!("../../../deploy/nginx/aip-cluster.conf");

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files in `dir`;
/// returns the CA file.
fn make_certificates(dir: &Path) -> std::path::PathBuf {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "aip test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    ca_file
}

/// `text` with `from` replaced by `to`; panics when `from` is not there (the shipped
/// file changed under the test).
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "deploy/nginx/aip.conf no longer has {from:?}"
    );
    text.replacen(from, to, 1)
}

/// nginx in the foreground with a config of its own in `dir`; killed on drop.
struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM: the master stops its workers (a SIGKILLed master would leave them running).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Nginx {
    /// Runs the shipped site on 127.0.0.1:`port` in front of aip on `aip_port`.
    fn start(dir: &Path, port: u16, aip_port: u16) -> Nginx {
        let d = dir.display();
        let mut site = swap(
            SITE,
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{port} ssl;"),
        );
        site = swap(&site, "listen [::]:443 ssl;", "");
        site = swap(
            &site,
            "server 127.0.0.1:5000;",
            &format!("server 127.0.0.1:{aip_port};"),
        );
        site = swap(
            &site,
            "/etc/ssl/aip/fullchain.pem",
            &format!("{d}/server.pem"),
        );
        site = swap(
            &site,
            "/etc/ssl/aip/privkey.pem",
            &format!("{d}/server.key"),
        );
        Nginx::run_site(dir, port, &site)
    }

    /// Runs `site` (an nginx `server` block and what it needs) on 127.0.0.1:`port`.
    fn run_site(dir: &Path, port: u16, site: &str) -> Nginx {
        let nginx = which("nginx").unwrap_or_else(|| {
            panic!("nginx is not installed: `apt-get install -y nginx` (.ci/run installs it when missing)")
        });
        let d = dir.display();
        std::fs::write(dir.join("aip.conf"), site).unwrap();
        // As root, workers would drop to `nobody`, who cannot reach the temp dir.
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/aip.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let conf_path = dir.join("nginx.conf");
        let err_path = dir.join("error.log");
        let check = Command::new(&nginx)
            .arg("-t")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&err_path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nginx -t refused the site: {check:?}"
        );
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&err_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut nginx = Nginx(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = nginx.0.try_wait().unwrap() {
                panic!(
                    "nginx exited ({st}): {}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nginx not listening within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn nginx_with_the_shipped_site_carries_a_wss_device_and_an_https_dispatch_to_aip() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_certificates(tmp.path());
    let ca = ca.to_str().unwrap();
    let srv = Server::start(&tmp.path().join("data"), &[]);
    let port = free_port();
    let _nginx = Nginx::start(tmp.path(), port, srv.port);
    let https = format!("https://127.0.0.1:{port}");
    let wss = format!("wss://127.0.0.1:{port}/ws");

    // The device reaches aip only through nginx, over TLS, trusting only the test CA.
    let mut dev = Proc::spawn(&[
        "device",
        "--server",
        &wss,
        "--ca-cert",
        ca,
        "--client-id",
        "tls-dev",
    ]);
    dev.wait_for_line("registered");

    run(&["clients", "--url", &https, "--ca-cert", ca])
        .expect_code(0)
        .stdout_has(&["tls-dev"]);
    run(&["health", "--url", &https, "--ca-cert", ca])
        .expect_code(0)
        .stdout_has(&["healthy: up"]);
    run(&[
        "dispatch",
        "--url",
        &https,
        "--ca-cert",
        ca,
        "--target",
        "tls-dev",
        "--task-name",
        "via-nginx",
        "--command",
        "echo through nginx",
        "--wait",
        "--timeout",
        "30s",
    ])
    .expect_code(0)
    .stdout_has(&[
        "state: completed",
        "$ echo through nginx",
        "stdout | through nginx",
    ]);
    run(&["sessions", "--url", &https, "--ca-cert", ca])
        .expect_code(0)
        .stdout_has(&["via-nginx", "completed"]);

    // The live event stream (`curl -N`) passes through nginx at once, unbuffered.
    let events = format!("{https}/api/events");
    let mut curl = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "20", "--cacert", ca, &events])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl (installed with schemathesis's tools)");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let out = curl.stdout.take().unwrap();
    let into = seen.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut out = out;
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.lock().unwrap().contains("retry:") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut late = Proc::spawn(&[
        "device",
        "--server",
        &wss,
        "--ca-cert",
        ca,
        "--client-id",
        "sse-dev",
    ]);
    late.wait_for_line("registered");
    while !seen.lock().unwrap().contains(r#""client_id":"sse-dev""#)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = curl.kill();
    let _ = curl.wait();
    let text = seen.lock().unwrap().clone();
    assert!(
        text.contains("event: client_connected") && text.contains(r#""client_id":"sse-dev""#),
        "the event did not come through nginx: {text:?}"
    );

    // Without the CA the system roots do not know the test certificate: a clear refusal.
    run(&["clients", "--url", &https])
        .expect_code(1)
        .stderr_has(&["cannot reach https://127.0.0.1:", "certificate"]);
    let mut stranger = Proc::spawn(&["device", "--server", &wss, "--client-id", "no-ca"]);
    let refused = stranger.wait_for_line("disconnected; reconnecting");
    assert!(refused.contains("certificate"), "{refused}");

    // The system roots are really what is read without --ca-cert: where they come from
    // (SSL_CERT_FILE, as OpenSSL) decides.
    let system = [("SSL_CERT_FILE", ca)];
    let mut trusting = Proc::spawn_env(
        &["device", "--server", &wss, "--client-id", "system-roots"],
        &system,
    );
    trusting.wait_for_line("registered");
    run_env(&["clients", "--url", &https], &system)
        .expect_code(0)
        .stdout_has(&["system-roots", "tls-dev"]);
}

/// Without a proxy: aip's own TLS (`--tls-cert`), reached the same way.
#[test]
fn a_wss_device_and_https_clients_reach_aip_serving_tls_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_certificates(tmp.path());
    let ca = ca.to_str().unwrap();
    let (cert, key) = (tmp.path().join("server.pem"), tmp.path().join("server.key"));
    let srv = Server::start(
        &tmp.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let https = format!("https://127.0.0.1:{}", srv.port);
    let wss = format!("wss://127.0.0.1:{}/ws", srv.port);
    let mut dev = Proc::spawn(&[
        "device",
        "--server",
        &wss,
        "--ca-cert",
        ca,
        "--client-id",
        "direct",
    ]);
    dev.wait_for_line("registered");
    run(&[
        "dispatch",
        "--url",
        &https,
        "--ca-cert",
        ca,
        "--target",
        "direct",
        "--command",
        "echo direct",
        "--wait",
        "--timeout",
        "30s",
    ])
    .expect_code(0)
    .stdout_has(&["stdout | direct"]);
}

#[test]
fn the_systemd_unit_verifies_cleanly_and_is_hardened() {
    let Some(analyze) = which("systemd-analyze") else {
        // Only where systemd is present; CI images without it cannot check the unit.
        eprintln!("systemd-analyze not installed: deploy/systemd/aip.service not verified");
        return;
    };
    for wanted in [
        "DynamicUser=yes",
        "StateDirectory=aip",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "ExecStart=/usr/local/bin/aip serve",
    ] {
        assert!(UNIT.contains(wanted), "the unit lacks {wanted}");
    }
    // verify wants ExecStart to exist: point it at the binary under test.
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("aip.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/aip", &support::BIN)).unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {out:?}"
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for aip.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(
        level <= 2.0,
        "exposure {level} (systemd's scale: 0 best, 10 worst):\n{text}"
    );
}

/// The shipped load balancer site in front of three cluster nodes on one Redis: a device
/// and the clients know only nginx; when the device's node is killed, the device comes
/// back through nginx on another node and takes the next task.
#[test]
fn the_shipped_cluster_site_balances_three_nodes_and_survives_one_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = aip_testkit::redis::RedisServer::start(&tmp.path().join("redis"));
    let url = redis.url();
    let nodes: Vec<Server> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Server::start(&tmp.path().join(id), &["--cluster", &url, "--node-id", id]))
        .collect();
    let port = free_port();
    let mut site = swap(
        CLUSTER_SITE,
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
    );
    for (n, node) in ["10.0.0.11:5000", "10.0.0.12:5000", "10.0.0.13:5000"]
        .iter()
        .zip(&nodes)
    {
        site = swap(&site, n, &format!("127.0.0.1:{}", node.port));
    }
    let _nginx = Nginx::run_site(tmp.path(), port, &site);
    let http = format!("http://127.0.0.1:{port}");
    let ws = format!("ws://127.0.0.1:{port}/ws");

    let mut dev = Proc::spawn(&["device", "--server", &ws, "--client-id", "lb-dev"]);
    dev.wait_for_line("registered");
    let dispatch = |text: &str| {
        run(&[
            "dispatch",
            "--url",
            &http,
            "--target",
            "lb-dev",
            "--command",
            text,
            "--wait",
            "--timeout",
            "30s",
        ])
    };
    for i in 0..3 {
        // Each call may land on any node.
        dispatch(&format!("echo round {i}"))
            .expect_code(0)
            .stdout_has(&["state: completed", &format!("stdout | round {i}")]);
    }
    // The node holding the device, as every node reports it.
    let clients = run(&["clients", "--url", &http, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&clients.stdout).unwrap();
    let holder = listed["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "lb-dev")
        .and_then(|c| c["node"].as_str())
        .unwrap_or_else(|| panic!("no node for lb-dev: {listed}"))
        .to_owned();
    let killed = &nodes[["n1", "n2", "n3"]
        .iter()
        .position(|n| *n == holder)
        .unwrap()];
    let _ = Command::new("kill")
        .args(["-9", &killed.proc.pid().to_string()])
        .status();
    // Back through nginx on a surviving node (after the lost node is cleaned up).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&["clients", "--url", &http, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        let moved = v["clients"].as_array().is_some_and(|all| {
            all.iter()
                .any(|c| c["client_id"] == "lb-dev" && c["node"] != holder.as_str())
        });
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lb-dev never came back: {v}\n{}",
            dev.output()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    dispatch("echo after the kill")
        .expect_code(0)
        .stdout_has(&["stdout | after the kill"]);
}
