//! Whether a VoiceBackend may run on its VoiceProvider: the rules that need both objects.
//!
//! Pure: the backend controller passes the backend's spec and the provider it names (or
//! `None` when there is no such provider) and writes the outcome into the `Accepted`
//! condition and an Event. Rules that need only the backend are enforced by the API server
//! (schema and CEL), so they never reach here; the one exception, S2S with an agent, is
//! refused here because the issue that lifts it (S2S steered by the agent) will change the
//! operator, not the schema (`docs/decisions.md`).

use voice_crds::{
    AdvertiseMode, PipelineType, ProviderStages, StageProvider, VoiceBackendSpec, VoiceProvider,
    conditions::ACCEPTED,
};

/// Why a backend is not accepted. Each variant's [`Rejection::reason`] is the `Accepted=False`
/// condition reason and the Event reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// `spec.provider` names no VoiceProvider.
    ProviderNotFound,
    /// The provider exists but is itself not Accepted (e.g. an invalid configSchema).
    ProviderNotAccepted,
    /// `pipeline.type: S2S` on a provider without `capabilities.s2sSupport`.
    S2SNotSupported,
    /// `pipeline.type: S2S` with `spec.agent` set: the speech-to-speech model answers the
    /// user itself, so the worker would silently run without the agent.
    AgentWithSpeechToSpeech,
    /// `spec.audio.codec` is not in the provider's `supportedCodecs` (FR-019).
    CodecNotSupported,
    /// `spec.providerConfig` does not satisfy the provider's `configSchema` (FR-016).
    InvalidProviderConfig,
    /// A stage implementation is not listed by the provider's `spec.stages`.
    StageNotSupported,
    /// `pipeline.latencyTarget` is below the provider's `capabilities.minLatency`.
    LatencyTargetBelowProviderMinimum,
    /// `workers.image` is set on a provider without `worker.allowImageOverride`.
    ImageOverrideNotAllowed,
    /// `workers.bot` is set on a provider without `worker.allowBot`.
    BotNotAllowed,
    /// `workers.bot.port` is a TCP port the worker container itself listens on.
    BotPortConflict,
    /// `workers.network.advertise: NodeIP` (host networking) on a provider without
    /// `worker.allowHostNetwork`.
    HostNetworkNotAllowed,
    /// `admissionRateLimit` on a provider without `capabilities.customRateLimiting`.
    RateLimitNotSupported,
    /// `clientAuth` on a provider without `capabilities.customAuth`.
    CustomAuthNotSupported,
    /// `audio.channels` other than 1: the worker's pipeline is mono, and every session that
    /// takes the backend's format would wait forever.
    AudioChannelsNotSupported,
    /// `liveKit` is set on a provider without `worker.allowLiveKit`.
    LiveKitNotAllowed,
    /// `liveKit.credentialsSecretName` names no Secret, or one without `api-key` and
    /// `api-secret` (checked by the controller, which reads the Secret: `backend_livekit`).
    LiveKitCredentialsMissing,
}

impl Rejection {
    /// The stable CamelCase reason.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::ProviderNotFound => "ProviderNotFound",
            Rejection::ProviderNotAccepted => "ProviderNotAccepted",
            Rejection::S2SNotSupported => "S2SNotSupported",
            Rejection::AgentWithSpeechToSpeech => "AgentWithSpeechToSpeech",
            Rejection::CodecNotSupported => "CodecNotSupported",
            Rejection::InvalidProviderConfig => "InvalidProviderConfig",
            Rejection::StageNotSupported => "StageNotSupported",
            Rejection::LatencyTargetBelowProviderMinimum => "LatencyTargetBelowProviderMinimum",
            Rejection::ImageOverrideNotAllowed => "ImageOverrideNotAllowed",
            Rejection::BotNotAllowed => "BotNotAllowed",
            Rejection::BotPortConflict => "BotPortConflict",
            Rejection::HostNetworkNotAllowed => "HostNetworkNotAllowed",
            Rejection::RateLimitNotSupported => "RateLimitNotSupported",
            Rejection::CustomAuthNotSupported => "CustomAuthNotSupported",
            Rejection::AudioChannelsNotSupported => "AudioChannelsNotSupported",
            Rejection::LiveKitNotAllowed => "LiveKitNotAllowed",
            Rejection::LiveKitCredentialsMissing => "LiveKitCredentialsMissing",
        }
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// The backend may run.
    Accepted,
    /// The backend may not run: why, and a message naming the field and the fix.
    Rejected {
        /// The rule that failed.
        rejection: Rejection,
        /// What to change, naming the field.
        message: String,
    },
}

impl Acceptance {
    /// The `Accepted` condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Acceptance::Accepted => "Valid",
            Acceptance::Rejected { rejection, .. } => rejection.reason(),
        }
    }

    /// The `Accepted` condition message.
    pub fn message(&self) -> &str {
        match self {
            Acceptance::Accepted => "the backend's provider supports its pipeline and config",
            Acceptance::Rejected { message, .. } => message,
        }
    }

    /// Whether the backend is accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Acceptance::Accepted)
    }
}

