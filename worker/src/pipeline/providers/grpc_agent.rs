//! The seed's AgentInstance as a gRPC service (`voice.agent.v1.Agent`, see
//! `proto/agent.proto`): one `Converse` stream per session, opened at the first turn with
//! `start`, then a final `transcript` per turn answered by text deltas and `end_of_turn`;
//! barge-in sends `interruption`. A broken stream is reopened at the next turn.

use std::sync::Mutex as SyncMutex;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc};
use voice_proto::agent::v1::agent_client::AgentClient;
use voice_proto::agent::v1::{
    ConverseRequest, ConverseResponse, Interruption, MetadataUpdate, SessionEnd, SessionStart,
    UserTranscript, converse_request, converse_response,
};

use super::{
    AfterTurn, Agent, AgentTurn, ErrorKind, MAX_AGENT_STATE_BYTES, MAX_GRPC_MESSAGE_BYTES,
    MAX_REPLY_MESSAGES, ProviderError,
};
use crate::pipeline::metadata::MetadataFeed;
use crate::pipeline::spec::{Identity, Resume};

const NAME: &str = "grpc-agent";

/// Requests queued towards the agent.
const OUTBOUND: usize = 16;

/// The hang-up reason when the agent gave none.
const NO_REASON: &str = "the agent ended the call";

struct Conversation {
    requests: mpsc::Sender<ConverseRequest>,
    responses: tonic::Streaming<ConverseResponse>,
}

/// A gRPC agent for one session.
pub struct GrpcAgent {
    endpoint: tonic::transport::Endpoint,
    timeout: Duration,
    session_id: String,
    identity: Identity,
    config_json: String,
    metadata: SyncMutex<MetadataFeed>,
    /// What `SessionStart.context_json` carries when the stream is (re)opened.
    context: SyncMutex<String>,
    /// What the agent asked for during the current turn.
    after: SyncMutex<AfterTurn>,
    conversation: Mutex<Option<Conversation>>,
}

impl std::fmt::Debug for GrpcAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcAgent")
            .field("endpoint", &self.endpoint.uri())
            .finish_non_exhaustive()
    }
}

fn request(event: converse_request::Event) -> ConverseRequest {
    ConverseRequest {
        timestamp: Some(SystemTime::now().into()),
        event: Some(event),
    }
}

fn unavailable(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::new(NAME, ErrorKind::Unavailable, e.to_string())
}

fn config(message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, ErrorKind::Config, message)
}

