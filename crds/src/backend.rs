//! `VoiceBackend`: a voice pipeline served by worker pods (the seed's VoiceBackend and Config).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AgentIntegration;
use crate::audio::AudioFormat;
use crate::pipeline::{PipelineConfiguration, SecretKeyRef};
use crate::states::{ConnectionState, HealthStatus};

/// How sessions are spread over a backend's workers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Placement {
    /// Fill the fullest non-draining worker first, so idle workers can be scaled away.
    #[default]
    Packed,
    /// Give each session to the least-loaded worker, to spread CPU and blast radius.
    Distributed,
}

/// Which address a worker hands to WebRTC clients in its ICE candidates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum AdvertiseMode {
    /// The pod IP: clients reach pods directly (flat networks, or through TURN).
    #[default]
    PodIP,
    /// The node IP, with the pod on the host network.
    NodeIP,
    /// An explicit public address (`network.address`), as with a 1:1 NAT.
    Explicit,
}

/// A STUN or TURN server handed to clients.
///
/// Credentials come either from two Secret keys (`usernameSecretRef` + `credentialSecretRef`,
/// a long-lived TURN account) or from a shared secret (`authSecretRef`, coturn's
/// `use-auth-secret` / TURN REST convention): the worker then mints a username
/// `<expiry>:<namespace>/<session>` and a credential base64(HMAC-SHA1(secret, username)) per
/// session, valid until the session's join token expires, so no long-lived password reaches
/// a browser.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.usernameSecretRef) == has(self.credentialSecretRef)").message("iceServers[]: usernameSecretRef and credentialSecretRef go together: set both or neither"),
    validation = Rule::new("!has(self.authSecretRef) || !has(self.usernameSecretRef)").message("iceServers[]: authSecretRef (time-limited TURN REST credentials) excludes usernameSecretRef/credentialSecretRef (static credentials): set one or the other"),
)]
pub struct IceServer {
    /// Server URLs, e.g. `stun:stun.example.com:3478` or `turn:turn.example.com:3478?transport=udp`.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(validation = Rule::new("self.all(u, u.startsWith('stun:') || u.startsWith('stuns:') || u.startsWith('turn:') || u.startsWith('turns:'))").message("iceServers[].urls entries must start with stun:, stuns:, turn: or turns:"))]
    pub urls: Vec<String>,
    /// Secret key holding the TURN username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the TURN credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the TURN server's shared secret (coturn `static-auth-secret`): each
    /// session gets its own time-limited username and HMAC credential derived from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
}

/// How clients reach a worker's media port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(self.advertise == 'Explicit') == has(self.address)").message("network.address is required when network.advertise is Explicit and must be omitted otherwise"),
)]
pub struct WorkerNetwork {
    /// Address advertised to WebRTC clients: `PodIP` (default), `NodeIP` (host network) or `Explicit`.
    #[serde(default)]
    pub advertise: AdvertiseMode,
    /// The advertised IP address when `advertise` is Explicit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("network.address must be an IPv4 or IPv6 address"))]
    #[schemars(length(max = 64))]
    pub address: Option<String>,
    /// The one UDP port that carries every WebRTC session of a worker; unset means 50000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub udp_port: Option<i32>,
    /// STUN/TURN servers handed to clients: with credentials as WHIP `Link` headers and to the
    /// demo page, without them in each session's `status.endpoint`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub ice_servers: Vec<IceServer>,
    /// Web origins (`https://app.example.com`) whose pages may call the WHIP endpoints
    /// (CORS); none by default, so only same-origin pages (the worker's demo) can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(o, o.matches('^https?://[^/?#*]+$'))").message("network.allowedOrigins entries must be origins such as https://app.example.com (scheme and host, optional port, no path and no wildcard)"))]
    pub allowed_origins: Vec<String>,
    /// Let the worker send ICE checks to loopback, link-local and private addresses that a
    /// client signals (off by default: a hostile client cannot aim the worker at internal
    /// hosts). Clients on private networks still connect: their own checks reach the worker,
    /// which answers the address they came from. Turn on for single-host demos and tests.
    #[serde(default)]
    pub allow_private_candidates: bool,
    /// Serve signaling as HTTPS/WSS with the certificate in a Secret; unset (the default), the
    /// worker speaks plain HTTP, for local use or behind a TLS-terminating ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<WorkerTls>,
}

