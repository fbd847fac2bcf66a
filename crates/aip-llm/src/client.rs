//! One chat-completions call, with retries.
//!
//! Built on `async-openai` (request types, URL/auth/query handling for OpenAI-compatible
//! servers and Azure) with its `middleware` hook: our own transport service does the retries
//! because the policy needs what the built-in one does not offer (401 retried, configurable
//! base delay, `Retry-After` capped at 30 s, the provider's message kept for the last error).
//! The response body is read as JSON and parsed leniently (see `WireResponse`), since
//! OpenAI-compatible servers differ in the fields they send.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::CreateChatCompletionRequest;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

use crate::{LlmConfig, LlmError};

/// Longest wait between two attempts, whatever `Retry-After` says.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Longest provider error text kept.
const MAX_ERROR_CHARS: usize = 2_000;

/// A configured, cheaply cloneable connection to the model (shares one HTTP connection pool);
/// build one per configuration and hand it to [`crate::AgentLoop::with_client`].
#[derive(Clone)]
pub struct LlmClient {
    inner: async_openai::Client<ProviderConfig>,
    config: Arc<LlmConfig>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    pub fn new(config: Arc<LlmConfig>) -> Result<LlmClient, LlmError> {
        let provider = ProviderConfig::new(&config)?;
        let http = reqwest::Client::builder()
            .timeout(config.call_timeout)
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        let transport = RetryingTransport {
            http: http.clone(),
            max_retries: config.max_retries,
            retry_base: config.retry_base,
        };
        let inner = async_openai::Client::build(http, provider).with_http_service(transport);
        Ok(LlmClient { inner, config })
    }

    pub fn config(&self) -> &Arc<LlmConfig> {
        &self.config
    }

    /// One model call (with retries), its body read leniently.
    pub(crate) async fn complete(
        &self,
        request: &CreateChatCompletionRequest,
    ) -> Result<WireResponse, LlmError> {
        let started = std::time::Instant::now();
        let response = self.call(request).await;
        // Recorded through the `metrics` facade: counted when the program installed a
        // recorder (aip serve's /metrics), free otherwise.
        metrics::histogram!("aip_llm_call_seconds").record(started.elapsed().as_secs_f64());
        let outcome = if response.is_ok() { "ok" } else { "error" };
        metrics::counter!("aip_llm_calls_total", "outcome" => outcome).increment(1);
        if let Ok(WireResponse {
            usage: Some(usage), ..
        }) = &response
        {
            metrics::counter!("aip_llm_tokens_total", "kind" => "prompt")
                .increment(usage.prompt_tokens);
            metrics::counter!("aip_llm_tokens_total", "kind" => "completion")
                .increment(usage.completion_tokens);
        }
        response
    }

    async fn call(&self, request: &CreateChatCompletionRequest) -> Result<WireResponse, LlmError> {
        let value: Value = self
            .inner
            .chat()
            .create_byot(request)
            .await
            .map_err(map_error)?;
        serde_json::from_value(value)
            .map_err(|e| LlmError::InvalidResponse(format!("not a chat completion: {e}")))
    }
}

/// URL, headers and query for OpenAI-compatible servers and Azure OpenAI. Unlike
/// async-openai's own configs it reads no environment variables and never panics on a key
/// that is not a valid header value.
#[derive(Clone)]
struct ProviderConfig {
    api_base: String,
    url_base: String,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    api_key: SecretString,
}

impl ProviderConfig {
    fn new(config: &LlmConfig) -> Result<ProviderConfig, LlmError> {
        let api_base = config.base_url.trim_end_matches('/').to_string();
        let key = config.api_key.clone().unwrap_or_default();
        let mut headers = HeaderMap::new();
        let (url_base, query) = match &config.azure_api_version {
            Some(version) => {
                let url_base = if api_base.contains("/openai/deployments/") {
                    api_base.clone()
                } else {
                    format!("{api_base}/openai/deployments/{}", config.model)
                };
                if !key.is_empty() {
                    headers.insert("api-key", header_value(&key)?);
                }
                (url_base, vec![("api-version".to_string(), version.clone())])
            }
            None => {
                if !key.is_empty() {
                    headers.insert(AUTHORIZATION, header_value(&format!("Bearer {key}"))?);
                }
                (api_base.clone(), Vec::new())
            }
        };
        Ok(ProviderConfig {
            api_base,
            url_base,
            headers,
            query,
            api_key: SecretString::from(key),
        })
    }
}

