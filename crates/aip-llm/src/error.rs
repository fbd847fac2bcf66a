/// Why a model step could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider could not be reached or answered with an error (after the retries for
    /// transient failures). `message` is the provider's error message text (OpenAI:
    /// `error.message`) or the transport error.
    #[error("LLM provider error{}: {message}", status_suffix(*.status))]
    Provider {
        status: Option<u16>,
        message: String,
    },
    /// The provider answered 2xx with something that is not a usable chat completion.
    #[error("invalid LLM response: {0}")]
    InvalidResponse(String),
    /// The configuration cannot be used (e.g. an API key that is not a valid header value).
    #[error("invalid LLM configuration: {0}")]
    Config(String),
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}