/// The certificate a worker serves signaling with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTls {
    /// Name of a `kubernetes.io/tls` Secret in the backend's namespace with keys `tls.crt`
    /// (certificate chain, PEM) and `tls.key` (private key, PEM), the shape cert-manager
    /// writes. Mounted into every worker, which reloads a renewed certificate without a
    /// restart; a missing Secret keeps new workers from starting (FailedMount).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The worker pods of a backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Worker image; overrides the provider's `spec.worker.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Sessions one worker serves at once (its capacity); >= 1.
    #[serde(default = "default_sessions_per_worker")]
    #[schemars(range(min = 1, max = 1000))]
    pub sessions_per_worker: i32,
    /// Compute resources of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How long a draining worker keeps its sessions before it is deleted anyway, as a Go duration; > 0.
    #[serde(default = "default_drain_timeout")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("workers.drainTimeout must be a positive duration such as 300s"))]
    pub drain_timeout: Duration,
    /// Media networking of the workers.
    #[serde(default)]
    pub network: WorkerNetwork,
    /// Node labels a worker pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// A bot container beside each worker (e.g. a Pipecat bot): the worker hands each session's
    /// audio to it over a WebSocket on the pod IP. Only on a provider with
    /// `spec.worker.allowBot` (otherwise the backend is not Accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<BotContainer>,
}

/// The bot container of each worker pod: the backend author's program that answers the
/// sessions the worker hands it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BotContainer {
    /// Container image of the bot.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    /// Image pull policy of the bot (Kubernetes default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<crate::provider::PullPolicy>,
    /// Entrypoint override for the bot container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments for the bot container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment of the bot (literal values, Secret and ConfigMap keys, downward API). The
    /// operator adds VOICE_BOT_HOST, VOICE_BOT_PORT, POD_NAME, POD_NAMESPACE and BACKEND_NAME
    /// before these, so they may refer to them as $(VOICE_BOT_PORT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// TCP port the bot listens on, on the pod IP (on loopback with `network.advertise:
    /// NodeIP`); the worker connects to it for each session. Closed to other pods by the
    /// backend's NetworkPolicy.
    #[serde(default = "default_bot_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Compute resources of the bot container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            image: None,
            sessions_per_worker: default_sessions_per_worker(),
            resources: None,
            drain_timeout: default_drain_timeout(),
            network: WorkerNetwork::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            bot: None,
        }
    }
}

/// Autoscaling bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minWorkers <= self.maxWorkers").message("scaling.minWorkers must not exceed scaling.maxWorkers: lower minWorkers or raise maxWorkers"),
)]
pub struct ScalingSpec {
    /// Fewest workers, even with no sessions; >= 0.
    #[serde(default = "default_min_workers")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_workers: i32,
    /// Most workers; >= 1 and >= minWorkers.
    #[serde(default = "default_max_workers")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_workers: i32,
    /// Free session slots kept warm on top of active and pending sessions.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub buffer_sessions: i32,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_workers: default_min_workers(),
            max_workers: default_max_workers(),
            buffer_sessions: 0,
        }
    }
}

/// How the operator checks worker health.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Time between checks of each worker, as a Go duration; > 0.
    #[serde(default = "default_health_interval")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("healthCheck.interval must be a positive duration such as 10s"))]
    pub interval: Duration,
    /// Time one check may take, as a Go duration; > 0.
    #[serde(default = "default_health_timeout")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("healthCheck.timeout must be a positive duration such as 2s"))]
    pub timeout: Duration,
    /// Consecutive failed checks after which a worker is replaced; >= 1.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

