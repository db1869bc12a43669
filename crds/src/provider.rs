//! `VoiceProvider`: a registered backend provider (the seed's BackendProvider, BackendRegistry,
//! ProviderCapabilities and ConfigSchema).
//!
//! Cluster-scoped like `StorageClass`: its name is unique in the cluster, which is the seed's
//! "name must be unique in the registry", and a backend may only use a provider that exists
//! ("providers must be registered before use", checked by the operator).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audio::Codec;

/// What a provider can do (seed ProviderCapabilities).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderCapabilities {
    /// Supports speech-to-speech pipelines (`pipeline.type: S2S`).
    #[serde(default)]
    pub s2s_support: bool,
    /// Supports several users in one conversation.
    #[serde(default)]
    pub multi_user_support: bool,
    /// Active sessions survive operator restarts and worker loss (FR-025).
    #[serde(default)]
    pub session_persistence: bool,
    /// Supports provider-specific authentication of end users.
    #[serde(default)]
    pub custom_auth: bool,
    /// Supports provider-specific rate limiting.
    #[serde(default)]
    pub custom_rate_limiting: bool,
    /// Most sessions that may be active at once across every backend of this provider, in all
    /// namespaces (FR-010); 0 means unlimited.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_concurrent_sessions: i32,
    /// Lowest latency the provider can achieve, as a Go duration (e.g. `200ms`). A backend's
    /// `latencyTarget` below it is rejected by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("minLatency must not be negative"))]
    pub min_latency: Option<Duration>,
    /// Audio codecs the provider's workers speak; at least one of `opus`, `pcm`, `pcmu` (G.711 μ-law, for `twilio` phone calls).
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(min = 1, max = 3))]
    pub supported_codecs: Vec<Codec>,
}

/// A limit on how fast sessions are admitted: a token bucket refilled at
/// `admissionsPerSecond` holding at most `burst` admissions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRateLimit {
    /// Sustained admissions per second; at least 1.
    #[schemars(range(min = 1, max = 100000))]
    pub admissions_per_second: i32,
    /// Admissions allowed at once after a quiet period; at least 1 (1: evenly spaced).
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: i32,
}

fn default_burst() -> i32 {
    1
}

/// Image pull policy of a container (the Kubernetes default when unset).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when not present on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// The worker program that serves this provider's backends (the seed's BackendFactory).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderWorker {
    /// Container image of the worker; a backend may override it in `spec.workers.image` only
    /// when `allowImageOverride` is true.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    /// Whether a backend may run its own image (`spec.workers.image`) instead of `image`. Off
    /// by default: the provider's author chooses the code that runs with the backends'
    /// provider credentials. A backend that sets an image on a provider that does not allow it
    /// is not Accepted (reason `ImageOverrideNotAllowed`).
    #[serde(default)]
    pub allow_image_override: bool,
    /// Whether a backend may run its workers with host networking, which
    /// `spec.workers.network.advertise: NodeIP` needs (the pod shares the node's network
    /// namespace). Off by default; a backend asking for it on a provider that does not allow
    /// it is not Accepted (reason `HostNetworkNotAllowed`).
    #[serde(default)]
    pub allow_host_network: bool,
    /// Whether a backend may run a bot container beside each worker (`spec.workers.bot`),
    /// e.g. a Pipecat bot the worker hands each session's audio to. Off by default: the bot is
    /// the backend author's code. A backend that sets a bot on a provider that does not allow
    /// it is not Accepted (reason `BotNotAllowed`).
    #[serde(default)]
    pub allow_bot: bool,
    /// Whether a backend may serve its sessions in rooms of a LiveKit server
    /// (`spec.liveKit`): its workers then dial out to the server the backend names, with the
    /// API key from the backend's Secret. Off by default; a backend that sets `liveKit` on a
    /// provider that does not allow it is not Accepted (reason `LiveKitNotAllowed`).
    #[serde(default)]
    pub allow_live_kit: bool,
    /// Image pull policy (Kubernetes default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Entrypoint override for the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments for the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// Stage implementations the provider's worker runs, by pipeline stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStages {
    /// Speech-to-text implementations, e.g. `whisper`, `pocketsphinx`, `openai`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stt: Vec<String>,
    /// Text-to-speech implementations, e.g. `piper`, `espeak`, `openai`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tts: Vec<String>,
    /// Speech-to-speech implementations, e.g. `echo`, `openai-realtime`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub s2s: Vec<String>,
    /// Voice activity detectors, e.g. `webrtc`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vad: Vec<String>,
    /// Turn detectors, e.g. `silence`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_detection: Vec<String>,
    /// Noise cancellation implementations, e.g. `rnnoise`, `gate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noise_cancellation: Vec<String>,
    /// Custom processor implementations usable in `pipeline.customProcessors[].processor`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_processors: Vec<String>,
}

/// A voice backend provider that VoiceBackends name in `spec.provider`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "voicebackends.dev",
    version = "v1alpha1",
    kind = "VoiceProvider",
    shortname = "vp",
    category = "voice",
    status = "VoiceProviderStatus",
    doc = "A voice backend provider: capabilities, session cap, worker image and config schema. Cluster-scoped; VoiceBackends reference it by name.",
    printcolumn(
        name = "S2S",
        type_ = "boolean",
        json_path = ".spec.capabilities.s2sSupport"
    ),
    printcolumn(
        name = "Max-Sessions",
        type_ = "integer",
        json_path = ".spec.capabilities.maxConcurrentSessions",
        description = "Session cap across all backends (0 = unlimited)"
    ),
    printcolumn(
        name = "In-Use",
        type_ = "integer",
        json_path = ".status.sessionsInUse"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.sessionsPending",
        priority = 1
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.capabilities.s2sSupport || !has(self.stages) || !has(self.stages.s2s) || size(self.stages.s2s) == 0").message("stages.s2s lists speech-to-speech implementations but capabilities.s2sSupport is false: set s2sSupport true or remove stages.s2s"),
    validation = Rule::new("!has(self.admissionRateLimit) || self.capabilities.customRateLimiting").message("admissionRateLimit needs capabilities.customRateLimiting: set it true or remove admissionRateLimit"),
)]
pub struct VoiceProviderSpec {
    /// Human-readable description (seed Metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Provider version (seed Metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub version: Option<String>,
    /// Further provider metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// What the provider can do.
    pub capabilities: ProviderCapabilities,
    /// The worker program that serves this provider's backends.
    pub worker: ProviderWorker,
    /// Stage implementations the worker runs; a backend may only name these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<ProviderStages>,
    /// How fast sessions may be admitted across every backend of this provider (needs
    /// `capabilities.customRateLimiting`); sessions beyond it wait `Pending` with reason
    /// `RateLimited`, first come first served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_rate_limit: Option<AdmissionRateLimit>,
    /// JSON Schema (draft 2020-12) that a backend's `spec.providerConfig` must satisfy (FR-016).
    /// The operator checks that the schema itself is valid and reports `Accepted=False` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::provider::free_form_object")]
    pub config_schema: Option<serde_json::Value>,
}

/// Observed state of a VoiceProvider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoiceProviderStatus {
    /// Generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: the provider is well-formed (image set, config schema valid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Sessions admitted across all of this provider's backends.
    #[serde(default)]
    pub sessions_in_use: i32,
    /// Sessions waiting for admission across all of this provider's backends.
    #[serde(default)]
    pub sessions_pending: i32,
    /// Backends that use this provider.
    #[serde(default)]
    pub backends: i32,
}

/// Schema of a free-form JSON object kept as written (no pruning).
pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
