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
pub mod pipecat;
pub mod pipecat_wire;
pub mod piper;
pub mod pocketsphinx;
pub mod realtime;
pub mod s2s_playout;
pub mod smart_turn;
pub mod speech_process;
pub mod sse;
pub mod webhook_agent;
pub mod whisper;

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::pipeline::sentences::truncate_text;

/// Largest error body read from a provider (the message is cut from it); the rest is not
/// read at all.
pub const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

/// How long an error body may take to arrive; after that the status alone is reported.
pub const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest provider error message kept (it reaches logs, client events and the session's
/// status).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;

/// Largest whole-body JSON answer (a transcription, a webhook's `{"text"}` reply).
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// Largest streamed reply body (server-sent events of one agent reply): far above any
/// reply's text, so only an endless or padded stream reaches it.
pub const MAX_STREAM_BYTES: usize = 4 * 1024 * 1024;

/// Longest time one streamed reply body may take in total, besides the per-chunk stall
/// timeout: a server that drips a byte just often enough is cut here.
pub const MAX_STREAM_DURATION: Duration = Duration::from_secs(300);

/// Most text an agent reply may have (bytes, UTF-8): the rest is not read, spoken or
/// reported. About four minutes of speech.
pub const MAX_REPLY_BYTES: usize = 4 * 1024;

/// Most messages one agent reply may take (gRPC), matching or not: an agent that floods
/// the stream with messages of other turns is cut off.
pub const MAX_REPLY_MESSAGES: usize = 4_096;

/// Largest gRPC message accepted from an agent.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024;

/// Most audio one TTS call may return: 60 s of 24 kHz PCM16 (a sentence is at most a few
/// hundred characters).
pub const MAX_SPEECH_BYTES: usize = 60 * 24_000 * 2;

/// Largest message accepted from a speech-to-speech (Realtime) server; an audio delta is a
/// few kilobytes of base64.
pub const MAX_REALTIME_MESSAGE_BYTES: usize = 1024 * 1024;

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
    /// The message is cut to [`MAX_ERROR_MESSAGE_BYTES`] on a character boundary: it is the
    /// provider's text, of any length.
    pub fn new(provider: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        let cut = match truncate_text(&message, MAX_ERROR_MESSAGE_BYTES) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(cut) => Some(cut),
        };
        let message = cut.unwrap_or(message);
        Self {
            provider,
            kind,
            message,
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
    /// What the agent asked for while answering the last turn, collected once its reply has
    /// been spoken (so a hang-up never cuts the goodbye). Taking it clears it.
    fn after_turn(&self) -> AfterTurn {
        AfterTurn::default()
    }
}

/// Requests an agent made while answering a turn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AfterTurn {
    /// The agent ends the session, with its reason in words.
    pub hangup: Option<String>,
    /// The agent's new conversation state (JSON), to persist for a resumed session.
    pub state: Option<String>,
}

/// Largest conversation state an agent may hand back (bytes); a larger one is refused, the
/// previous state kept, and the refusal logged, since it would grow the session object.
pub use voice_proto::session_config::MAX_AGENT_STATE_BYTES;

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
    // At most MAX_ERROR_BODY_BYTES within ERROR_BODY_TIMEOUT: a huge or stalled error body
    // still yields the status with whatever arrived.
    // The rest is never read: dropping the response closes its connection.
    let deadline = Instant::now() + ERROR_BODY_TIMEOUT;
    let mut response = response;
    let mut raw = Vec::new();
    while raw.len() < MAX_ERROR_BODY_BYTES {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await else {
            break;
        };
        let room = MAX_ERROR_BODY_BYTES - raw.len();
        raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    let body = String::from_utf8_lossy(&raw);
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

    /// The next body chunk within `limit`, waiting at most `timeout` for it; `None` at the
    /// end.
    pub async fn chunk(
        &self,
        provider: &'static str,
        response: &mut reqwest::Response,
        limit: &mut BodyLimit,
    ) -> Result<Option<bytes::Bytes>, ProviderError> {
        limit.next(provider, self.timeout, response).await
    }

    /// The whole body, at most `max_bytes`, each chunk within `timeout` and all of it
    /// within [`MAX_STREAM_DURATION`].
    pub async fn body(
        &self,
        provider: &'static str,
        response: reqwest::Response,
        max_bytes: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut response = response;
        let mut limit = BodyLimit::new(max_bytes, MAX_STREAM_DURATION);
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk(provider, &mut response, &mut limit).await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// What one response body may cost: a byte budget and a deadline for all of it.
#[derive(Debug)]
pub struct BodyLimit {
    max_bytes: usize,
    read: usize,
    total: Duration,
    deadline: Instant,
}

impl BodyLimit {
    /// A budget of `max_bytes` bytes and `total` time, starting now.
    pub fn new(max_bytes: usize, total: Duration) -> Self {
        Self {
            max_bytes,
            read: 0,
            total,
            deadline: Instant::now() + total,
        }
    }

    /// The next chunk of `response`, waiting at most `stall` for it and never past the
    /// deadline; an error once the body would exceed the byte budget.
    pub async fn next(
        &mut self,
        provider: &'static str,
        stall: Duration,
        response: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, ProviderError> {
        let now = Instant::now();
        let wait = stall.min(self.deadline.saturating_duration_since(now));
        let chunk = tokio::time::timeout(wait, response.chunk())
            .await
            .map_err(|_| {
                let message = if Instant::now() >= self.deadline {
                    format!("the body took longer than {:?}", self.total)
                } else {
                    format!("the stream stalled for {stall:?}")
                };
                ProviderError::new(provider, ErrorKind::Timeout, message)
            })?
            .map_err(|e| http_error(provider, &e))?;
        if let Some(chunk) = &chunk {
            self.read = self.read.saturating_add(chunk.len());
            if self.read > self.max_bytes {
                return Err(ProviderError::new(
                    provider,
                    ErrorKind::Malformed,
                    format!("the body is larger than {} bytes", self.max_bytes),
                ));
            }
        }
        Ok(chunk)
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
