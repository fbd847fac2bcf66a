use std::fmt;
use std::time::Duration;

/// How to reach the model and how the loop behaves.
///
/// * OpenAI: [`LlmConfig::openai`] (`base_url` `https://api.openai.com/v1`, bearer key).
/// * Any OpenAI-compatible server (Ollama, vLLM, LM Studio, …): [`LlmConfig::new`] with its
///   `/v1` base URL, e.g. [`LlmConfig::ollama`] → `http://localhost:11434/v1`, no key.
/// * Azure OpenAI: [`LlmConfig::azure`]; `base_url` is the resource endpoint
///   (`https://<resource>.openai.azure.com`), `model` the deployment name, the key travels in
///   the `api-key` header and `?api-version=` is added to every call.
#[derive(Clone)]
pub struct LlmConfig {
    /// OpenAI-compatible API base, `/chat/completions` is appended (Azure: the resource
    /// endpoint, `/openai/deployments/<model>/chat/completions` is appended unless the URL
    /// already contains `/openai/deployments/`).
    pub base_url: String,
    /// Model name (Azure: deployment name).
    pub model: String,
    /// Never logged, never in `Debug` output.
    pub api_key: Option<String>,
    /// Model calls per task; reaching it without `finish` stops the task as not completed.
    pub max_steps: u32,
    pub temperature: Option<f32>,
    /// Per HTTP attempt of a model call.
    pub call_timeout: Duration,
    /// Retries of one model call after connection failures, timeouts, HTTP 401/408/429/5xx.
    pub max_retries: u32,
    /// First backoff delay; doubles per retry, capped at 30 s. `Retry-After` wins when present.
    pub retry_base: Duration,
    /// A tool result longer than this (in characters) is cut and marked `…[truncated N chars]`.
    pub max_observation_chars: usize,
    /// When set: Azure OpenAI with this `api-version`.
    pub azure_api_version: Option<String>,
}

impl LlmConfig {
    pub const DEFAULT_MAX_STEPS: u32 = 20;
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);
    pub const DEFAULT_MAX_RETRIES: u32 = 4;
    pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_OBSERVATION_CHARS: usize = 16_000;
    pub const OPENAI_BASE_URL: &'static str = "https://api.openai.com/v1";
    pub const OLLAMA_BASE_URL: &'static str = "http://localhost:11434/v1";

    /// An OpenAI-compatible endpoint without a key, every other setting at its default.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            max_steps: Self::DEFAULT_MAX_STEPS,
            temperature: None,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            retry_base: Self::DEFAULT_RETRY_BASE,
            max_observation_chars: Self::DEFAULT_MAX_OBSERVATION_CHARS,
            azure_api_version: None,
        }
    }

    /// api.openai.com with a key.
    pub fn openai(model: impl Into<String>, api_key: impl Into<String>) -> Self {
        LlmConfig {
            api_key: Some(api_key.into()),
            ..Self::new(Self::OPENAI_BASE_URL, model)
        }
    }

    /// A local Ollama (`http://localhost:11434/v1`), no key.
    pub fn ollama(model: impl Into<String>) -> Self {
        Self::new(Self::OLLAMA_BASE_URL, model)
    }

    /// Azure OpenAI: `endpoint` `https://<resource>.openai.azure.com`, `deployment` as model.
    pub fn azure(
        endpoint: impl Into<String>,
        deployment: impl Into<String>,
        api_key: impl Into<String>,
        api_version: impl Into<String>,
    ) -> Self {
        LlmConfig {
            api_key: Some(api_key.into()),
            azure_api_version: Some(api_version.into()),
            ..Self::new(endpoint, deployment)
        }
    }
}

impl Default for LlmConfig {
    /// api.openai.com, no model, no key: set at least `model` and `api_key`.
    fn default() -> Self {
        Self::new(Self::OPENAI_BASE_URL, "")
    }
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_steps", &self.max_steps)
            .field("temperature", &self.temperature)
            .field("call_timeout", &self.call_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_base", &self.retry_base)
            .field("max_observation_chars", &self.max_observation_chars)
            .field("azure_api_version", &self.azure_api_version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let c = LlmConfig::azure(
            "https://r.openai.azure.com",
            "gpt",
            "s3cr3t-key",
            "2024-10-21",
        );
        let text = format!("{c:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("<redacted>"));
        assert_eq!(c.max_steps, 20);
        assert_eq!(c.max_retries, 4);
    }
}
