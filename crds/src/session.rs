//! `VoiceSession`: one conversation, admitted onto a worker (the seed's VoiceSession,
//! UserConnection, AudioBuffers, TurnDetectionState and PersistenceStatus).
//!
//! Its name is unique in its namespace, and its backend lives in the same namespace, which is
//! the seed's "session ID unique within backend".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AgentOverrides;
use crate::audio::AudioFormat;
use crate::states::{PersistenceStatus, PipelineState, SessionPhase};

/// Transport between the user's client and the worker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebRTC (Opus over SRTP), signalled with an HTTP offer/answer.
    #[default]
    WebRtc,
    /// WebSocket with PCM16 frames: server-to-server and telephony bridges.
    WebSocket,
    /// A LiveKit room: the user joins the session's room on the backend's LiveKit server
    /// (`spec.liveKit`) with the access token in the join-token Secret, and the worker joins
    /// it as the agent. Only for sessions of a backend with `spec.liveKit`.
    #[serde(rename = "livekit")]
    LiveKit,
    /// A phone call bridged by Twilio Media Streams: a TwiML `<Connect><Stream>` opens a
    /// WebSocket to the worker (status.endpoint.url) with the join token as the stream's
    /// `<Parameter name="token">`; audio is G.711 μ-law at 8000 Hz (codec pcmu).
    Twilio,
}

impl Transport {
    /// The spelling in manifests (`webrtc`, `websocket`, `livekit`, `twilio`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebRtc => "webrtc",
            Transport::WebSocket => "websocket",
            Transport::LiveKit => "livekit",
            Transport::Twilio => "twilio",
        }
    }
}

/// The backend a session runs on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct BackendRef {
    /// Name of a VoiceBackend in the session's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// The user on the other end (seed UserConnection, the parts known before connecting).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionUser {
    /// User identifier; non-empty.
    #[serde(rename = "userID")]
    #[schemars(length(min = 1, max = 253))]
    pub user_id: String,
    /// Connection metadata (seed UserConnection.Metadata): told to the agent when the session starts (gRPC `SessionStart.user_metadata`, webhook `user_metadata`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Another user of a multi-user session (providers with `multiUserSupport`): they join with
/// their own token and hear, and are heard by, the same agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionParticipant {
    /// User identifier, unique in the session and different from `spec.user.userID`; letters,
    /// digits, '-', '_' and '.', as it names the participant's key in the join-token Secret.
    #[serde(rename = "userID")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub user_id: String,
    /// This participant's connection metadata: told to the agent when the session starts
    /// (gRPC `SessionStart.participants`, webhook `participants`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Per-session turn detection override.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionTurnDetection {
    /// Non-speech after speech that ends the user's turn, as a Go duration; > 0.
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("turnDetection.silenceTimeout must be a positive duration such as 700ms"))]
    pub silence_timeout: Duration,
}

