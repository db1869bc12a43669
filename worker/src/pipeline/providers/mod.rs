//! Providers: one trait per stage, one module per implementation.
//!
//! Every call is async and cancellable by dropping its future; a provider that streams
//! writes into a bounded channel it is handed, so a slow consumer slows the provider
//! instead of growing a queue.

pub mod credentials;
pub mod echo_agent;
pub mod espeak;
pub mod grpc_agent;
pub mod openai_chat;
pub mod openai_stt;
pub mod openai_tts;
pub mod piper;
pub mod pocketsphinx;
pub mod realtime;
pub mod smart_turn;
pub mod speech_process;
pub mod sse;
pub mod webhook_agent;
pub mod whisper;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

/// Why a provider call failed. The message is the provider's own (an HTTP body, a
/// process's stderr) and never carries credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    /// The implementation that failed, e.g. `openai-stt`.
    pub provider: &'static str,
    /// What went wrong.
    pub kind: ErrorKind,
    /// The provider's message.
    pub message: String,
}

/// Classes of provider failure, each with a stable reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer in time.
    Timeout,
    /// Could not connect or the connection broke.
    Unavailable,
    /// The provider answered with an error status (4xx/5xx).
    Status(u16),
    /// The answer did not follow the wire format.
    Malformed,
    /// The configuration cannot work (unknown provider, missing credentials, no binary).
    Config,
}

impl ProviderError {
    /// A new error.
    pub fn new(provider: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            provider,
            kind,
            message: message.into(),
        }
    }

    /// Stable CamelCase reason, for events and metrics.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Timeout => "ProviderTimeout",
            ErrorKind::Unavailable => "ProviderUnavailable",
            ErrorKind::Status(s) if s < 500 => "ProviderRejected",
            ErrorKind::Status(_) => "ProviderFailed",
            ErrorKind::Malformed => "ProviderMalformed",
            ErrorKind::Config => "ProviderMisconfigured",
        }
    }

    /// Whether trying again may help (connection errors, timeouts, 5xx, 429).
    pub fn retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout | ErrorKind::Unavailable)
            || matches!(self.kind, ErrorKind::Status(s) if s >= 500 || s == 429)
    }
}

/// An utterance being transcribed while the user speaks.
pub trait SttStream: Send {
    /// Feeds 16 kHz mono samples; never blocks (a full queue drops and returns false).
    fn push(&mut self, samples: &[i16]) -> bool;
    /// The utterance is over: the final transcript.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<String, ProviderError>>;
}

/// Speech to text over a whole utterance.
pub trait SpeechToText: Send + Sync {
    /// The implementation's name.
    fn name(&self) -> &'static str;
    /// A transcription that starts now and is fed as the user speaks, when the
    /// implementation can do that (it then has the transcript moments after the turn ends).
    fn stream(&self) -> Option<Box<dyn SttStream>> {
        None
    }
    /// The transcript of `audio` (16 kHz mono PCM16); empty when nothing was recognised.
    fn transcribe<'a>(&'a self, audio: &'a [i16]) -> BoxFuture<'a, Result<String, ProviderError>>;
}

/// One user turn handed to an agent.
#[derive(Clone, Debug, Default)]
pub struct AgentTurn {
    /// Identifies the turn; replies and interruptions name it.
    pub turn_id: String,
    /// What the user said.
    pub text: String,
    /// The conversation so far, oldest first: (`user`|`assistant`, text).
    pub history: Vec<(String, String)>,
}

/// The agent that answers a turn, streaming its reply as text deltas.
pub trait Agent: Send + Sync {
    /// The implementation's name.
    fn name(&self) -> &'static str;
    /// Streams the reply to `turn` into `deltas`; returns when the reply is complete.
    fn reply<'a>(
        &'a self,
        turn: AgentTurn,
        deltas: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// The user cut the reply to `turn_id` off after hearing `heard`; agents that keep
    /// state (gRPC) are told, others ignore it.
    fn interrupted<'a>(&'a self, _turn_id: &'a str, _heard: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Text to speech, streaming 48 kHz mono PCM16 chunks (any length).
pub trait TextToSpeech: Send + Sync {
    /// The implementation's name.
    fn name(&self) -> &'static str;
    /// Speaks `text` into `audio`; returns when all of it was sent.
    fn synthesize<'a>(
        &'a self,
        text: &'a str,
        audio: mpsc::Sender<Vec<i16>>,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
}
/// Maps a reqwest failure to a provider error without the URL's query (which could hold
/// a key for some self-hosted servers).
pub(crate) fn http_error(provider: &'static str, e: &reqwest::Error) -> ProviderError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if let Some(status) = e.status() {
        ErrorKind::Status(status.as_u16())
    } else if e.is_decode() || e.is_body() {
        ErrorKind::Malformed
    } else {
        ErrorKind::Unavailable
    };
    let e = e.without_url_ref();
    ProviderError::new(provider, kind, e)
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut message = self.to_string();
        if let Some(url) = self.url() {
            message = message.replace(url.as_str(), url.path());
        }
        message
    }
}

/// An error status with the body's message (OpenAI puts it at `error.message`).
pub(crate) async fn status_error(
    provider: &'static str,
    response: reqwest::Response,
) -> ProviderError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    ProviderError::new(
        provider,
        ErrorKind::Status(status),
        format!("HTTP {status}: {message}"),
    )
}

/// How a network provider is reached.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    /// Base URL, e.g. `https://api.openai.com/v1`.
    pub base: String,
    /// Model name.
    pub model: String,
    /// API key, sent as a bearer token.
    pub key: Option<credentials::ApiKey>,
    /// Time allowed until the response headers (and between body chunks).
    pub timeout: std::time::Duration,
    /// The HTTP client (connection pool shared by every call of this provider).
    pub client: reqwest::Client,
}

impl HttpTarget {
    /// A target with its own client.
    pub fn new(
        provider: &'static str,
        base: &str,
        model: &str,
        key: Option<credentials::ApiKey>,
        timeout: std::time::Duration,
    ) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| ProviderError::new(provider, ErrorKind::Config, e.to_string()))?;
        Ok(Self {
            base: base.to_owned(),
            model: model.to_owned(),
            key,
            timeout,
            client,
        })
    }

    /// A POST to `path` with the bearer token, if any.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.post(join(&self.base, path));
        match &self.key {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }

    /// Sends `request`, waiting at most `timeout` for the headers; an error status is
    /// turned into an error with the provider's message.
    pub async fn send(
        &self,
        provider: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = tokio::time::timeout(self.timeout, request.send())
            .await
            .map_err(|_| {
                ProviderError::new(
                    provider,
                    ErrorKind::Timeout,
                    format!("no response within {:?}", self.timeout),
                )
            })?
            .map_err(|e| http_error(provider, &e))?;
        if !response.status().is_success() {
            return Err(status_error(provider, response).await);
        }
        Ok(response)
    }

    /// The next body chunk, waiting at most `timeout`; `None` at the end.
    pub async fn chunk(
        &self,
        provider: &'static str,
        response: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, ProviderError> {
        tokio::time::timeout(self.timeout, response.chunk())
            .await
            .map_err(|_| {
                ProviderError::new(
                    provider,
                    ErrorKind::Timeout,
                    format!("the stream stalled for {:?}", self.timeout),
                )
            })?
            .map_err(|e| http_error(provider, &e))
    }
}

/// `base` joined with `path` (`https://api.openai.com/v1` + `audio/speech`).
pub(crate) fn join(base: &str, path: &str) -> String {
    if path.is_empty() {
        return base.to_owned();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}