fn header_value(text: &str) -> Result<HeaderValue, LlmError> {
    let mut value = HeaderValue::from_str(text).map_err(|_| {
        LlmError::Config("the API key contains characters not allowed in an HTTP header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

impl Config for ProviderConfig {
    fn headers(&self) -> HeaderMap {
        self.headers.clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url_base)
    }

    fn query(&self) -> Vec<(&str, &str)> {
        self.query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn api_base(&self) -> &str {
        &self.api_base
    }

    fn api_key(&self) -> &SecretString {
        &self.api_key
    }
}

/// The HTTP transport under async-openai: sends, retries transient failures, and hands back
/// either the successful response or the last error response, its body rewritten so that
/// async-openai reports the provider's message whatever shape the provider used.
#[derive(Clone)]
struct RetryingTransport {
    http: reqwest::Client,
    max_retries: u32,
    retry_base: Duration,
}

type TransportFuture = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

impl tower_service::Service<HttpRequestFactory> for RetryingTransport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(request).await })
    }
}

enum Attempt {
    Done(Result<reqwest::Response, OpenAIError>),
    Retry {
        failure: Result<reqwest::Response, OpenAIError>,
        retry_after: Option<Duration>,
        what: String,
    },
}

impl RetryingTransport {
    async fn send(&self, factory: HttpRequestFactory) -> Result<reqwest::Response, OpenAIError> {
        let mut retries = 0u32;
        loop {
            match self.attempt(&factory).await {
                Attempt::Done(outcome) => return outcome,
                Attempt::Retry {
                    failure,
                    retry_after,
                    what,
                } => {
                    if retries >= self.max_retries {
                        tracing::warn!(retries, failure = %what, "LLM call failed, giving up");
                        return failure;
                    }
                    let delay = retry_after
                        .unwrap_or_else(|| backoff(self.retry_base, retries))
                        .min(MAX_DELAY);
                    tracing::warn!(
                        retry = retries + 1,
                        of = self.max_retries,
                        delay_ms = delay.as_millis() as u64,
                        failure = %what,
                        "LLM call failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    retries += 1;
                }
            }
        }
    }

    async fn attempt(&self, factory: &HttpRequestFactory) -> Attempt {
        let request = match factory.build().await {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(e)),
        };
        let response = match self.http.execute(request).await {
            Ok(r) => r,
            Err(e) if e.is_builder() => return Attempt::Done(Err(OpenAIError::Reqwest(e))),
            Err(e) => {
                return Attempt::Retry {
                    what: error_text(&e),
                    failure: Err(OpenAIError::Reqwest(e)),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        // Read the body here, so a body that fails or times out half-way is retried too.
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Retry {
                    what: error_text(&e),
                    failure: Err(OpenAIError::Reqwest(e)),
                    retry_after: None,
                }
            }
        };
        if status.is_success() {
            let mut rebuilt = http::Response::builder().status(status);
            if let Some(h) = rebuilt.headers_mut() {
                *h = headers;
            }
            return Attempt::Done(rebuilt.body(body).map(Into::into).map_err(|e| {
                OpenAIError::InvalidArgument(format!("cannot rebuild the response: {e}"))
            }));
        }
        let (message, permanent) = provider_message(status, &body);
        let rebuilt = error_response(status, &message);
        if permanent || !retryable(status) {
            return Attempt::Done(rebuilt);
        }
        Attempt::Retry {
            what: format!("HTTP {}: {message}", status.as_u16()),
            failure: rebuilt,
            retry_after: retry_after(&headers),
        }
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 408 | 429) || status.is_server_error()
}

fn backoff(base: Duration, retries: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(retries.min(16)))
}

/// `retry-after-ms` (OpenAI, Azure) or `Retry-After` in seconds; HTTP dates are ignored
/// (the exponential backoff applies).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(
            (ms / 1000.0).min(MAX_DELAY.as_secs_f64()),
        ));
    }
    number("retry-after").map(|s| Duration::from_secs_f64(s.min(MAX_DELAY.as_secs_f64())))
}

