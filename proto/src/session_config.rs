//! The one typed session configuration the operator sends with `ReserveSession`
//! (`session_config_json`) and the worker parses once, at reservation.
//!
//! It carries the session's *overrides* only: agent flags, the system prompt, the turn's
//! silence timeout, the user id, free-form metadata and the persisted conversation. It never
//! carries endpoints, URLs, providers, models or Secret names: a worker builds its providers
//! only from the backend configuration its pod was started with (`VOICE_PIPELINE`), so
//! whoever reaches the control channel cannot point a session's audio or the backend's API
//! key somewhere else. Unknown fields are refused with their path, so an attempt to smuggle
//! one in fails loudly instead of being ignored.

use serde::{Deserialize, Serialize};

/// Largest configuration accepted, in bytes (the persisted transcript is most of it).
pub const MAX_BYTES: usize = 1024 * 1024;
/// Longest system prompt, in characters (the VoiceSession CRD's own limit).
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 32 * 1024;
/// Longest silence timeout a session may ask for, in milliseconds.
pub const MAX_SILENCE_TIMEOUT_MS: u32 = 60_000;
/// Most participants a session may have beside its user (`VoiceSession.spec.participants`).
pub const MAX_PARTICIPANTS: usize = 15;
/// Largest agent state kept for a session, in bytes (agent.proto `EndOfTurn.context_json`).
pub const MAX_AGENT_STATE_BYTES: usize = 64 * 1024;

/// A session's overrides of its backend's behaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionConfig {
    /// Agent behaviour overrides (`VoiceSession.spec.agent`).
    #[serde(default, skip_serializing_if = "AgentFlags::is_empty")]
    pub agent: AgentFlags,
    /// Turn detection's silence timeout (`VoiceSession.spec.turnDetection.silenceTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_timeout_ms: Option<u32>,
    /// The application's user id (`VoiceSession.spec.user.userID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `VoiceSession.spec.metadata`: opaque data for the agent, never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The conversation so far, when the session resumes on a new worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Conversation>,
    /// The other users of a multi-user session (`VoiceSession.spec.participants`), by
    /// userID; empty for a session of one user. Each may connect once, beside the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<String>,
    /// Connection metadata of the user and the participants, by userID
    /// (`spec.user.metadata`, `spec.participants[].metadata`), told to the agent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub connection_metadata:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The session's WebSocket rate and message limit (`VoiceSession.spec.audio`); unset
    /// means [`crate::session_audio::DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<crate::session_audio::SessionAudio>,
    /// The LiveKit room the worker joins as the agent (sessions of a backend with
    /// `spec.liveKit`, from `status.endpoint.room`). A room name, never a server URL: the
    /// worker dials only the server its pod was configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// Overrides of the backend's agent flags and prompt; unset keeps the backend's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentFlags {
    /// Overrides `agent.streamingMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_mode: Option<bool>,
    /// Overrides `agent.interruptionHandling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_handling: Option<bool>,
    /// Overrides `agent.preemptiveGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptive_generation: Option<bool>,
    /// Overrides the LLM agent's system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

impl AgentFlags {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A persisted conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conversation {
    /// Completed turns (new turn ids continue after them).
    #[serde(default)]
    pub turns: u64,
    /// Transcript so far, oldest first.
    #[serde(default)]
    pub transcript: Vec<Utterance>,
    /// The agent's own state from its last turn (JSON text, opaque to us).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_state: Option<String>,
}

/// One line of a transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Utterance {
    /// Who spoke.
    pub speaker: Speaker,
    /// What was said.
    pub text: String,
}

/// Who spoke a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Speaker {
    /// The user.
    User,
    /// The agent.
    Agent,
}

/// Why a session configuration was refused; the message names the field and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionConfigError {
    /// Larger than [`MAX_BYTES`].
    #[error("session_config_json is {0} bytes; at most {MAX_BYTES} are accepted")]
    TooLarge(usize),
    /// Not JSON, or a field of the wrong type.
    #[error("session_config_json is not a valid session configuration: {0}")]
    Invalid(String),
    /// A field the type does not have, e.g. an endpoint or a Secret name.
    #[error(
        "session_config_json.{0}: unknown field; a session configuration holds only overrides \
         (agent flags, systemPrompt, silenceTimeoutMs, userId, metadata, context, audio, participants, connectionMetadata, room): endpoints, URLs, \
         providers and Secret names come only from the backend the worker was started with"
    )]
    UnknownField(String),
    /// A value out of its range.
    #[error("session_config_json.{field}: {message}")]
    OutOfRange {
        /// Path of the field.
        field: &'static str,
        /// What is allowed.
        message: String,
    },
}