fn lock<T>(m: &SyncMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one assignment or clone: a poisoned lock is still whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// TLS for an `https://` endpoint: the public web roots, plus `ca_pem` when the agent's
/// certificate comes from a private CA.
fn tls(ca_pem: Option<&str>) -> tonic::transport::ClientTlsConfig {
    let tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
    match ca_pem {
        Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        None => tls,
    }
}

impl GrpcAgent {
    /// An agent at `endpoint` (`http://host:port`, or `https://host:port` checked against
    /// the public web roots), allowed `timeout` per reply message.
    pub fn new(
        endpoint: &str,
        timeout: Duration,
        session_id: &str,
        config_json: &str,
    ) -> Result<Self, ProviderError> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| config(format!("bad endpoint: {e}")))?
            .connect_timeout(timeout);
        if endpoint.uri().scheme_str() == Some("https") {
            endpoint = endpoint
                .tls_config(tls(None))
                .map_err(|e| config(format!("TLS: {e}")))?;
        }
        Ok(Self {
            endpoint,
            timeout,
            session_id: session_id.to_owned(),
            identity: Identity::default(),
            config_json: config_json.to_owned(),
            metadata: SyncMutex::new(MetadataFeed::default()),
            context: SyncMutex::new(String::new()),
            after: SyncMutex::new(AfterTurn::default()),
            conversation: Mutex::new(None),
        })
    }

    /// Trusts `ca_pem` (PEM certificates) for an `https://` endpoint, besides the public
    /// roots; refused for `http://`, where it would silently do nothing.
    pub fn with_ca(mut self, ca_pem: &str) -> Result<Self, ProviderError> {
        if self.endpoint.uri().scheme_str() != Some("https") {
            return Err(config(
                "agent.grpc.caSecretRef is set but the endpoint is not https://; use https:// or remove caSecretRef",
            ));
        }
        self.endpoint = self
            .endpoint
            .clone()
            .tls_config(tls(Some(ca_pem)))
            .map_err(|e| config(format!("TLS: {e}")))?;
        Ok(self)
    }

    /// Hands the session's live metadata (`VoiceSession.spec.metadata`) to the agent: in
    /// `SessionStart.metadata`, and as a `metadata` update before the next turn when it
    /// changes.
    pub fn with_metadata(self, metadata: MetadataFeed) -> Self {
        *lock(&self.metadata) = metadata;
        self
    }

    /// Tells the agent who the session is for (`SessionStart.uid` and `user_id`).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }

    /// Resumes a conversation: the agent's own saved state when it left one, otherwise the
    /// transcript so far, goes in `SessionStart.context_json`.
    pub fn with_resume(self, resume: Option<&Resume>) -> Self {
        let context = match resume {
            Some(Resume {
                agent_state: Some(state),
                ..
            }) => state.clone(),
            Some(r) if !r.history.is_empty() || r.turns > 0 => {
                let transcript: Vec<_> = r
                    .history
                    .iter()
                    .map(|(role, text)| serde_json::json!({"role": role, "text": text}))
                    .collect();
                serde_json::json!({"turns": r.turns, "transcript": transcript}).to_string()
            }
            _ => String::new(),
        };
        *lock(&self.context) = context;
        self
    }

    async fn open(&self) -> Result<Conversation, ProviderError> {
        let channel = self.endpoint.connect().await.map_err(unavailable)?;
        let (requests, outbound) = mpsc::channel(OUTBOUND);
        let metadata = lock(&self.metadata).current_and_mark();
        let start = request(converse_request::Event::Start(SessionStart {
            session_id: self.session_id.clone(),
            uid: self.identity.uid.clone(),
            agent_config_json: self.config_json.clone(),
            context_json: lock(&self.context).clone(),
            metadata,
            user_id: self.identity.user_id.clone(),
            user_metadata: self.identity.user_metadata(),
            participants: self
                .identity
                .participants()
                .map(|(id, metadata)| voice_proto::agent::v1::Participant {
                    user_id: id.clone(),
                    metadata: metadata.clone().into_iter().collect(),
                })
                .collect(),
        }));
        requests.send(start).await.map_err(unavailable)?;
        let outbound = futures::stream::unfold(outbound, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let responses = tokio::time::timeout(
            self.timeout,
            AgentClient::new(channel)
                // A larger message is refused by tonic before it is buffered whole.
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .converse(outbound),
        )
        .await
        .map_err(|_| {
            ProviderError::new(
                NAME,
                ErrorKind::Timeout,
                "Converse was not accepted in time",
            )
        })?
        .map_err(|s| status(&s))?
        .into_inner();
        Ok(Conversation {
            requests,
            responses,
        })
    }

    /// Keeps the agent's new state for the next `start` and hands it on for persisting;
    /// a state larger than [`MAX_AGENT_STATE_BYTES`] is refused and the old one kept.
    fn keep_state(&self, context_json: String) {
        if context_json.is_empty() {
            return;
        }
        if context_json.len() > MAX_AGENT_STATE_BYTES {
            tracing::warn!(session = %self.session_id, bytes = context_json.len(), "the gRPC agent's context_json is larger than {MAX_AGENT_STATE_BYTES} bytes; the previous one is kept");
            return;
        }
        lock(&self.context).clone_from(&context_json);
        lock(&self.after).state = Some(context_json);
    }

    async fn run(
        &self,
        turn: AgentTurn,
        deltas: mpsc::Sender<String>,
    ) -> Result<(), ProviderError> {
        let mut guard = self.conversation.lock().await;
        if guard.is_none() {
            *guard = Some(self.open().await?);
        }
        let result = async {
            let conversation = guard.as_mut().ok_or_else(|| unavailable("no conversation"))?;
            let changed = lock(&self.metadata).changed();
            if let Some(metadata) = changed {
                let update = request(converse_request::Event::Metadata(MetadataUpdate { metadata }));
                conversation.requests.send(update).await.map_err(unavailable)?;
            }
            let transcript = request(converse_request::Event::Transcript(UserTranscript {
                turn_id: turn.turn_id.clone(),
                text: turn.text.clone(),
                is_final: true,
                language: String::new(),
            }));
            conversation.requests.send(transcript).await.map_err(unavailable)?;
            for _ in 0..MAX_REPLY_MESSAGES {
                if deltas.is_closed() {
                    return Ok(()); // cancelled, or the reply reached its length cap
                }
                let message = tokio::time::timeout(self.timeout, conversation.responses.next())
                    .await
                    .map_err(|_| ProviderError::new(NAME, ErrorKind::Timeout, format!("no reply within {:?}", self.timeout)))?;
                let message = match message {
                    Some(Ok(m)) => m,
                    Some(Err(s)) => return Err(status(&s)),
                    None => return Err(unavailable("the agent closed the Converse stream")),
                };
                match message.event {
                    Some(converse_response::Event::Delta(d)) if d.turn_id == turn.turn_id => {
                        let passed = deltas.send(d.text).await;
                        if passed.is_err() {
                            return Ok(()); // the turn was cancelled
                        }
                    }
                    Some(converse_response::Event::EndOfTurn(e)) if e.turn_id == turn.turn_id => {
                        self.keep_state(e.context_json);
                        return Ok(());
                    }
                    Some(converse_response::Event::Hangup(h)) => {
                        tracing::info!(session = %self.session_id, reason = %h.reason, "the gRPC agent hung up");
                        let reason = if h.reason.trim().is_empty() { NO_REASON.to_owned() } else { h.reason };
                        lock(&self.after).hangup = Some(reason);
                        return Ok(());
                    }
                    // Deltas of an interrupted earlier turn: dropped, as agent.proto says.
                    _ => {}
                }
            }
            Err(ProviderError::new(
                NAME,
                ErrorKind::Malformed,
                format!("no end_of_turn within {MAX_REPLY_MESSAGES} messages"),
            ))
        }
        .await;
        if result.as_ref().is_err_and(|e| e.kind != ErrorKind::Timeout) {
            *guard = None; // reopen at the next turn
        }
        result
    }
}

