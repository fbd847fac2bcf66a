//! A scripted OpenAI-compatible chat-completions endpoint, for tests and demos: the real
//! wire format over real HTTP, answers taken from a script, every request recorded.
//! The one fake the project allows: it stands in for a paid model API.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::LlmConfig;

/// One scripted answer: HTTP status, JSON body, extra headers.
pub struct Reply(pub u16, pub Value, pub Vec<(&'static str, &'static str)>);

/// What the endpoint saw for one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct Mock {
    pub addr: SocketAddr,
    script: Arc<Script>,
}

impl Mock {
    pub async fn start(replies: Vec<Reply>) -> std::io::Result<Mock> {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            seen: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/openai/deployments/{dep}/chat/completions", post(chat))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Mock { addr, script })
    }

    pub fn config(&self) -> LlmConfig {
        LlmConfig {
            api_key: Some("sk-test".into()),
            retry_base: Duration::from_millis(10),
            ..LlmConfig::new(format!("http://{}/v1", self.addr), "test-model")
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.script
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.seen().into_iter().map(|s| s.body).collect()
    }
}

async fn chat(
    State(script): State<Arc<Script>>,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    script
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Seen {
            uri: uri.to_string(),
            headers,
            body,
        });
    let reply = script
        .replies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    let Some(Reply(status, body, headers)) = reply else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "script exhausted"}})),
        )
            .into_response();
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body)).into_response();
    for (k, v) in headers {
        if let Ok(v) = v.parse() {
            response.headers_mut().insert(k, v);
        }
    }
    response
}

/// A chat completion in the real wire format.
pub fn completion(text: Option<&str>, calls: &[(&str, &str, &str)]) -> Reply {
    let tool_calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": text});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    Reply(
        200,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_767_000_000,
            "model": "test-model",
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" },
            }],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }),
        vec![],
    )
}

pub fn call(id: &str, name: &str, args: Value) -> Reply {
    completion(None, &[(id, name, &args.to_string())])
}

pub fn finish(status: &str, answer: &str) -> Reply {
    call(
        "call_fin",
        "finish",
        json!({"status": status, "answer": answer}),
    )
}

pub fn error(status: u16, message: &str) -> Reply {
    Reply(
        status,
        json!({"error": {"message": message, "type": "error", "param": null, "code": null}}),
        vec![],
    )
}

impl Mock {
    /// Adds answers to the end of the script.
    pub fn push(&self, replies: Vec<Reply>) {
        self.script
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }
}
