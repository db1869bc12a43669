//! From a session's configuration to a running pipeline: pick one implementation per
//! stage, put the frame stages in `processingOrder`, and fail with a message naming the
//! field when something cannot run.

use std::sync::Arc;
use std::time::Duration;

use voice_crds::{AgentIntegration, AgentType, PipelineComponent, PipelineType, StageProvider};

use super::metrics::PipelineMetrics;
use super::processors;
use super::providers::echo_agent::EchoAgent;
use super::providers::espeak::Espeak;
use super::providers::grpc_agent::GrpcAgent;
use super::providers::openai_chat::OpenAiChat;
use super::providers::openai_stt::OpenAiStt;
use super::providers::openai_tts::OpenAiTts;
use super::providers::pipecat::{PipecatConfig, PipecatS2s};
use super::providers::piper::Piper;
use super::providers::pocketsphinx::Pocketsphinx;
use super::providers::realtime::{RealtimeConfig, RealtimeS2s};
use super::providers::smart_turn::SmartTurn;
use super::providers::webhook_agent::WebhookAgent;
use super::providers::whisper::Whisper;
use super::providers::{Agent, HttpTarget, ProviderError, SpeechToText, TextToSpeech, credentials};
use super::semantic_turn::SemanticTurn;
use super::session::{Behaviour, EventSink, FrameStage, SessionPipeline};
use super::spec::PipelineSpec;
use super::turn::Providers;
use super::turn_detector::TurnDetector;
use super::vad::{EarshotVad, VoiceActivity};
use crate::media::echo::{Echo, SpeechToSpeech};

/// Frames the diagnostic echo holds: half a second.
const ECHO_FRAMES: usize = 25;

/// Without `turnDetection`, a turn ends when VAD has reported this much non-speech.
const VAD_ONLY_SILENCE: Duration = Duration::from_millis(300);

/// Speech frames in a row that start a turn (20 ms each): quick enough for barge-in
/// within two frames, long enough to skip a click.
const ONSET_FRAMES: u32 = 2;

/// smart-turn's probability at or above which a pause ends the turn. Above Pipecat's 0.5:
/// unfinished requests scored up to 0.39 here, finished ones 0.56–0.99 (docs/decisions.md).
const SMART_TURN_THRESHOLD: f32 = 0.7;

/// Pause before smart-turn is asked: gaps inside words and between them are shorter.
const SMART_TURN_ASK_AFTER: Duration = Duration::from_millis(200);

/// Where the operator tells the worker its bot container listens (`spec.workers.bot`).
pub const BOT_URL_ENV: &str = "VOICE_BOT_URL";

/// A configuration the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A stage names an implementation or option the worker does not have.
    #[error("{field}: {message}")]
    Unsupported {
        /// The spec field, e.g. `pipeline.stt.provider`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A provider could not be set up (e.g. its credentials are missing).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A custom processor or noise suppression is unknown or misconfigured.
    #[error(transparent)]
    Processor(#[from] processors::ProcessorError),
}

impl BuildError {
    /// Stable CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::Unsupported { .. } | BuildError::Processor(_) => "PipelineUnsupported",
            BuildError::Provider(e) => e.reason(),
        }
    }
}

fn unsupported(field: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::Unsupported {
        field,
        message: message.into(),
    }
}

