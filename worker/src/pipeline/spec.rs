//! What a session's pipeline is made of: the backend's configuration the worker was started
//! with (`VOICE_PIPELINE`, parsed into the CRD types so worker and operator read the very
//! same schema) with the session's typed overrides ([`SessionConfig`]) applied on top.
//! Nothing a session sends can name a provider, an endpoint or a Secret.

use std::time::Duration;

use voice_crds::{
    AgentIntegration, AgentType, AudioFormat, PipelineConfiguration, TurnDetectionConfig,
};
use voice_proto::session_config::{SessionConfig, Speaker};

use super::metadata::{MetadataFeed, flatten};

/// The pipeline part of a backend spec, as serialised by the operator into `VOICE_PIPELINE`.
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
    /// The conversation so far, when the session resumes on this worker (from the
    /// session's `context`); not part of the backend's JSON.
    #[serde(skip)]
    pub resume: Option<Resume>,
    /// The session's metadata for the agent, live; not part of the backend's JSON.
    #[serde(skip)]
    pub metadata: MetadataFeed,
    /// Who the session is for and which incarnation it is; not part of the backend's JSON.
    #[serde(skip)]
    pub identity: Identity,
    /// In a multi-user session, who is speaking (measured by its room); not part of the
    /// backend's JSON.
    #[serde(skip)]
    pub speakers: Option<super::room::SpeakerLabels>,
}

/// The session as the agent is told about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// `metadata.uid` of the VoiceSession.
    pub uid: String,
    /// `spec.user.userID`.
    pub user_id: String,
    /// Connection metadata by userID: `spec.user.metadata` under `user_id`, and each of
    /// `spec.participants` (all of them listed, metadata or not) under theirs.
    pub connections: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl Identity {
    /// `spec.user.metadata`.
    pub fn user_metadata(&self) -> std::collections::HashMap<String, String> {
        self.connections
            .get(&self.user_id)
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default()
    }

    /// The other users, with their metadata.
    pub fn participants(
        &self,
    ) -> impl Iterator<Item = (&String, &std::collections::BTreeMap<String, String>)> {
        self.connections
            .iter()
            .filter(|(id, _)| **id != self.user_id)
    }
}

/// A conversation resumed from persisted context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Transcript so far, oldest first: (`user`|`assistant`, text).
    pub history: Vec<(String, String)>,
    /// Completed turns (new turn ids continue after them).
    pub turns: u64,
    /// The agent's own state from its last turn (gRPC `EndOfTurn.context_json`).
    pub agent_state: Option<String>,
}

/// A configuration the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not the expected JSON shape.
    #[error("pipeline configuration is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