/// One conversation between a user and a VoiceBackend's agent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "voicebackends.dev",
    version = "v1alpha1",
    kind = "VoiceSession",
    namespaced,
    shortname = "vs",
    category = "voice",
    status = "VoiceSessionStatus",
    doc = "One voice conversation: admitted onto a worker of its VoiceBackend within every session cap, then reached by the client over WebRTC or WebSocket.",
    selectable = ".spec.backendRef.name",
    printcolumn(
        name = "Backend",
        type_ = "string",
        json_path = ".spec.backendRef.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Pipeline",
        type_ = "string",
        json_path = ".status.pipelineState"
    ),
    printcolumn(name = "Worker", type_ = "string", json_path = ".status.worker.pod"),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.queuePosition",
        description = "Position among pending sessions"
    ),
    printcolumn(
        name = "User",
        type_ = "string",
        json_path = ".spec.user.userID",
        priority = 1
    ),
    printcolumn(
        name = "Transport",
        type_ = "string",
        json_path = ".spec.transport",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.room) || (has(self.transport) && self.transport == 'livekit')").field_path(".room").message("room is for transport livekit only: set transport: livekit (on a backend with spec.liveKit) or drop room"),
    validation = Rule::new("!has(self.participants) || self.participants.all(p, p.userID != self.user.userID)").field_path(".participants").message("participants[].userID must differ from user.userID: spec.user is already in the session"),
    // Changing who may join would need new tokens, a new roster on the worker and an answer
    // for someone already connected who is taken off; a new session is the honest way.
    validation = Rule::new("(has(self.participants) ? self.participants.size() : 0) == (has(oldSelf.participants) ? oldSelf.participants.size() : 0) && (!has(self.participants) || !has(oldSelf.participants) || self.participants == oldSelf.participants)").field_path(".participants").message("participants is immutable: delete the session and create a new one with the participants it needs"),
)]
pub struct VoiceSessionSpec {
    /// The VoiceBackend that serves this session; immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("backendRef is immutable: delete the session and create a new one for another backend"))]
    pub backend_ref: BackendRef,
    /// The user; immutable (their join token and the agent's start message name them).
    #[x_kube(validation = Rule::new("self == oldSelf").message("user is immutable: the join token and the agent were given this user; delete the session and create a new one"))]
    pub user: SessionUser,
    /// Further users of the same conversation (at most 15, unique userIDs; the provider must
    /// have `multiUserSupport`, else the session waits with `MultiUserNotSupported`); each
    /// joins with its own token, key `token-<userID>` of the join-token Secret. The session
    /// still takes one slot of every cap; immutable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.userID == p.userID))").message("participants[].userID must be unique: each names its own join-token key"))]
    pub participants: Vec<SessionParticipant>,
    /// `webrtc` (default), `websocket`, or `livekit` (sessions of a backend with
    /// `spec.liveKit`); immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("transport is immutable: delete the session and create a new one"))]
    pub transport: Transport,
    /// The LiveKit room the user and the agent meet in (`transport: livekit` only); unset
    /// gives the session a room of its own, named `<namespace>-<name>`, which is deleted
    /// when the session ends. A named room is left, not deleted; immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("room is immutable: delete the session and create a new one"))]
    pub room: Option<String>,
    /// Session metadata (seed Metadata), kept with the persisted context and passed to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::provider::free_form_object")]
    pub metadata: Option<serde_json::Value>,
    /// Overrides of the backend's agent behaviour for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentOverrides>,
    /// Audio format for this session; defaults to the backend's `spec.audio` with the codec the transport carries (WebRTC: opus at 48000 Hz; WebSocket: pcm at the backend's sampleRate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioFormat>,
    /// Turn detection override for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_detection: Option<SessionTurnDetection>,
    /// Longest wait for admission before the session fails with QueueTimeout; unset waits forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("pendingTimeout must be a positive duration such as 60s"))]
    pub pending_timeout: Option<Duration>,
    /// Longest the session may last once active; unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("maxDuration must be a positive duration such as 1h"))]
    pub max_duration: Option<Duration>,
    /// Longest the session may go without client activity before it ends; unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("idleTimeout must be a positive duration such as 5m"))]
    pub idle_timeout: Option<Duration>,
    /// Seconds a finished session is kept before it is deleted (FR-026: completed sessions are ephemeral).
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 0, max = 604800))]
    pub ttl_seconds_after_finished: i32,
}

fn default_ttl() -> i32 {
    300
}

/// The worker a session was admitted onto.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionWorker {
    /// Worker pod name.
    pub pod: String,
    /// Worker pod IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
}

/// Where and how the client connects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionEndpoint {
    /// WebRTC offer URL (POST an SDP offer) or WebSocket URL.
    pub url: String,
    /// Name of the Secret (owned by this session) holding the join tokens: key `token` admits
    /// `spec.user`, and key `token-<userID>` admits each of `spec.participants`; key `url`
    /// repeats the endpoint URL.
    pub token_secret_name: String,
    /// STUN/TURN server URLs for the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<String>,
    /// The LiveKit room to join (`transport: livekit`); `url` is then the LiveKit server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// The live connection (seed UserConnection, the parts known once connected).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserConnectionStatus {
    /// The participant connected: `spec.user.userID` or one of `spec.participants`.
    #[serde(rename = "userID", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Connection identifier, unique per connection (a reconnect gets a new one).
    #[serde(rename = "connectionID")]
    pub connection_id: String,
    /// Transport in use.
    pub transport: Transport,
    /// Client address as seen by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<String>,
    /// When the client connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<Time>,
    /// When the client was last heard from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ping: Option<Time>,
}

