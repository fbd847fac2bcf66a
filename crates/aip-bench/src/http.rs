//! The generator's HTTP side: one keep-alive HTTP/1.1 connection per worker.
//!
//! Each worker has at most one request in flight, so it owns its connection outright:
//! no pool, no URL parsing, no per-request client machinery. That keeps the generator's
//! own CPU per request small, which matters when it shares two cores with the server it
//! measures (a general-purpose client such as reqwest spent about as much CPU per
//! request here as the floor server does).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::client::{encode_query, Fail, Target};

/// A worker's connection to the server's HTTP API; reconnects when the server closed it.
pub struct Http {
    authority: String,
    host: HeaderValue,
    api_key: Option<HeaderValue>,
    limit: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Http {
    pub fn new(target: &Target) -> Self {
        Self {
            authority: target.authority().to_owned(),
            host: target.host_header().clone(),
            api_key: target.key_header().cloned(),
            limit: target.timeout,
            sender: None,
        }
    }

    /// `POST path` with a JSON body; the whole response body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: Vec<u8>,
        what: &str,
    ) -> Result<Bytes, Fail> {
        self.request(Method::POST, path, Bytes::from(body), what)
            .await
    }

    /// `GET path`; the whole response body.
    pub async fn get(&mut self, path: &str, what: &str) -> Result<Bytes, Fail> {
        self.request(Method::GET, path, Bytes::new(), what).await
    }

    /// `DELETE path`; the whole response body.
    pub async fn delete(&mut self, path: &str, what: &str) -> Result<Bytes, Fail> {
        self.request(Method::DELETE, path, Bytes::new(), what).await
    }

    /// Sends one request and reads a `200` body, all within the per-await timeout; other
    /// statuses are failures by code. A failed connection is dropped (the next request
    /// opens a new one); a request is never retried, since a dispatch is not idempotent.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        what: &str,
    ) -> Result<Bytes, Fail> {
        let json = !body.is_empty();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if json {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(key) = &self.api_key {
            req = req.header("X-API-Key", key.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|_| Fail(format!("{what}: bad request")))?;
        let limit = self.limit;
        let exchange = async {
            let sender = self.ready(what).await?;
            let response = sender
                .send_request(req)
                .await
                .map_err(|_| Fail(format!("{what}: HTTP transport error")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| Fail(format!("{what}: HTTP transport error")))?
                .to_bytes();
            Ok::<_, Fail>((status, body))
        };
        let outcome = match timeout(limit, exchange).await {
            Err(_) => Err(Fail::timeout(what)),
            Ok(r) => r,
        };
        match outcome {
            Ok((StatusCode::OK, body)) => Ok(body),
            Ok((status, _)) => Err(Fail(format!("{what}: HTTP {}", status.as_u16()))),
            Err(fail) => {
                self.sender = None;
                Err(fail)
            }
        }
    }

    /// The open connection, ready for a request; opens one if there is none or the
    /// server closed it.
    async fn ready(&mut self, what: &str) -> Result<&mut SendRequest<Full<Bytes>>, Fail> {
        let open = match self.sender.take() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let sender = match open {
            Some(sender) => sender,
            None => self.connect(what).await?,
        };
        Ok(self.sender.insert(sender))
    }

    async fn connect(&self, what: &str) -> Result<SendRequest<Full<Bytes>>, Fail> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Fail(format!("{what}: connect: {:?}", e.kind())))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Fail(format!("{what}: HTTP handshake")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// The one-command plan every `dispatch` and `session` request carries.
#[derive(Serialize)]
struct DispatchBody<'a> {
    target_id: &'a str,
    request: &'static str,
    task_name: &'a str,
    commands: [BenchCommand; 1],
}

#[derive(Serialize)]
struct BenchCommand {
    tool_name: &'static str,
    tool_type: &'static str,
}

#[derive(Deserialize)]
struct Dispatched {
    session_id: Option<String>,
}

/// The fields of a `task_result` answer the generator checks.
#[derive(Deserialize)]
pub struct TaskResult {
    pub status: Option<String>,
    pub state: Option<String>,
}

/// `POST /api/dispatch`; returns the session id.
pub async fn dispatch(http: &mut Http, device: &str, task_name: &str) -> Result<String, Fail> {
    let body = DispatchBody {
        target_id: device,
        request: "bench",
        task_name,
        commands: [BenchCommand {
            tool_name: "noop",
            tool_type: "action",
        }],
    };
    let body = serde_json::to_vec(&body).map_err(|_| Fail::new("dispatch: bad body"))?;
    let answer = http.post_json("/api/dispatch", body, "dispatch").await?;
    serde_json::from_slice::<Dispatched>(&answer)
        .map_err(|_| Fail::new("dispatch: bad body"))?
        .session_id
        .ok_or_else(|| Fail::new("dispatch: no session_id"))
}

/// `GET /api/task_result/{session_id}`.
pub async fn task_result(http: &mut Http, session_id: &str) -> Result<TaskResult, Fail> {
    let path = format!("/api/task_result/{}", encode_query(session_id));
    let answer = http.get(&path, "task_result").await?;
    serde_json::from_slice(&answer).map_err(|_| Fail::new("task_result: bad body"))
}