/// Builds the pipeline `spec` describes, reporting to `sink`.
pub fn build(
    spec: &PipelineSpec,
    session_id: &str,
    sink: Box<dyn EventSink>,
    metrics: PipelineMetrics,
) -> Result<Box<dyn SpeechToSpeech>, BuildError> {
    let pipeline = &spec.pipeline;
    match pipeline.type_ {
        PipelineType::S2s => {
            let s2s = pipeline
                .s2s
                .as_ref()
                .ok_or_else(|| unsupported("pipeline.s2s", "type S2S needs pipeline.s2s"))?;
            match s2s.provider.as_str() {
                "echo" => Ok(Box::new(Echo::new(ECHO_FRAMES))),
                "openai-realtime" => {
                    let model = s2s.model.clone().unwrap_or_else(|| REALTIME_MODEL.into());
                    let url = match s2s.endpoint.as_deref() {
                        Some(e) => e
                            .replacen("https://", "wss://", 1)
                            .replacen("http://", "ws://", 1),
                        None => format!("wss://api.openai.com/v1/realtime?model={model}"),
                    };
                    let silence = pipeline
                        .turn_detection
                        .as_ref()
                        .map_or(Duration::from_millis(500), |t| {
                            Duration::from(t.silence_timeout)
                        });
                    let config = RealtimeConfig {
                        url,
                        key: credentials::load(
                            "openai-realtime",
                            s2s.credentials_secret_ref.as_ref(),
                        )?,
                        model,
                        voice: s2s.options.get("voice").cloned(),
                        instructions: s2s.options.get("instructions").cloned(),
                        silence,
                    };
                    Ok(Box::new(RealtimeS2s::start(config, sink, metrics)))
                }
                "pipecat" => {
                    let url = match s2s.endpoint.clone() {
                        Some(endpoint) => endpoint,
                        None => std::env::var(BOT_URL_ENV).map_err(|_| {
                            unsupported(
                                "pipeline.s2s.endpoint",
                                "provider pipecat needs its bot: set spec.workers.bot on the backend \
                                 (the operator then gives the worker VOICE_BOT_URL) or \
                                 pipeline.s2s.endpoint to a bot's ws:// URL",
                            )
                        })?,
                    };
                    let config = PipecatConfig {
                        url,
                        hello: super::providers::pipecat::hello(session_id, spec),
                    };
                    Ok(Box::new(PipecatS2s::start(config, sink, metrics)))
                }
                other => Err(unsupported(
                    "pipeline.s2s.provider",
                    format!(
                        "unknown speech-to-speech provider {other:?} (known: echo, openai-realtime, pipecat)"
                    ),
                )),
            }
        }
        PipelineType::SttTts => {
            let stt = stage(pipeline.stt.as_ref(), "pipeline.stt")?;
            let tts = stage(pipeline.tts.as_ref(), "pipeline.tts")?;
            let agent = spec
                .agent
                .as_ref()
                .ok_or_else(|| unsupported("spec.agent", "type STT_TTS needs an agent"))?;
            let providers = Providers {
                stt: build_stt(stt)?,
                agent: build_agent(agent, session_id, spec)?,
                tts: build_tts(tts)?,
            };
            let behaviour = Behaviour {
                streaming: agent.streaming_mode,
                interruption: agent.interruption_handling,
                preemptive: agent.preemptive_generation,
            };
            let aggressiveness = pipeline.vad.as_ref().map_or(2, |v| v.aggressiveness);
            if let Some(vad) = &pipeline.vad
                && !matches!(vad.provider.as_str(), "webrtc" | "earshot")
            {
                return Err(unsupported(
                    "pipeline.vad.provider",
                    format!("unknown VAD {:?} (known: webrtc, earshot)", vad.provider),
                ));
            }
            let mut semantic = None;
            let silence = match &pipeline.turn_detection {
                Some(td) if td.provider == "silence" => Duration::from(td.silence_timeout),
                Some(td) if td.provider == "smart-turn" => {
                    let model = SmartTurn::from_default().map_err(|e| {
                        unsupported("pipeline.turnDetection.provider", e.to_string())
                    })?;
                    model.preload();
                    semantic = Some(SemanticTurn::new(
                        Arc::new(model),
                        SMART_TURN_THRESHOLD,
                        SMART_TURN_ASK_AFTER,
                    ));
                    Duration::from(td.silence_timeout)
                }
                Some(td) => {
                    return Err(unsupported(
                        "pipeline.turnDetection.provider",
                        format!(
                            "unknown turn detector {:?} (known: silence, smart-turn)",
                            td.provider
                        ),
                    ));
                }
                None => VAD_ONLY_SILENCE,
            };
            let stages = frame_stages(spec)?;
            let vad: Box<dyn VoiceActivity> = Box::new(EarshotVad::new(aggressiveness));
            let mut session = SessionPipeline::new(
                stages,
                vad,
                TurnDetector::new(silence, ONSET_FRAMES),
                behaviour,
                providers,
                sink,
                metrics,
            );
            if let Some(semantic) = semantic {
                session = session.with_semantic_turn(semantic);
            }
            if let Some(speakers) = &spec.speakers {
                session = session.with_speakers(speakers.clone());
            }
            if let Some(resume) = &spec.resume {
                session.resume(resume.history.clone(), resume.turns);
            }
            Ok(Box::new(session))
        }
    }
}

fn stage<'a>(
    s: Option<&'a StageProvider>,
    field: &'static str,
) -> Result<&'a StageProvider, BuildError> {
    s.ok_or_else(|| unsupported(field, "required for type STT_TTS"))
}