/// A voice backend: a pipeline and agent, served by worker pods, fed by VoiceSessions.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "voicebackends.dev",
    version = "v1alpha1",
    kind = "VoiceBackend",
    namespaced,
    shortname = "vb",
    category = "voice",
    status = "VoiceBackendStatus",
    doc = "A voice backend: a real-time voice pipeline (STT→agent→TTS or speech-to-speech) served by autoscaled worker pods.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.pipeline.type"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.workers.ready",
        description = "Ready workers"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.workers.desired",
        description = "Desired workers"
    ),
    printcolumn(
        name = "Sessions",
        type_ = "integer",
        json_path = ".status.activeSessions",
        description = "Active sessions"
    ),
    printcolumn(
        name = "Max",
        type_ = "integer",
        json_path = ".spec.maxSessions",
        description = "Session cap (0 = unlimited)"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.pendingSessions",
        priority = 1
    ),
    printcolumn(name = "Health", type_ = "string", json_path = ".status.healthStatus"),
    printcolumn(
        name = "Connection",
        type_ = "string",
        json_path = ".status.connectionState"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.pipeline.type != 'STT_TTS' || has(self.agent)").message("pipeline type STT_TTS needs spec.agent with exactly one agent mode: type Echo, Callback, Grpc or Llm"),
    validation = Rule::new("!has(self.pipeline.processingOrder) || has(self.agent) == ('agent' in self.pipeline.processingOrder)").message("pipeline.processingOrder must list 'agent' exactly when spec.agent is set"),
    validation = Rule::new("!has(self.pipeline.processingOrder) || !has(self.agent) || !has(self.pipeline.stt) || !has(self.pipeline.tts) || (self.pipeline.processingOrder.indexOf('stt') < self.pipeline.processingOrder.indexOf('agent') && self.pipeline.processingOrder.indexOf('agent') < self.pipeline.processingOrder.indexOf('tts'))").message("pipeline.processingOrder must run stt before agent before tts"),
)]
pub struct VoiceBackendSpec {
    /// Name of the VoiceProvider that serves this backend (must exist and support the pipeline).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub provider: String,
    /// Provider-specific configuration, validated against the provider's `configSchema` (FR-016).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::provider::free_form_object")]
    pub provider_config: Option<serde_json::Value>,
    /// End-user authentication accepted besides each session's join token (JWTs from the
    /// application's identity provider); only on a provider with `capabilities.customAuth`
    /// (otherwise the backend is not Accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<crate::client_auth::ClientAuth>,
    /// The voice pipeline.
    pub pipeline: PipelineConfiguration,
    /// The agent that answers the user; required for STT_TTS. An S2S backend must omit it (its model answers by itself): the operator refuses the pair with Accepted=False, reason AgentWithSpeechToSpeech.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentIntegration>,
    /// Default audio format of sessions that set none (with the codec their transport carries); codec must be one the provider supports.
    #[serde(default)]
    pub audio: AudioFormat,
    /// Worker pods.
    #[serde(default)]
    pub workers: WorkerSpec,
    /// Autoscaling bounds.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// Worker count set through the scale subresource (`kubectl scale`, HPA, KEDA); overrides
    /// the session-based formula, clamped to `scaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,
    /// Most sessions active at once on this backend; 0 means unlimited (the provider's cap still holds).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_sessions: i32,
    /// How fast this backend's sessions may be admitted, within the provider's own limit;
    /// only on a provider with `capabilities.customRateLimiting` (otherwise the backend is
    /// not Accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_rate_limit: Option<crate::provider::AdmissionRateLimit>,
    /// How sessions are placed on workers: `Packed` (default) or `Distributed`.
    #[serde(default)]
    pub placement: Placement,
    /// Worker health checks.
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// Serve sessions in rooms of a LiveKit server instead of the worker's own WebRTC and
    /// WebSocket endpoints: a session's worker joins the session's room as the agent, and
    /// the session's join-token Secret holds the user's LiveKit access token. Sessions then
    /// use `transport: livekit`. Only on a provider with `spec.worker.allowLiveKit`
    /// (otherwise the backend is not Accepted, reason `LiveKitNotAllowed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_kit: Option<LiveKitServer>,
}