/// Keys each object of the configuration may have; `metadata` is opaque and not listed.
const TOP: &[&str] = &[
    "agent",
    "silenceTimeoutMs",
    "userId",
    "metadata",
    "context",
    "audio",
    "participants",
    "connectionMetadata",
    "room",
];
const AUDIO: &[&str] = &["sampleRate", "bufferBytes"];
const AGENT: &[&str] = &[
    "streamingMode",
    "interruptionHandling",
    "preemptiveGeneration",
    "systemPrompt",
];
const CONTEXT: &[&str] = &["turns", "transcript", "agentState"];
const UTTERANCE: &[&str] = &["speaker", "text"];

fn known_keys(
    value: &serde_json::Value,
    allowed: &[&str],
    path: &str,
) -> Result<(), SessionConfigError> {
    if let Some(map) = value.as_object()
        && let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str()))
    {
        let field = if path.is_empty() {
            unknown.clone()
        } else {
            format!("{path}.{unknown}")
        };
        return Err(SessionConfigError::UnknownField(field));
    }
    Ok(())
}

impl SessionConfig {
    /// Parses the operator's JSON; empty means no overrides.
    pub fn parse(json: &str) -> Result<Self, SessionConfigError> {
        if json.len() > MAX_BYTES {
            return Err(SessionConfigError::TooLarge(json.len()));
        }
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| SessionConfigError::Invalid(e.to_string()))?;
        // Unknown keys are found first, by path, so the error names the field an attacker
        // (or an outdated operator) tried to set.
        known_keys(&value, TOP, "")?;
        if let Some(agent) = value.get("agent") {
            known_keys(agent, AGENT, "agent")?;
        }
        if let Some(audio) = value.get("audio") {
            known_keys(audio, AUDIO, "audio")?;
        }
        if let Some(context) = value.get("context") {
            known_keys(context, CONTEXT, "context")?;
            if let Some(lines) = context.get("transcript").and_then(|t| t.as_array()) {
                for (i, line) in lines.iter().enumerate() {
                    known_keys(line, UTTERANCE, &format!("context.transcript[{i}]"))?;
                }
            }
        }
        let config: Self = serde_json::from_value(value)
            .map_err(|e| SessionConfigError::Invalid(e.to_string()))?;
        config.check_ranges()?;
        Ok(config)
    }

    fn check_ranges(&self) -> Result<(), SessionConfigError> {
        if self.participants.len() > MAX_PARTICIPANTS {
            return Err(SessionConfigError::OutOfRange {
                field: "participants",
                message: format!(
                    "{} listed; at most {MAX_PARTICIPANTS}",
                    self.participants.len()
                ),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for id in &self.participants {
            if id.is_empty()
                || id.len() > 253
                || self.user_id.as_deref() == Some(id.as_str())
                || !seen.insert(id)
            {
                return Err(SessionConfigError::OutOfRange {
                    field: "participants",
                    message: format!(
                        "{id:?} is empty, too long, repeated or the session's own userId"
                    ),
                });
            }
        }
        if let Some((field, message)) = self.audio.as_ref().and_then(|a| a.problem()) {
            return Err(SessionConfigError::OutOfRange { field, message });
        }
        if let Some(room) = &self.room
            && !is_room_name(room)
        {
            return Err(SessionConfigError::OutOfRange {
                field: "room",
                message: format!(
                    "{room:?} is not a room name: 1 to 128 characters of letters, digits, '-', '.' or '_'"
                ),
            });
        }
        if let Some(ms) = self.silence_timeout_ms
            && !(1..=MAX_SILENCE_TIMEOUT_MS).contains(&ms)
        {
            return Err(SessionConfigError::OutOfRange {
                field: "silenceTimeoutMs",
                message: format!("{ms} is outside 1..={MAX_SILENCE_TIMEOUT_MS} milliseconds"),
            });
        }
        if let Some(prompt) = &self.agent.system_prompt
            && prompt.chars().count() > MAX_SYSTEM_PROMPT_CHARS
        {
            return Err(SessionConfigError::OutOfRange {
                field: "agent.systemPrompt",
                message: format!("longer than {MAX_SYSTEM_PROMPT_CHARS} characters"),
            });
        }
        if let Some(state) = self.context.as_ref().and_then(|c| c.agent_state.as_ref())
            && state.len() > MAX_AGENT_STATE_BYTES
        {
            return Err(SessionConfigError::OutOfRange {
                field: "context.agentState",
                message: format!("longer than {MAX_AGENT_STATE_BYTES} bytes"),
            });
        }
        Ok(())
    }

    /// The JSON the operator sends (the inverse of [`SessionConfig::parse`]).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Whether `name` is a LiveKit room name the CRD admits (`VoiceSession.spec.room`).
pub fn is_room_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        match SessionConfig::parse(json) {
            Ok(c) => panic!("{json} parsed as {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_room_is_a_name_never_a_url() {
        let config = SessionConfig::parse(r#"{"room": "team-a-call-1"}"#).unwrap();
        assert_eq!(config.room.as_deref(), Some("team-a-call-1"));
        assert!(refused(r#"{"room": "wss://elsewhere.example/room"}"#).contains("room"));
        assert!(refused(r#"{"room": ""}"#).contains("not a room name"));
    }

    #[test]
    fn overrides_round_trip() {
        let config = SessionConfig {
            agent: AgentFlags {
                streaming_mode: Some(false),
                system_prompt: Some("be brief".into()),
                ..AgentFlags::default()
            },
            silence_timeout_ms: Some(700),
            user_id: Some("u-1".into()),
            metadata: serde_json::json!({"plan": "gold"}).as_object().cloned(),
            context: Some(Conversation {
                turns: 2,
                transcript: vec![Utterance {
                    speaker: Speaker::User,
                    text: "hi".into(),
                }],
                agent_state: Some(r#"{"step": 3}"#.into()),
            }),
            audio: Some(crate::session_audio::SessionAudio {
                sample_rate: 8_000,
                buffer_bytes: 3_200,
            }),
            participants: vec!["u-2".into(), "u-3".into()],
            room: Some("team-a-call-1".into()),
            connection_metadata: [(
                "u-2".to_owned(),
                [("team".to_owned(), "blue".to_owned())].into(),
            )]
            .into(),
        };
        assert_eq!(SessionConfig::parse(&config.to_json()), Ok(config));
        assert_eq!(SessionConfig::parse(""), Ok(SessionConfig::default()));
        assert_eq!(SessionConfig::default().to_json(), "{}");
    }

    #[test]
    fn endpoints_urls_and_secret_names_are_refused_by_path() {
        let cases = [
            (
                r#"{"pipeline": {"type": "S2S"}}"#,
                "session_config_json.pipeline:",
            ),
            (
                r#"{"agent": {"endpoint": "http://evil"}}"#,
                "session_config_json.agent.endpoint:",
            ),
            (
                r#"{"agent": {"credentialsSecretRef": {"name": "k", "key": "k"}}}"#,
                "session_config_json.agent.credentialsSecretRef:",
            ),
            (r#"{"url": "wss://evil"}"#, "session_config_json.url:"),
            (
                r#"{"context": {"transcript": [{"speaker": "User", "text": "x", "url": "y"}]}}"#,
                "session_config_json.context.transcript[0].url:",
            ),
        ];
        for (json, field) in cases {
            let message = refused(json);
            assert!(message.starts_with(field), "{json}: {message}");
            assert!(
                message.contains("backend the worker was started with"),
                "{message}"
            );
        }
    }

    #[test]
    fn out_of_range_and_malformed_values_name_their_field() {
        assert!(refused(r#"{"silenceTimeoutMs": 0}"#).contains("silenceTimeoutMs"));
        assert!(refused(r#"{"silenceTimeoutMs": 4294967295}"#).contains("silenceTimeoutMs"));
        assert!(refused(r#"{"silenceTimeoutMs": -1}"#).contains("not a valid"));
        let prompt = "é".repeat(MAX_SYSTEM_PROMPT_CHARS + 1);
        let long = serde_json::json!({"agent": {"systemPrompt": prompt}}).to_string();
        assert!(refused(&long).contains("agent.systemPrompt"));
        let state = "x".repeat(MAX_AGENT_STATE_BYTES + 1);
        let big = serde_json::json!({"context": {"agentState": state}}).to_string();
        assert!(refused(&big).contains("context.agentState"));
        assert!(refused("[1, 2]").contains("not a valid"));
        assert!(refused("{not json").contains("not a valid"));
        let rate = r#"{"audio": {"sampleRate": 44100, "bufferBytes": 96000}}"#;
        assert!(refused(rate).contains("session_config_json.audio.sampleRate"));
        let buffer = r#"{"audio": {"sampleRate": 8000, "bufferBytes": 16777216}}"#;
        assert!(refused(buffer).contains("session_config_json.audio.bufferBytes"));
        assert!(refused(r#"{"audio": {"sampleRate": 8000, "url": "x"}}"#).contains("audio.url"));
        let huge = format!(r#"{{"userId": "{}"}}"#, "x".repeat(MAX_BYTES));
        assert!(refused(&huge).contains("bytes"));
    }

    #[test]
    fn metadata_is_opaque_data() {
        let config = SessionConfig::parse(r#"{"metadata": {"endpoint": "http://anything"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.metadata.is_some_and(|m| m.contains_key("endpoint")));
    }
}
