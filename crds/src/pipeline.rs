//! The voice pipeline of a backend (the seed's PipelineConfiguration and CustomProcessor).

use std::collections::BTreeMap;

use kube::KubeSchema;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a pipeline turns user speech into a reply.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PipelineType {
    /// Speech-to-text, then the agent, then text-to-speech.
    #[serde(rename = "STT_TTS")]
    SttTts,
    /// One speech-to-speech model (bypasses text transcription).
    #[serde(rename = "S2S")]
    S2s,
}

/// A component of the pipeline, as named in `processingOrder`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PipelineComponent {
    /// `pipeline.noiseCancellation`.
    NoiseCancellation,
    /// The enabled `pipeline.customProcessors`, in their own `order`.
    CustomProcessors,
    /// `pipeline.vad`.
    Vad,
    /// `pipeline.turnDetection`.
    TurnDetection,
    /// `pipeline.stt`.
    Stt,
    /// `spec.agent`.
    Agent,
    /// `pipeline.tts`.
    Tts,
    /// `pipeline.s2s`.
    S2s,
}

/// A reference to one key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl SecretKeyRef {
    /// The environment variable that carries this key into a worker:
    /// `VOICE_SECRET_<NAME>_<KEY>`, upper-cased, every other character `_`. The operator sets
    /// it from the Secret; the worker's providers read it.
    pub fn env_var(&self) -> String {
        let clean = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        format!("VOICE_SECRET_{}_{}", clean(&self.name), clean(&self.key))
    }
}

/// One pipeline stage: which provider implementation runs it and how it is reached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageProvider {
    /// Provider implementation for this stage, e.g. `whisper`, `piper`, `pocketsphinx`,
    /// `espeak`, `openai`, `openai-realtime`, `echo` or (noise cancellation) `rnnoise`. It must be listed for this stage by the backend's
    /// VoiceProvider (`spec.stages`); the operator reports `Accepted=False` otherwise.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub provider: String,
    /// Model name passed to a network provider (e.g. `whisper-1`, `tts-1`), or the model
    /// path of a local one: a CTranslate2 Whisper directory for `whisper`, a voice `.onnx`
    /// (its `.onnx.json` beside it) for `piper`. Unset uses the worker's default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub model: Option<String>,
    /// Base URL of a network provider (e.g. `https://api.openai.com/v1` or a self-hosted
    /// server). Must be an absolute http(s) or ws(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https', 'ws', 'wss']").message("endpoint must be an absolute http, https, ws or wss URL, e.g. https://api.openai.com/v1"))]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// Secret key holding the provider's API key. Credentials never appear in spec or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
    /// Provider-specific options (e.g. `language: en-US`, `voice: alloy`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// Voice activity detection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VadConfig {
    /// VAD implementation, e.g. `webrtc` (WebRTC's VAD, no model download).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub provider: String,
    /// How eagerly non-speech is filtered out: 0 (least) to 3 (most aggressive).
    #[serde(default = "default_aggressiveness")]
    #[schemars(range(min = 0, max = 3))]
    pub aggressiveness: i32,
}

fn default_aggressiveness() -> i32 {
    2
}

/// Turn detection: when the user has finished speaking (seed TurnDetectionState).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnDetectionConfig {
    /// Turn detector implementation, e.g. `silence` (end of turn after `silenceTimeout`) or,
    /// on the built-in provider, `smart-turn` (a model asked at each pause whether the
    /// sentence is finished; `silenceTimeout` stays the longest a pause may last).
    #[serde(default = "default_turn_provider")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub provider: String,
    /// Non-speech after speech that ends the user's turn, as a Go duration (e.g. `700ms`); > 0.
    #[serde(default = "default_silence_timeout")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("silenceTimeout must be a positive duration such as 700ms"))]
    pub silence_timeout: Duration,
}

fn default_turn_provider() -> String {
    "silence".into()
}
fn default_silence_timeout() -> Duration {
    "700ms".parse().expect("valid literal duration")
}

/// A custom audio processor, an extensibility hook run before VAD (seed CustomProcessor).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomProcessor {
    /// Name, unique within the pipeline.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Processor implementation (seed AudioProcessor), e.g. `gain` or `highpass`. It must be
    /// listed by the backend's VoiceProvider (`spec.stages.customProcessors`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub processor: String,
    /// Position among the custom processors: lower runs earlier; >= 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub order: i32,
    /// Whether this processor runs.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Processor-specific options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