/// A LiveKit server and the API key the operator and the workers use with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveKitServer {
    /// The server's URL as users reach it, e.g. `wss://livekit.example.com`; it goes to
    /// `status.endpoint.url` and the join-token Secret.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('ws://') || self.startsWith('wss://') || self.startsWith('http://') || self.startsWith('https://')").message("liveKit.url must start with ws://, wss://, http:// or https://"))]
    pub url: String,
    /// The URL workers dial, when it differs from `url` (e.g. the server's in-cluster
    /// Service); defaults to `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('ws://') || self.startsWith('wss://') || self.startsWith('http://') || self.startsWith('https://')").message("liveKit.workerURL must start with ws://, wss://, http:// or https://"))]
    #[serde(rename = "workerURL")]
    pub worker_url: Option<String>,
    /// Name of a Secret in the backend's namespace with keys `api-key` and `api-secret`
    /// (the server's `keys:` pair). The operator signs users' access tokens with it; the
    /// workers sign their own and close finished rooms.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub credentials_secret_name: String,
}

/// Worker counts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    /// Workers the backend wants.
    #[serde(default)]
    pub desired: i32,
    /// Workers that pass readiness and health checks and accept sessions.
    #[serde(default)]
    pub ready: i32,
    /// Workers that accept no new sessions and go away once empty.
    #[serde(default)]
    pub draining: i32,
    /// All worker pods, in any state.
    #[serde(default)]
    pub total: i32,
}

/// Lifecycle of one worker pod as the operator sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum WorkerPhase {
    /// Created, not yet ready.
    #[default]
    Starting,
    /// Ready and healthy: accepts sessions.
    Ready,
    /// Failing health checks.
    Unhealthy,
    /// Accepts no new sessions; deleted once empty or past the drain timeout.
    Draining,
}

/// One worker as last checked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Pod name.
    pub name: String,
    /// Pod IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: WorkerPhase,
    /// Sessions the worker holds.
    #[serde(default)]
    pub sessions: i32,
    /// Sessions the worker can hold.
    #[serde(default)]
    pub capacity: i32,
    /// Consecutive failed health checks.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// When the worker was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Time>,
    /// Why the last check failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Observed state of a VoiceBackend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoiceBackendStatus {
    /// Generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Ready`, `Degraded` and `Progressing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Connection to the workers (seed ConnectionState).
    #[serde(default)]
    pub connection_state: ConnectionState,
    /// Folded health of the workers (seed HealthStatus).
    #[serde(default)]
    pub health_status: HealthStatus,
    /// When the workers were last health-checked (seed LastHealthCheck).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_check: Option<Time>,
    /// Sessions admitted and not yet finished (seed ActiveSessions).
    #[serde(default)]
    pub active_sessions: i32,
    /// Sessions waiting for admission. Written by the session allocator alone (the backend
    /// controller writes every other field), so it is unset until the allocator has counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_sessions: Option<i32>,
    /// Worker counts.
    #[serde(default)]
    pub workers: WorkerCounts,
    /// Per-worker detail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_statuses: Vec<WorkerStatus>,
    /// Current worker pods (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the worker pods (scale subresource, for HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

fn default_sessions_per_worker() -> i32 {
    10
}
fn default_bot_port() -> i32 {
    8765
}
fn default_drain_timeout() -> Duration {
    "300s".parse().expect("valid literal duration")
}
fn default_min_workers() -> i32 {
    1
}
fn default_max_workers() -> i32 {
    10
}
fn default_health_interval() -> Duration {
    "10s".parse().expect("valid literal duration")
}
fn default_health_timeout() -> Duration {
    "2s".parse().expect("valid literal duration")
}
fn default_failure_threshold() -> i32 {
    3
}