/// Turn detection state (seed TurnDetectionState).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnDetectionState {
    /// Listening for user speech.
    #[serde(default)]
    pub is_listening: bool,
    /// When speech was last detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_speech_time: Option<Time>,
    /// Silence that ends a turn, as a Go duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_timeout: Option<Duration>,
    /// The end of the user's current turn has been detected.
    #[serde(default)]
    pub turn_end_detected: bool,
}

/// Audio buffers in use (seed AudioBuffers).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AudioBufferStatus {
    /// Negotiated format and buffer size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    /// Frames dropped because a buffer was full (back-pressure is counted, never silent).
    #[serde(default)]
    pub dropped_frames: i64,
}

/// Who spoke a transcript entry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Speaker {
    /// The end user.
    User,
    /// The agent.
    Agent,
}

/// One utterance of the conversation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptEntry {
    /// Who spoke.
    pub speaker: Speaker,
    /// What was said.
    pub text: String,
    /// In a multi-user session, the userID of the participant who spoke a user turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// When the utterance ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// How long the last turn took, stage by stage, in milliseconds (a stage the pipeline does
/// not run is omitted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnLatencyStatus {
    /// End of speech (VAD) to end of turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_detect_ms: Option<i64>,
    /// End of turn to the final transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt_ms: Option<i64>,
    /// Final transcript to the agent's first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_first_token_ms: Option<i64>,
    /// Agent's first token to the first synthesized audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_first_audio_ms: Option<i64>,
    /// First synthesized audio to the first packet sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_packet_ms: Option<i64>,
    /// End of speech to the first packet of the reply.
    pub total_ms: i64,
}

/// Conversation context persisted while the session is active (FR-025), so a session moved to
/// another worker resumes where it was.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionContext {
    /// Completed turns.
    #[serde(default)]
    pub turns: i32,
    /// The most recent transcript entries (older ones are trimmed to keep the object small).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transcript: Vec<TranscriptEntry>,
    /// The agent's own conversation state as JSON text (a gRPC agent's last
    /// `EndOfTurn.context_json`), handed back to it when the session resumes on another worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub agent_state: Option<String>,
}

/// Observed state of a VoiceSession.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoiceSessionStatus {
    /// Generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Admitted`, `Connected` and `Ready`.
    // A map keyed by type, so the allocator (Admitted) and the live-state writer (Connected,
    // Ready) each own their own entries under server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: SessionPhase,
    /// Pipeline state (seed PipelineState).
    #[serde(default)]
    pub pipeline_state: PipelineState,
    /// Active sessions persist; completed ones are ephemeral (seed PersistenceStatus).
    #[serde(default)]
    pub persistence: PersistenceStatus,
    /// 1-based position among this backend's pending sessions, while Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// The worker holding the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<SessionWorker>,
    /// Where the client connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SessionEndpoint>,
    /// The live connection, once the client connected. In a multi-user session it is
    /// `spec.user`'s connection while `spec.user` is connected, else the connection of the
    /// participant connected longest; unset when nobody is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<UserConnectionStatus>,
    /// In a multi-user session, the live connection of everyone connected (`spec.user`
    /// included), one per userID, in the order they connected (a reconnect replaces that
    /// participant's entry and moves it last); unset in a session without `spec.participants`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<UserConnectionStatus>,
    /// Turn detection state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_detection: Option<TurnDetectionState>,
    /// Audio buffers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_buffers: Option<AudioBufferStatus>,
    /// Stage timings of the last turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_turn: Option<TurnLatencyStatus>,
    /// Persisted conversation context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<SessionContext>,
    /// When the session was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
    /// Last activity on the session (seed LastActivity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<Time>,
    /// When the session finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// Why the session finished (e.g. ClientHangup, MaxDuration, IdleTimeout, QueueTimeout,
    /// WorkerLost, BackendDeleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}
