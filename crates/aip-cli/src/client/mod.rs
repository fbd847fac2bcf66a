//! HTTP clients of the server's API: `aip dispatch`, `result`, `sessions`, `cancel`,
//! `clients`, `health`, and fleet jobs (`run`, `job`). This file holds the connection
//! options and the one request path; `commands` the subcommands, `render` the text they
//! print, `wait` how a session is followed to its end; `jobs` the fleet job commands and
//! `job_view` their live display and summary. Every command returns the [`Exit`] its
//! outcome maps to.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use reqwest::StatusCode;
use serde_json::Value;

use crate::exit::Usage;

mod commands;
mod job_view;
mod jobs;
mod render;
mod wait;

pub use commands::{
    cancel, clients, dispatch, health, result, sessions, CancelArgs, ClientsArgs, DispatchArgs,
    HealthArgs, ResultArgs, SessionsArgs,
};
pub use jobs::{job, run, JobArgs, RunArgs};

/// Where the server's HTTP API is and how to talk to it.
#[derive(Args)]
pub struct ApiArgs {
    /// Base URL of the server's HTTP API: http://… or https://….
    #[arg(long, env = "AIP_URL", default_value = "http://127.0.0.1:5000")]
    url: String,
    /// API key (sent as X-API-Key).
    #[arg(long, env = "AIP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// For https://: trust only the CA certificates in this PEM file instead of the system roots.
    #[arg(long, env = "AIP_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

impl ApiArgs {
    /// A client for `--url`; a bad URL or CA file is a usage error.
    fn connect(&self) -> anyhow::Result<Api> {
        let base = self.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Usage(format!(
                "--url '{}' is not an http:// or https:// URL",
                self.url
            ))
            .into());
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30));
        if let Some(path) = &self.ca_cert {
            let certs = aip_agent::tls::load_pem_certs(path).map_err(|e| Usage(e.to_string()))?;
            let certs = certs
                .iter()
                .map(|c| reqwest::Certificate::from_der(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Usage(format!("{}: {e}", path.display())))?;
            builder = builder.tls_certs_only(certs);
        }
        Ok(Api {
            http: builder.build().context("cannot set up the HTTP client")?,
            base,
            key: self.api_key.clone().filter(|k| !k.is_empty()),
        })
    }
}

/// A refusal from the server: its status and `detail`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

impl std::error::Error for ApiError {}

/// The server's HTTP API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.endpoint(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.endpoint(path)).json(body))
            .await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.endpoint(path))).await
    }

    /// Sends one request; a non-2xx answer becomes an [`ApiError`].
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let req = match &self.key {
            Some(k) => req.header("X-API-Key", k),
            None => req,
        };
        // `{:#}` at the edge prints the whole chain: refused, certificate not trusted, ….
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = body["detail"].as_str().unwrap_or("no detail").to_owned();
            return Err(ApiError { status, detail }.into());
        }
        Ok(body)
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// One path segment, percent-encoded (session ids may hold `@`, task names `.`).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