/// The per-frame stages in `processingOrder`. VAD and turn detection always run in an
/// STT_TTS pipeline (a turn must end somehow); when the order does not list them they go
/// after everything it does list, VAD first.
fn frame_stages(spec: &PipelineSpec) -> Result<Vec<FrameStage>, BuildError> {
    let pipeline = &spec.pipeline;
    let mut stages = Vec::new();
    let (mut vad, mut turn) = (false, false);
    for component in pipeline.effective_order(spec.agent.is_some()) {
        match component {
            PipelineComponent::NoiseCancellation => {
                if let Some(nc) = &pipeline.noise_cancellation {
                    stages.push(FrameStage::Processor(processors::build_noise(nc)?));
                }
            }
            PipelineComponent::CustomProcessors => {
                for p in pipeline.active_processors() {
                    stages.push(FrameStage::Processor(processors::build(p)?));
                }
            }
            PipelineComponent::Vad => {
                vad = true;
                stages.push(FrameStage::Vad);
            }
            PipelineComponent::TurnDetection => {
                turn = true;
                stages.push(FrameStage::TurnDetection);
            }
            _ => {}
        }
    }
    if !vad {
        let at = stages
            .iter()
            .position(|s| matches!(s, FrameStage::TurnDetection))
            .unwrap_or(stages.len());
        stages.insert(at, FrameStage::Vad);
    }
    if !turn {
        stages.push(FrameStage::TurnDetection);
    }
    Ok(stages)
}

/// The Realtime model used when `pipeline.s2s.model` is not set.
const REALTIME_MODEL: &str = "gpt-4o-realtime-preview";

/// Where OpenAI itself lives, for stages that give no endpoint.
const OPENAI: &str = "https://api.openai.com/v1";

/// Time a network provider gets for its headers and between body chunks.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);

fn http(
    provider: &'static str,
    s: &StageProvider,
    default_model: &str,
) -> Result<HttpTarget, BuildError> {
    let key = credentials::load(provider, s.credentials_secret_ref.as_ref())?;
    let timeout = s
        .options
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        // try_: a negative, NaN, infinite or huge value must not panic the worker.
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .filter(|t| !t.is_zero())
        .unwrap_or(NETWORK_TIMEOUT);
    Ok(HttpTarget::new(
        provider,
        s.endpoint.as_deref().unwrap_or(OPENAI),
        s.model.as_deref().unwrap_or(default_model),
        key,
        timeout,
    )?)
}

fn build_stt(s: &StageProvider) -> Result<Arc<dyn SpeechToText>, BuildError> {
    match s.provider.as_str() {
        "pocketsphinx" => Ok(Arc::new(Pocketsphinx::from_options(&s.options))),
        "whisper" => {
            let whisper = Whisper::from_stage(s.model.as_deref(), &s.options).map_err(|e| {
                unsupported(
                    e.field("pipeline.stt.model", "pipeline.stt.options"),
                    e.to_string(),
                )
            })?;
            whisper.preload();
            Ok(Arc::new(whisper))
        }
        "openai" => Ok(Arc::new(OpenAiStt {
            target: http("openai-stt", s, "whisper-1")?,
            language: s.options.get("language").cloned(),
        })),
        other => Err(unsupported(
            "pipeline.stt.provider",
            format!("unknown STT provider {other:?} (known: whisper, pocketsphinx, openai)"),
        )),
    }
}

fn build_tts(s: &StageProvider) -> Result<Arc<dyn TextToSpeech>, BuildError> {
    match s.provider.as_str() {
        "espeak" | "espeak-ng" => Ok(Arc::new(Espeak::from_options(&s.options))),
        "piper" => {
            let piper = Piper::from_stage(s.model.as_deref(), &s.options).map_err(|e| {
                unsupported(
                    e.field("pipeline.tts.model", "pipeline.tts.options"),
                    e.to_string(),
                )
            })?;
            piper.preload();
            Ok(Arc::new(piper))
        }
        "openai" => Ok(Arc::new(OpenAiTts {
            target: http("openai-tts", s, "tts-1")?,
            voice: s
                .options
                .get("voice")
                .cloned()
                .unwrap_or_else(|| "alloy".into()),
        })),
        other => Err(unsupported(
            "pipeline.tts.provider",
            format!("unknown TTS provider {other:?} (known: piper, espeak, openai)"),
        )),
    }
}