impl PipelineSpec {
    /// Parses the backend's JSON (`VOICE_PIPELINE`). A stage given as a bare string
    /// (`"s2s": "echo"`) is shorthand for `{"provider": "echo"}`.
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
        Ok(serde_json::from_value(value)?)
    }

    /// Applies one session's overrides: agent flags, the LLM's system prompt, the silence
    /// timeout and the conversation to resume. Everything else stays the backend's.
    pub fn with_session(mut self, session: &SessionConfig) -> Self {
        if let Some(ms) = session.silence_timeout_ms {
            let provider = self
                .pipeline
                .turn_detection
                .as_ref()
                .map_or_else(|| "silence".to_owned(), |t| t.provider.clone());
            self.pipeline.turn_detection = Some(TurnDetectionConfig {
                provider,
                silence_timeout: Duration::from_millis(u64::from(ms)).into(),
            });
        }
        let o = &session.agent;
        if let Some(agent) = self.agent.as_mut() {
            if let Some(v) = o.streaming_mode {
                agent.streaming_mode = v;
            }
            if let Some(v) = o.interruption_handling {
                agent.interruption_handling = v;
            }
            if let Some(v) = o.preemptive_generation {
                agent.preemptive_generation = v;
            }
            if let (Some(prompt), Some(llm)) = (&o.system_prompt, agent.llm.as_mut()) {
                llm.system_prompt = Some(prompt.clone());
            }
        }
        self.metadata = MetadataFeed::fixed(flatten(session.metadata.as_ref()));
        self.identity.user_id = session.user_id.clone().unwrap_or_default();
        self.identity.connections = session.connection_metadata.clone();
        for participant in &session.participants {
            self.identity
                .connections
                .entry(participant.clone())
                .or_default();
        }
        self.resume = session.context.as_ref().map(|c| Resume {
            history: c
                .transcript
                .iter()
                .map(|u| {
                    let role = match u.speaker {
                        Speaker::User => "user",
                        Speaker::Agent => "assistant",
                    };
                    (role.to_owned(), u.text.clone())
                })
                .collect(),
            turns: c.turns,
            agent_state: c.agent_state.clone(),
        });
        self
    }

    /// The pipeline type as the backend spells it (`STT_TTS` or `S2S`).
    pub fn kind(&self) -> &'static str {
        match self.pipeline.type_ {
            voice_crds::PipelineType::SttTts => "STT_TTS",
            voice_crds::PipelineType::S2s => "S2S",
        }
    }

    /// The providers a client is told it talks to: `stt/agent/tts` for `STT_TTS` (an LLM
    /// agent as `llm:<model>`), the speech-to-speech provider for `S2S`. A stage the
    /// configuration lacks shows as `?` (such a pipeline reports `Error` when it starts).
    pub fn providers(&self) -> String {
        let name = |stage: Option<&voice_crds::StageProvider>| {
            stage.map_or_else(|| "?".to_owned(), |s| s.provider.clone())
        };
        match self.pipeline.type_ {
            voice_crds::PipelineType::S2s => name(self.pipeline.s2s.as_ref()),
            voice_crds::PipelineType::SttTts => {
                let agent = match &self.agent {
                    None => "?".to_owned(),
                    Some(a) => match a.type_ {
                        AgentType::Echo => "echo".to_owned(),
                        AgentType::Callback => "callback".to_owned(),
                        AgentType::Grpc => "grpc".to_owned(),
                        AgentType::Llm => a
                            .llm
                            .as_ref()
                            .map_or_else(|| "llm".to_owned(), |l| format!("llm:{}", l.model)),
                    },
                };
                format!(
                    "{}/{agent}/{}",
                    name(self.pipeline.stt.as_ref()),
                    name(self.pipeline.tts.as_ref())
                )
            }
        }
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
    use voice_proto::session_config::{AgentFlags, Conversation, Utterance};

    const BACKEND: &str = r#"{
        "pipeline": {"type": "STT_TTS", "stt": {"provider": "pocketsphinx"}, "tts": {"provider": "espeak"},
                     "vad": {"provider": "webrtc", "aggressiveness": 3},
                     "turnDetection": {"provider": "silence", "silenceTimeout": "400ms"}},
        "agent": {"type": "Echo"}
    }"#;

    #[test]
    fn reads_the_backend_json_with_its_defaults() {
        let spec = PipelineSpec::parse(BACKEND).unwrap_or_else(|e| panic!("{e}"));
        let agent = spec.agent.unwrap_or_else(|| panic!("agent"));
        assert!(
            agent.interruption_handling && agent.streaming_mode,
            "defaults apply"
        );
        let td = spec
            .pipeline
            .turn_detection
            .unwrap_or_else(|| panic!("turn"));
        assert_eq!(
            Duration::from(td.silence_timeout),
            Duration::from_millis(400)
        );
        assert!(PipelineSpec::parse(r#"{"pipeline": {"type": "NOPE"}}"#).is_err());
        let short = PipelineSpec::parse(r#"{"pipeline":{"type":"S2S","s2s":"echo"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(short.is_echo());
    }

    #[test]
    fn session_overrides_change_flags_timeout_and_resume_only() {
        let session = SessionConfig {
            agent: AgentFlags {
                interruption_handling: Some(false),
                streaming_mode: Some(false),
                ..AgentFlags::default()
            },
            silence_timeout_ms: Some(1000),
            metadata: serde_json::json!({"plan": "gold", "seats": 3})
                .as_object()
                .cloned(),
            context: Some(Conversation {
                turns: 2,
                transcript: vec![
                    Utterance {
                        speaker: Speaker::User,
                        text: "hi".into(),
                    },
                    Utterance {
                        speaker: Speaker::Agent,
                        text: "hello".into(),
                    },
                ],
                agent_state: Some(r#"{"step":1}"#.into()),
            }),
            ..SessionConfig::default()
        };
        let spec = PipelineSpec::parse(BACKEND)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_session(&session);
        let agent = spec.agent.as_ref().unwrap_or_else(|| panic!("agent"));
        assert!(!agent.interruption_handling && !agent.streaming_mode);
        let td = spec
            .pipeline
            .turn_detection
            .as_ref()
            .unwrap_or_else(|| panic!("turn"));
        assert_eq!(td.provider, "silence");
        assert_eq!(Duration::from(td.silence_timeout), Duration::from_secs(1));
        let stt = spec.pipeline.stt.as_ref().unwrap_or_else(|| panic!("stt"));
        assert_eq!(stt.provider, "pocketsphinx", "providers stay the backend's");
        assert_eq!(spec.metadata.current()["plan"], "gold");
        assert_eq!(spec.metadata.current()["seats"], "3");
        let resume = spec.resume.unwrap_or_default();
        assert_eq!(resume.turns, 2);
        assert_eq!(resume.agent_state.as_deref(), Some(r#"{"step":1}"#));
        assert_eq!(
            resume.history,
            [
                ("user".to_owned(), "hi".to_owned()),
                ("assistant".to_owned(), "hello".to_owned())
            ]
        );
    }
}
