//! What a session's pipeline is made of: the JSON the operator hands over (`VOICE_PIPELINE`
//! for the worker, `ReserveSessionRequest.config_json` per session), parsed into the CRD
//! types so worker and operator read the very same schema.

use voice_crds::{
    AgentIntegration, AgentOverrides, AudioFormat, PipelineConfiguration, SessionTurnDetection,
    TurnDetectionConfig,
};

/// The pipeline part of a backend spec, as serialised by the operator.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// `spec.pipeline`.
    pub pipeline: PipelineConfiguration,
    /// `spec.agent`.
    #[serde(default)]
    pub agent: Option<AgentIntegration>,
    /// `spec.audio`.
    #[serde(default)]
    pub audio: Option<AudioFormat>,
    /// The session's agent overrides (`VoiceSession.spec.agent`; the operator sends them
    /// as `sessionAgent`).
    #[serde(default, alias = "sessionAgent")]
    pub agent_overrides: Option<AgentOverrides>,
    /// The session's turn detection override (`VoiceSession.spec.turnDetection`).
    #[serde(default)]
    pub turn_detection: Option<SessionTurnDetection>,
    /// The conversation so far, when the session resumes on this worker
    /// (`ReserveSessionRequest.context_json`); not part of the configuration JSON.
    #[serde(skip)]
    pub resume: Option<Resume>,
}

/// A conversation resumed from persisted context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Transcript so far, oldest first: (`user`|`assistant`, text).
    pub history: Vec<(String, String)>,
    /// Completed turns (new turn ids continue after them).
    pub turns: u64,
}

impl Resume {
    /// Reads the operator's `context_json` (`{"context": {"turns": n, "transcript":
    /// [{"speaker": "User"|"Agent", "text": ...}]}, "metadata": ...}`); `None` when empty
    /// or unreadable (a new conversation then, logged by the caller).
    pub fn parse(json: &str) -> Option<Self> {
        if json.trim().is_empty() {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        let context: voice_crds::SessionContext =
            serde_json::from_value(value.get("context")?.clone()).ok()?;
        let history = context
            .transcript
            .into_iter()
            .map(|e| {
                let role = match e.speaker {
                    voice_crds::Speaker::User => "user",
                    voice_crds::Speaker::Agent => "assistant",
                };
                (role.to_owned(), e.text)
            })
            .collect();
        Some(Self {
            history,
            turns: u64::try_from(context.turns).unwrap_or(0),
        })
    }
}

/// A configuration the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not the expected JSON shape.
    #[error("pipeline configuration is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

impl PipelineSpec {
    /// Parses the operator's JSON and applies the session's overrides. A stage given as a
    /// bare string (`"s2s": "echo"`) is shorthand for `{"provider": "echo"}`.
    pub fn parse(json: &str) -> Result<Self, SpecError> {
        let mut value: serde_json::Value = serde_json::from_str(json)?;
        if let Some(pipeline) = value.get_mut("pipeline").and_then(|p| p.as_object_mut()) {
            for stage in ["stt", "tts", "s2s", "noiseCancellation"] {
                if let Some(serde_json::Value::String(name)) = pipeline.get(stage) {
                    let expanded = serde_json::json!({ "provider": name });
                    pipeline.insert(stage.to_owned(), expanded);
                }
            }
        }
        let mut spec: Self = serde_json::from_value(value)?;
        if let Some(td) = spec.turn_detection.take() {
            let provider = spec
                .pipeline
                .turn_detection
                .as_ref()
                .map_or_else(|| "silence".to_owned(), |t| t.provider.clone());
            spec.pipeline.turn_detection = Some(TurnDetectionConfig {
                provider,
                silence_timeout: td.silence_timeout,
            });
        }
        if let (Some(agent), Some(o)) = (spec.agent.as_mut(), spec.agent_overrides.take()) {
            if let Some(v) = o.streaming_mode {
                agent.streaming_mode = v;
            }
            if let Some(v) = o.interruption_handling {
                agent.interruption_handling = v;
            }
            if let Some(v) = o.preemptive_generation {
                agent.preemptive_generation = v;
            }
            if let (Some(prompt), Some(llm)) = (o.system_prompt, agent.llm.as_mut()) {
                llm.system_prompt = Some(prompt);
            }
        }
        Ok(spec)
    }

    /// Whether this is the diagnostic default: S2S with the `echo` provider.
    pub fn is_echo(&self) -> bool {
        self.pipeline.type_ == voice_crds::PipelineType::S2s
            && self
                .pipeline
                .s2s
                .as_ref()
                .is_some_and(|s| s.provider == "echo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_operator_json_and_applies_overrides() {
        let json = r#"{
            "pipeline": {"type": "STT_TTS", "stt": {"provider": "pocketsphinx"}, "tts": {"provider": "espeak"},
                         "vad": {"provider": "webrtc", "aggressiveness": 3},
                         "turnDetection": {"provider": "silence", "silenceTimeout": "400ms"}},
            "agent": {"type": "Echo"},
            "agentOverrides": {"interruptionHandling": false}
        }"#;
        let spec = PipelineSpec::parse(json).unwrap_or_else(|e| panic!("{e}"));
        let agent = spec.agent.unwrap_or_else(|| panic!("agent"));
        assert!(!agent.interruption_handling);
        assert!(agent.streaming_mode, "defaults apply");
        let td = spec
            .pipeline
            .turn_detection
            .unwrap_or_else(|| panic!("turn"));
        assert_eq!(
            std::time::Duration::from(td.silence_timeout),
            std::time::Duration::from_millis(400)
        );
        assert!(PipelineSpec::parse(r#"{"pipeline": {"type": "NOPE"}}"#).is_err());
        let short = PipelineSpec::parse(r#"{"pipeline":{"type":"S2S","s2s":"echo"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(short.is_echo());
    }

    #[test]
    fn persisted_context_resumes_the_conversation() {
        let json = r#"{"metadata": null, "context": {"turns": 2, "transcript": [
            {"speaker": "User", "text": "hi"}, {"speaker": "Agent", "text": "hello"}]}}"#;
        let resume = Resume::parse(json).unwrap_or_default();
        assert_eq!(resume.turns, 2);
        assert_eq!(
            resume.history,
            [
                ("user".to_owned(), "hi".to_owned()),
                ("assistant".to_owned(), "hello".to_owned())
            ]
        );
        assert_eq!(Resume::parse(""), None);
        assert_eq!(Resume::parse("{not json"), None);
    }

    #[test]
    fn the_operators_session_config_applies_session_overrides() {
        let json = r#"{"pipeline": {"type": "STT_TTS", "stt": {"provider": "pocketsphinx"}, "tts": {"provider": "espeak"}},
            "agent": {"type": "Echo"}, "audio": null, "sessionAgent": {"streamingMode": false},
            "turnDetection": {"silenceTimeout": "1s"}, "user": {"id": "u"}, "metadata": null, "transport": "websocket"}"#;
        let spec = PipelineSpec::parse(json).unwrap_or_else(|e| panic!("{e}"));
        assert!(!spec.agent.as_ref().is_some_and(|a| a.streaming_mode));
        let td = spec
            .pipeline
            .turn_detection
            .unwrap_or_else(|| panic!("turn detection"));
        assert_eq!(
            std::time::Duration::from(td.silence_timeout),
            std::time::Duration::from_secs(1)
        );
    }
}