/// The agent of `a`, told who the session is (`spec`'s identity, live metadata and resumed
/// conversation).
fn build_agent(
    a: &AgentIntegration,
    session_id: &str,
    spec: &PipelineSpec,
) -> Result<Arc<dyn Agent>, BuildError> {
    match a.type_ {
        AgentType::Echo => Ok(Arc::new(EchoAgent)),
        AgentType::Llm => {
            let llm = a
                .llm
                .as_ref()
                .ok_or_else(|| unsupported("spec.agent.llm", "agent type Llm needs agent.llm"))?;
            let key = credentials::load("openai-chat", llm.credentials_secret_ref.as_ref())?;
            Ok(Arc::new(OpenAiChat {
                target: HttpTarget::new(
                    "openai-chat",
                    &llm.endpoint,
                    &llm.model,
                    key,
                    NETWORK_TIMEOUT,
                )?,
                system_prompt: llm.system_prompt.clone(),
            }))
        }
        AgentType::Callback => {
            let cb = a.callback.as_ref().ok_or_else(|| {
                unsupported(
                    "spec.agent.callback",
                    "agent type Callback needs agent.callback",
                )
            })?;
            let key = credentials::load("webhook", cb.auth_secret_ref.as_ref())?;
            let target = HttpTarget::new("webhook", &cb.url, "", key, Duration::from(cb.timeout))?;
            let mut agent =
                WebhookAgent::new(target, u32::try_from(cb.retries).unwrap_or(0), session_id);
            agent.identity = spec.identity.clone();
            agent.metadata = spec.metadata.clone();
            Ok(Arc::new(agent))
        }
        AgentType::Grpc => {
            let grpc = a.grpc.as_ref().ok_or_else(|| {
                unsupported("spec.agent.grpc", "agent type Grpc needs agent.grpc")
            })?;
            let mut agent = GrpcAgent::new(
                &grpc.endpoint,
                Duration::from(grpc.timeout),
                session_id,
                &serde_json::to_string(a).unwrap_or_default(),
            )?
            .with_metadata(spec.metadata.clone())
            .with_identity(spec.identity.clone())
            .with_resume(spec.resume.as_ref());
            if let Some(ca) = credentials::load("grpc-agent", grpc.ca_secret_ref.as_ref())? {
                agent = agent.with_ca(ca.expose())?;
            }
            Ok(Arc::new(agent))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSink;
    impl EventSink for NoSink {
        fn state(&self, _: voice_crds::PipelineState, _: &str) {}
        fn transcript(&self, _: &str, _: &str, _: &str) {}
    }

    fn spec(json: serde_json::Value) -> PipelineSpec {
        PipelineSpec::parse(&json.to_string()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn processing_order_puts_processors_vad_and_turn_detection_where_asked() {
        let s = spec(serde_json::json!({
            "pipeline": {"type": "STT_TTS", "stt": {"provider": "pocketsphinx"}, "tts": {"provider": "espeak"},
                "vad": {"provider": "webrtc"}, "noiseCancellation": {"provider": "gate"},
                "turnDetection": {"provider": "silence"},
                "customProcessors": [
                    {"name": "late", "processor": "highpass", "order": 5},
                    {"name": "off", "processor": "reverb", "enabled": false},
                    {"name": "early", "processor": "gain", "order": 1}],
                "processingOrder": ["customProcessors", "noiseCancellation", "vad", "turnDetection", "stt", "agent", "tts"]},
            "agent": {"type": "Echo"}}));
        let stages = frame_stages(&s).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = stages
            .iter()
            .map(|st| match st {
                FrameStage::Processor(p) => p.name().to_owned(),
                FrameStage::Vad => "vad".into(),
                FrameStage::TurnDetection => "turn".into(),
            })
            .collect();
        assert_eq!(
            names,
            ["early", "late", "gate", "vad", "turn"],
            "disabled processors do not run"
        );
    }

    #[test]
    fn unknown_implementations_name_their_field() {
        let s = spec(serde_json::json!({
            "pipeline": {"type": "STT_TTS", "stt": {"provider": "nope"}, "tts": {"provider": "espeak"}},
            "agent": {"type": "Echo"}}));
        let err = build(
            &s,
            "ns/s",
            Box::new(NoSink),
            PipelineMetrics::unregistered(),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(err.to_string().contains("pipeline.stt.provider"), "{err}");
        let s = spec(serde_json::json!({"pipeline": {"type": "S2S", "s2s": {"provider": "echo"}}}));
        assert!(
            build(
                &s,
                "ns/s",
                Box::new(NoSink),
                PipelineMetrics::unregistered()
            )
            .is_ok()
        );
    }
}