fn status(s: &tonic::Status) -> ProviderError {
    let kind = match s.code() {
        tonic::Code::DeadlineExceeded => ErrorKind::Timeout,
        tonic::Code::Unavailable => ErrorKind::Unavailable,
        tonic::Code::InvalidArgument
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated => ErrorKind::Status(400),
        _ => ErrorKind::Status(500),
    };
    ProviderError::new(NAME, kind, format!("{:?}: {}", s.code(), s.message()))
}

impl Drop for GrpcAgent {
    /// The session's pipeline is going away: tell the agent (`end`), close the request
    /// stream and let the agent finish, without holding anything up (at most 2 s, on a task).
    fn drop(&mut self) {
        let Some(mut conversation) = self.conversation.get_mut().take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let end = request(converse_request::Event::End(SessionEnd {
                reason: "Released".to_owned(),
            }));
            let _ = conversation.requests.send(end).await;
            drop(conversation.requests);
            let drain = async { while let Some(Ok(_)) = conversation.responses.next().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        });
    }
}

impl Agent for GrpcAgent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reply<'a>(
        &'a self,
        turn: AgentTurn,
        deltas: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.run(turn, deltas))
    }

    fn interrupted<'a>(&'a self, turn_id: &'a str, heard: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let guard = self.conversation.lock().await;
            if let Some(conversation) = guard.as_ref() {
                let message = request(converse_request::Event::Interruption(Interruption {
                    turn_id: turn_id.to_owned(),
                    heard_text: heard.to_owned(),
                }));
                let _ = conversation.requests.try_send(message);
            }
        })
    }

    fn after_turn(&self) -> AfterTurn {
        std::mem::take(&mut *lock(&self.after))
    }
}