fn reject(rejection: Rejection, message: String) -> Acceptance {
    Acceptance::Rejected { rejection, message }
}

/// Checks `spec` against `provider`, first failing rule first (in the order of the
/// [`Rejection`] variants), so a user fixes one thing at a time in a predictable order.
pub fn check(spec: &VoiceBackendSpec, provider: Option<&VoiceProvider>) -> Acceptance {
    let Some(provider) = provider else {
        return reject(
            Rejection::ProviderNotFound,
            format!(
                "spec.provider: VoiceProvider {:?} does not exist; create it or name an existing one (kubectl get voiceproviders)",
                spec.provider
            ),
        );
    };
    let provider_accepted = provider
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == ACCEPTED))
        .map(|c| (c.status == "True", c.message.clone()));
    if let Some((false, why)) = provider_accepted {
        return reject(
            Rejection::ProviderNotAccepted,
            format!(
                "spec.provider: VoiceProvider {:?} is not Accepted ({why}); fix the provider first",
                spec.provider
            ),
        );
    }
    let caps = &provider.spec.capabilities;
    if spec.pipeline.type_ == PipelineType::S2s && !caps.s2s_support {
        return reject(
            Rejection::S2SNotSupported,
            format!(
                "spec.pipeline.type: S2S needs a provider with capabilities.s2sSupport, and VoiceProvider {:?} has none; use type STT_TTS or another provider",
                spec.provider
            ),
        );
    }
    if spec.admission_rate_limit.is_some() && !caps.custom_rate_limiting {
        return reject(
            Rejection::RateLimitNotSupported,
            format!(
                "spec.admissionRateLimit needs a provider with capabilities.customRateLimiting, and VoiceProvider {:?} has none; remove admissionRateLimit or use another provider",
                spec.provider
            ),
        );
    }
    if spec.client_auth.is_some() && !caps.custom_auth {
        return reject(
            Rejection::CustomAuthNotSupported,
            format!(
                "spec.clientAuth needs a provider with capabilities.customAuth, and VoiceProvider {:?} has none; remove clientAuth (clients then use each session's join token) or use another provider",
                spec.provider
            ),
        );
    }
    if spec.audio.channels != 1 {
        return reject(
            Rejection::AudioChannelsNotSupported,
            format!(
                "spec.audio.channels: {} channels are not served: the worker's pipeline is mono (one channel in, one out); set channels 1 and mix down on the client",
                spec.audio.channels
            ),
        );
    }
    if spec.pipeline.type_ == PipelineType::S2s
        && let Some(agent) = &spec.agent
    {
        return reject(
            Rejection::AgentWithSpeechToSpeech,
            format!(
                "spec.agent: pipeline type S2S cannot be combined with an agent (agent.type {:?}): the speech-to-speech model answers the user itself and the worker never calls the agent; remove spec.agent to keep S2S, or use pipeline type STT_TTS to have the agent answer",
                agent.type_
            ),
        );
    }
    if !caps.supported_codecs.contains(&spec.audio.codec) {
        let supported: Vec<_> = caps.supported_codecs.iter().map(|c| c.as_str()).collect();
        return reject(
            Rejection::CodecNotSupported,
            format!(
                "spec.audio.codec: {} is not supported by VoiceProvider {:?} (supportedCodecs: {}); use one of those",
                spec.audio.codec.as_str(),
                spec.provider,
                supported.join(", ")
            ),
        );
    }
    if let Some(message) = provider_config_error(spec, provider) {
        return reject(Rejection::InvalidProviderConfig, message);
    }
    if let Some(stages) = &provider.spec.stages
        && let Some(message) = stage_error(spec, stages, &spec.provider)
    {
        return reject(Rejection::StageNotSupported, message);
    }
    if let Some(min) = &caps.min_latency
        && spec.pipeline.latency_target < *min
    {
        return reject(
            Rejection::LatencyTargetBelowProviderMinimum,
            format!(
                "spec.pipeline.latencyTarget: {} is below VoiceProvider {:?} capabilities.minLatency {}; raise latencyTarget to at least {}",
                spec.pipeline.latency_target, spec.provider, min, min
            ),
        );
    }
    if let Some(image) = &spec.workers.image
        && !provider.spec.worker.allow_image_override
    {
        return reject(
            Rejection::ImageOverrideNotAllowed,
            format!(
                "spec.workers.image: {image:?} replaces the worker image, and VoiceProvider {:?} does not allow that (spec.worker.allowImageOverride is false); remove spec.workers.image to run {:?}, or have the provider's owner set allowImageOverride: true",
                spec.provider, provider.spec.worker.image
            ),
        );
    }
    if let Some(bot) = &spec.workers.bot {
        if !provider.spec.worker.allow_bot {
            return reject(
                Rejection::BotNotAllowed,
                format!(
                    "spec.workers.bot: {:?} would run beside each worker, and VoiceProvider {:?} does not allow a bot container (spec.worker.allowBot is false); remove spec.workers.bot, or have the provider's owner set allowBot: true",
                    bot.image, spec.provider
                ),
            );
        }
        // The pod's containers share one network namespace: a port is the worker's or the bot's.
        let worker_tcp: Vec<_> = crate::pod_network::ports(&spec.workers.network)
            .into_iter()
            .filter(|p| p.protocol.as_deref() == Some("TCP"))
            .collect();
        if let Some(taken) = worker_tcp.iter().find(|p| p.container_port == bot.port) {
            let listed: Vec<_> = worker_tcp
                .iter()
                .map(|p| p.container_port.to_string())
                .collect();
            return reject(
                Rejection::BotPortConflict,
                format!(
                    "spec.workers.bot.port: {} is the worker's own {} port (the worker listens on TCP {}); choose another port for the bot",
                    bot.port,
                    taken.name.as_deref().unwrap_or("TCP"),
                    listed.join(", ")
                ),
            );
        }
    }
    if spec.workers.network.advertise == AdvertiseMode::NodeIP
        && !provider.spec.worker.allow_host_network
    {
        return reject(
            Rejection::HostNetworkNotAllowed,
            format!(
                "spec.workers.network.advertise: NodeIP runs the workers with host networking, and VoiceProvider {:?} does not allow that (spec.worker.allowHostNetwork is false); use advertise PodIP or Explicit (with a TURN server or a NAT address), or have the provider's owner set allowHostNetwork: true",
                spec.provider
            ),
        );
    }
    if let Some(message) = crate::backend_livekit::not_allowed(spec, provider) {
        return reject(Rejection::LiveKitNotAllowed, message);
    }
    Acceptance::Accepted
}