/// The provider's error text (OpenAI `{"error":{"message":...}}`, `{"error":"..."}`,
/// `{"message":...}`, `{"detail":...}`, or the plain body) and whether it is permanent
/// (OpenAI's `insufficient_quota` 429).
fn provider_message(status: StatusCode, body: &[u8]) -> (String, bool) {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let text = json.as_ref().and_then(|v| {
        let error = v.get("error");
        error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .or_else(|| error.and_then(Value::as_str))
            .or_else(|| v.get("message").and_then(Value::as_str))
            .or_else(|| v.get("detail").and_then(Value::as_str))
            .map(str::to_string)
    });
    let permanent = json.as_ref().and_then(|v| v.get("error")).is_some_and(|e| {
        ["type", "code"]
            .iter()
            .any(|k| e.get(*k).and_then(Value::as_str) == Some("insufficient_quota"))
    });
    let text = text.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let text = if text.is_empty() {
        format!(
            "HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        )
    } else {
        cut(&text, MAX_ERROR_CHARS)
    };
    (text, permanent)
}

/// An error response async-openai turns into `ApiError { status, message }`: it parses
/// `{"error":{...}}` for 4xx and takes the raw body as the message for 5xx.
fn error_response(status: StatusCode, message: &str) -> Result<reqwest::Response, OpenAIError> {
    let body = if status.is_server_error() {
        message.to_string()
    } else {
        serde_json::json!({"error": {"message": message, "type": null, "param": null, "code": null}})
            .to_string()
    };
    http::Response::builder()
        .status(status)
        .body(body)
        .map(Into::into)
        .map_err(|e| OpenAIError::InvalidArgument(format!("cannot rebuild the response: {e}")))
}

fn map_error(e: OpenAIError) -> LlmError {
    match e {
        OpenAIError::ApiError(r) => LlmError::Provider {
            status: Some(r.status_code.as_u16()),
            message: r.api_error.message,
        },
        OpenAIError::Reqwest(e) => LlmError::Provider {
            status: e.status().map(|s| s.as_u16()),
            message: error_text(&e),
        },
        OpenAIError::JSONDeserialize(e, _) => {
            LlmError::InvalidResponse(format!("the body is not JSON: {e}"))
        }
        OpenAIError::InvalidArgument(m) => LlmError::Config(m),
        other => LlmError::Provider {
            status: None,
            message: other.to_string(),
        },
    }
}

/// A reqwest error with its causes ("error sending request …: client error (Connect): …").
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The parts of a chat completion the loop uses; everything optional, unknown fields ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct WireResponse {
    #[serde(default)]
    pub choices: Vec<WireChoice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireChoice {
    #[serde(default)]
    pub message: Option<WireMessage>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireMessage {
    /// A string, a list of content parts, or null.
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
}

impl WireMessage {
    pub(crate) fn text(&self) -> Option<String> {
        let text = match &self.content {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        let text = if text.trim().is_empty() {
            self.refusal.clone().unwrap_or_default()
        } else {
            text
        };
        (!text.trim().is_empty()).then_some(text)
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&h), Some(MAX_DELAY));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_doubles() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 0), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(8));
        assert!(backoff(base, 40).min(MAX_DELAY) == MAX_DELAY);
    }

    #[test]
    fn provider_messages() {
        let s = StatusCode::UNAUTHORIZED;
        let m = |b: &str| provider_message(s, b.as_bytes());
        assert_eq!(
            m(r#"{"error":{"message":"Incorrect API key"}}"#).0,
            "Incorrect API key"
        );
        assert_eq!(m(r#"{"error":"model not found"}"#).0, "model not found");
        assert_eq!(m(r#"{"detail":"nope"}"#).0, "nope");
        assert_eq!(m("Bad Gateway\n").0, "Bad Gateway");
        assert_eq!(m("").0, "HTTP 401 Unauthorized");
        assert!(m(r#"{"error":{"message":"quota","type":"insufficient_quota"}}"#).1);
        assert!(!m(r#"{"error":{"message":"slow down","type":"requests"}}"#).1);
    }

    #[test]
    fn azure_and_openai_urls() {
        let c = LlmConfig::azure("https://r.openai.azure.com/", "dep", "k", "2024-10-21");
        let p = ProviderConfig::new(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.url("/chat/completions"),
            "https://r.openai.azure.com/openai/deployments/dep/chat/completions"
        );
        assert_eq!(p.query(), vec![("api-version", "2024-10-21")]);
        assert!(p.headers().get("api-key").is_some_and(|v| v.is_sensitive()));
        assert!(p.headers().get(AUTHORIZATION).is_none());

        let c = LlmConfig::openai("m", "sk-1");
        let p = ProviderConfig::new(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.url("/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert!(p.query().is_empty());
        assert_eq!(
            p.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
            Some("Bearer sk-1")
        );

        let p =
            ProviderConfig::new(&LlmConfig::ollama("llama3.2")).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.headers().is_empty());

        let bad = LlmConfig::openai("m", "line\nbreak");
        assert!(matches!(
            ProviderConfig::new(&bad),
            Err(LlmError::Config(_))
        ));
    }
}
