//! `aip serve --tls-cert --tls-key`: HTTPS and WSS on one port, with certificates this
//! test generates (its own CA), a device session and a dispatch over TLS, and the
//! certificate replaced on SIGHUP while a WebSocket stays connected.

#![allow(clippy::unwrap_used)]

use aip_testkit::process as support;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{free_port, BIN};

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A CA and a server certificate it signed for 127.0.0.1 / localhost, as PEM.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("aip test CA {name}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn install(p: &Pki, dir: &Path) {
    std::fs::write(dir.join("cert.pem"), &p.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &p.key_pem).unwrap();
}

fn http(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn ws_connector(ca: &str) -> Connector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Connector::Rustls(Arc::new(config))
}

async fn wss(port: u16, ca: &str) -> Result<Ws, String> {
    tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://127.0.0.1:{port}/ws"),
        None,
        true,
        Some(ws_connector(ca)),
    )
    .await
    .map(|(ws, _)| ws)
    .map_err(|e| e.to_string())
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("read");
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn https_and_wss_on_one_port_and_the_certificate_is_replaced_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki("one");
    install(&first, dir.path());
    let port = free_port();
    let child = Command::new(&*BIN)
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(dir.path().join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("key.pem"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _server = Server(child);
    let client = http(&first.ca_pem);
    let health = format!("https://127.0.0.1:{port}/api/health");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(&health).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "no HTTPS answer; stderr:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/health"))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));

    // A device over WSS, a dispatch over HTTPS.
    let mut dev = wss(port, &first.ca_pem).await.unwrap();
    send(
        &mut dev,
        json!({"type": "register", "status": "ok", "client_type": "device",
                          "client_id": "secure", "metadata": {"platform": "linux"}}),
    )
    .await;
    assert_eq!(recv(&mut dev).await["status"], "ok");
    let body: Value = client
        .post(format!("https://127.0.0.1:{port}/api/dispatch"))
        .json(
            &json!({"target_id": "secure", "request": "r", "task_name": "tls-1",
                      "commands": [{"tool_name": "t", "tool_type": "action"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "dispatched", "{body}");
    let task = recv(&mut dev).await;
    send(
        &mut dev,
        json!({"type": "task", "status": "continue", "client_id": "secure",
                          "task_name": task["task_name"], "request": "r", "session_id": null}),
    )
    .await;
    assert_eq!(recv(&mut dev).await["type"], "heartbeat");
    let cmd = recv(&mut dev).await;
    send(
        &mut dev,
        json!({"type": "command_results", "status": "continue", "client_id": "secure",
                          "session_id": cmd["session_id"], "prev_response_id": cmd["response_id"],
                          "action_results": [{"status": "success", "result": "ok",
                                              "call_id": cmd["actions"][0]["call_id"]}]}),
    )
    .await;
    assert_eq!(recv(&mut dev).await["status"], "completed");
    let done: Value = client
        .get(format!("https://127.0.0.1:{port}/api/task_result/tls-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["state"], "completed", "{done}");

    // A new certificate from another CA, then SIGHUP.
    let second = pki("two");
    install(&second, dir.path());
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let new_client = http(&second.ca_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while new_client.get(&health).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New handshakes no longer get the old certificate …
    assert!(wss(port, &first.ca_pem).await.is_err());
    assert!(wss(port, &second.ca_pem).await.is_ok());
    // … and the WebSocket opened before the reload is still up.
    send(
        &mut dev,
        json!({"type": "heartbeat", "status": "ok", "client_id": "secure"}),
    )
    .await;
    assert_eq!(recv(&mut dev).await["type"], "heartbeat");

    // A reload that fails keeps the certificate in use.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(new_client.get(&health).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn unreadable_tls_files_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki("x");
    install(&p, dir.path());
    let missing = dir.path().join("missing.pem");
    let cases: [(&Path, &Path, &str); 3] = [
        (&missing, &dir.path().join("key.pem"), "--tls-cert"),
        (&dir.path().join("cert.pem"), &missing, "--tls-key"),
        // The key of another certificate.
        (
            &dir.path().join("cert.pem"),
            &dir.path().join("other-key.pem"),
            "does not belong",
        ),
    ];
    std::fs::write(
        dir.path().join("other-key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    for (cert, key, want) in cases {
        let out = Command::new(&*BIN)
            .args(["serve", "--port", &free_port().to_string(), "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "{want}: {stderr}");
        assert!(
            stderr.contains(&*cert.display().to_string())
                || stderr.contains(&*key.display().to_string()),
            "{stderr}"
        );
    }
    // One without the other is a usage error.
    let out = Command::new(&*BIN)
        .args(["serve", "--tls-cert"])
        .arg(dir.path().join("cert.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