/// The first error of `spec.providerConfig` against the provider's `configSchema`, with its
/// JSON pointer. A missing providerConfig is checked as `{}` so required properties still
/// count. An invalid schema is the provider's fault and is reported on the provider, so it
/// is skipped here (the provider is then not Accepted and the backend says so first).
fn provider_config_error(spec: &VoiceBackendSpec, provider: &VoiceProvider) -> Option<String> {
    let schema = provider.spec.config_schema.as_ref()?;
    let validator = jsonschema::validator_for(schema).ok()?;
    let empty = serde_json::json!({});
    let config = spec.provider_config.as_ref().unwrap_or(&empty);
    let error = validator.iter_errors(config).next()?;
    let pointer = error.instance_path().to_string();
    let at = if pointer.is_empty() {
        "spec.providerConfig".to_owned()
    } else {
        format!("spec.providerConfig{pointer} (JSON pointer {pointer})")
    };
    Some(format!(
        "{at}: {error}; change providerConfig to satisfy VoiceProvider {:?} configSchema",
        spec.provider
    ))
}

/// The first configured stage implementation the provider does not list.
fn stage_error(spec: &VoiceBackendSpec, stages: &ProviderStages, provider: &str) -> Option<String> {
    let p = &spec.pipeline;
    let stage = |field: &str, chosen: Option<&str>, listed: &[String]| -> Option<String> {
        let chosen = chosen?;
        (!listed.iter().any(|l| l == chosen)).then(|| {
            format!(
                "spec.pipeline.{field}.provider: {chosen:?} is not listed in VoiceProvider {provider:?} spec.stages.{field} ({}); use one of those",
                if listed.is_empty() { "none listed".to_owned() } else { listed.join(", ") }
            )
        })
    };
    fn name(s: &Option<StageProvider>) -> Option<&str> {
        s.as_ref().map(|s| s.provider.as_str())
    }
    stage("stt", name(&p.stt), &stages.stt)
        .or_else(|| stage("tts", name(&p.tts), &stages.tts))
        .or_else(|| stage("s2s", name(&p.s2s), &stages.s2s))
        .or_else(|| stage("vad", p.vad.as_ref().map(|v| v.provider.as_str()), &stages.vad))
        .or_else(|| {
            stage(
                "turnDetection",
                p.turn_detection.as_ref().map(|t| t.provider.as_str()),
                &stages.turn_detection,
            )
        })
        .or_else(|| {
            stage(
                "noiseCancellation",
                name(&p.noise_cancellation),
                &stages.noise_cancellation,
            )
        })
        .or_else(|| {
            p.custom_processors.iter().find_map(|cp| {
                (!stages.custom_processors.contains(&cp.processor)).then(|| {
                    format!(
                        "spec.pipeline.customProcessors[name={}].processor: {:?} is not listed in VoiceProvider {provider:?} spec.stages.customProcessors; use one of those",
                        cp.name, cp.processor
                    )
                })
            })
        })
}

#[cfg(test)]
mod tests;
