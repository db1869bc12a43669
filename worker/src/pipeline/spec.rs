//! What a session's pipeline is made of: the JSON the operator hands over (`VOICE_PIPELINE`
//! for the worker, `ReserveSessionRequest.config_json` per session), parsed into the CRD
//! types so worker and operator read the very same schema.

use voice_crds::{AgentIntegration, AgentOverrides, AudioFormat, PipelineConfiguration};

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
    /// The session's agent overrides, when the operator merged none in itself.
    #[serde(default)]
    pub agent_overrides: Option<AgentOverrides>,
}

/// A configuration the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not the expected JSON shape.
    #[error("pipeline configuration is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

impl PipelineSpec {
    /// Parses the operator's JSON and applies `agentOverrides`.
    pub fn parse(json: &str) -> Result<Self, SpecError> {
        let mut spec: Self = serde_json::from_str(json)?;
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
    }
}