/// The audio processing pipeline (seed PipelineConfiguration).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'STT_TTS' || (has(self.stt) && has(self.tts))").message("pipeline type STT_TTS needs both pipeline.stt and pipeline.tts providers"),
    validation = Rule::new("self.type != 'S2S' || has(self.s2s)").message("pipeline type S2S needs pipeline.s2s (a speech-to-speech provider)"),
    validation = Rule::new("self.type != 'S2S' || (!has(self.stt) && !has(self.tts))").message("pipeline type S2S bypasses transcription: remove pipeline.stt and pipeline.tts, or use type STT_TTS"),
    validation = Rule::new("self.type != 'STT_TTS' || !has(self.s2s)").message("pipeline.s2s is only used by type S2S: remove it, or use type S2S"),
    validation = Rule::new("!has(self.processingOrder) || ((!has(self.vad) || 'vad' in self.processingOrder) && (!has(self.turnDetection) || 'turnDetection' in self.processingOrder) && (!has(self.noiseCancellation) || 'noiseCancellation' in self.processingOrder) && (!has(self.stt) || 'stt' in self.processingOrder) && (!has(self.tts) || 'tts' in self.processingOrder) && (!has(self.s2s) || 's2s' in self.processingOrder) && (!has(self.customProcessors) || !self.customProcessors.exists(p, p.enabled) || 'customProcessors' in self.processingOrder))").message("processingOrder must list every enabled component (vad, turnDetection, noiseCancellation, stt, tts, s2s, customProcessors); add the missing ones or remove processingOrder to use the default order"),
    validation = Rule::new("!has(self.processingOrder) || self.processingOrder.all(c, (c != 'vad' || has(self.vad)) && (c != 'turnDetection' || has(self.turnDetection)) && (c != 'noiseCancellation' || has(self.noiseCancellation)) && (c != 'stt' || has(self.stt)) && (c != 'tts' || has(self.tts)) && (c != 's2s' || has(self.s2s)) && (c != 'customProcessors' || (has(self.customProcessors) && self.customProcessors.exists(p, p.enabled))))").message("processingOrder lists a component that is not configured: configure it in pipeline or remove it from processingOrder"),
)]
pub struct PipelineConfiguration {
    /// Pipeline type: `STT_TTS` (speech-to-text → agent → text-to-speech) or `S2S` (speech-to-speech).
    #[serde(rename = "type")]
    pub type_: PipelineType,
    /// Speech-to-text stage; required when type is STT_TTS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt: Option<StageProvider>,
    /// Text-to-speech stage; required when type is STT_TTS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts: Option<StageProvider>,
    /// Speech-to-speech stage; required when type is S2S.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s2s: Option<StageProvider>,
    /// Voice activity detection (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vad: Option<VadConfig>,
    /// Turn detection (optional; without it a turn ends when VAD reports silence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_detection: Option<TurnDetectionConfig>,
    /// Noise cancellation (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_cancellation: Option<StageProvider>,
    /// Order in which the components process audio. When set it must list every enabled
    /// component, each once; when unset the default order is noiseCancellation,
    /// customProcessors, vad, turnDetection, stt, agent, tts (or s2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 8))]
    pub processing_order: Option<Vec<PipelineComponent>>,
    /// Target time from the end of user speech to the first reply audio, as a Go duration
    /// (e.g. `500ms`); > 0. The backend reports `Degraded` when its p95 turn latency exceeds it.
    #[serde(default = "default_latency_target")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("latencyTarget must be a positive duration such as 500ms"))]
    pub latency_target: Duration,
    /// Custom audio processors (extensibility hooks), run by ascending `order`. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("customProcessors names must be unique within the pipeline")
    )]
    #[schemars(length(max = 16))]
    pub custom_processors: Vec<CustomProcessor>,
}

fn default_latency_target() -> Duration {
    "500ms".parse().expect("valid literal duration")
}

impl PipelineConfiguration {
    /// The components in the order the worker runs them: `processingOrder` when set, else the
    /// default order restricted to what is configured. `has_agent` says whether `spec.agent` is set.
    pub fn effective_order(&self, has_agent: bool) -> Vec<PipelineComponent> {
        use PipelineComponent::*;
        let enabled = |c: &PipelineComponent| match c {
            NoiseCancellation => self.noise_cancellation.is_some(),
            CustomProcessors => self.custom_processors.iter().any(|p| p.enabled),
            Vad => self.vad.is_some(),
            TurnDetection => self.turn_detection.is_some(),
            Stt => self.stt.is_some(),
            Agent => has_agent,
            Tts => self.tts.is_some(),
            S2s => self.s2s.is_some(),
        };
        match &self.processing_order {
            Some(order) => order.clone(),
            None => [
                NoiseCancellation,
                CustomProcessors,
                Vad,
                TurnDetection,
                Stt,
                Agent,
                Tts,
                S2s,
            ]
            .into_iter()
            .filter(enabled)
            .collect(),
        }
    }

    /// Enabled custom processors sorted by `order` (ties keep their listed order).
    pub fn active_processors(&self) -> Vec<&CustomProcessor> {
        let mut active: Vec<_> = self
            .custom_processors
            .iter()
            .filter(|p| p.enabled)
            .collect();
        active.sort_by_key(|p| p.order);
        active
    }
}
