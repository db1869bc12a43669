//! Providers: one trait per stage, one module per implementation.
//!
//! Every call is async and cancellable by dropping its future; a provider that streams
//! writes into a bounded channel it is handed, so a slow consumer slows the provider
//! instead of growing a queue.

pub mod credentials;
pub mod echo_agent;
pub mod espeak;
pub mod pocketsphinx;

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

/// Speech to text over a whole utterance.
pub trait SpeechToText: Send + Sync {
    /// The implementation's name.
    fn name(&self) -> &'static str;
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
