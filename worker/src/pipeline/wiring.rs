//! A session's pipeline as the transports get it: its configuration looked up in the
//! ledger, built, and reporting state changes and transcripts to the worker's event bus
//! (which the operator mirrors into `VoiceSession.status`).

use std::sync::Arc;
use std::time::SystemTime;

use voice_crds::PipelineState;
use voice_proto::worker::v1::{Transcript, transcript::Role};

use super::session::EventSink;
use super::spec::PipelineSpec;
use crate::media::Frame;
use crate::media::echo::{Echo, SpeechToSpeech};
use crate::sessions::Sessions;

/// Frames the diagnostic echo holds: half a second.
const ECHO_FRAMES: usize = 25;

/// Longest transcript or state detail published upward (bytes). The operator keeps the
/// last 50 transcript entries in `VoiceSession.status`; with control characters replaced
/// (JSON escapes them six-fold) that stays far below etcd's 1.5 MiB object limit.
pub const MAX_TRANSCRIPT_BYTES: usize = 4 * 1024;

/// `text` as it may go into a status: at most [`MAX_TRANSCRIPT_BYTES`], cut on a character
/// boundary, control characters other than newline and tab as spaces.
pub fn for_status(text: &str) -> String {
    super::sentences::truncate_text(text, MAX_TRANSCRIPT_BYTES)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Publishes one session's pipeline events on the worker's bus.
#[derive(Debug)]
pub struct BusSink {
    sessions: Arc<Sessions>,
    session_id: String,
    uid: String,
}

impl BusSink {
    fn publish(&self, role: &str, text: &str, turn_id: &str, speaker: Option<&str>) {
        let role = if role == "user" {
            Role::User
        } else {
            Role::Agent
        };
        let transcript = Transcript {
            speaker: for_status(speaker.unwrap_or_default()),
            role: role.into(),
            text: for_status(text),
            turn_id: for_status(turn_id),
        };
        self.sessions.publish_transcript(
            &self.session_id,
            &self.uid,
            transcript,
            SystemTime::now(),
        );
    }
}

impl EventSink for BusSink {
    fn state(&self, state: PipelineState, detail: &str) {
        tracing::info!(session = %self.session_id, state = ?state, detail, "pipeline state");
        self.sessions.publish_pipeline_state(
            &self.session_id,
            &self.uid,
            super::state::to_proto(state),
            &for_status(detail),
            SystemTime::now(),
        );
    }

    fn transcript(&self, role: &str, text: &str, turn_id: &str) {
        self.publish(role, text, turn_id, None);
    }

    fn user_transcript(&self, text: &str, turn_id: &str, speaker: Option<&str>) {
        self.publish("user", text, turn_id, speaker);
    }

    fn latency(&self, latency: voice_proto::worker::v1::TurnLatency) {
        crate::telemetry::turn(&self.session_id, &self.uid, &latency);
        self.sessions
            .publish_turn_latency(&self.session_id, &self.uid, latency, SystemTime::now());
    }

    fn turn_detection(&self, state: voice_proto::worker::v1::TurnDetection) {
        self.sessions
            .publish_turn_detection(&self.session_id, &self.uid, state, SystemTime::now());
    }

    fn agent_state(&self, context_json: &str) {
        self.sessions.publish_agent_state(
            &self.session_id,
            &self.uid,
            context_json.to_owned(),
            SystemTime::now(),
        );
    }

    /// Frees the slot like a client hang-up does: the media connection is reaped, the
    /// operator is told `ended` with reason `AgentHangup` and completes the session.
    fn hangup(&self, reason: &str) {
        tracing::info!(session = %self.session_id, reason, "the agent hung up");
        self.sessions.release_because(
            &self.session_id,
            &self.uid,
            AGENT_HANGUP,
            &for_status(reason),
            SystemTime::now(),
        );
    }

    /// Frees the slot; the operator ends the session `Failed` with `reason`.
    fn failed(&self, reason: &'static str, message: &str) {
        tracing::warn!(session = %self.session_id, reason, message, "the session cannot go on");
        self.sessions.release_because(
            &self.session_id,
            &self.uid,
            reason,
            &for_status(message),
            SystemTime::now(),
        );
    }
}

/// The end reason of a session whose agent hung up.
pub const AGENT_HANGUP: &str = "AgentHangup";

/// What a client is told its session runs (the `connected` and first `state` events):
/// the backend's pipeline type and providers, as `VOICE_PIPELINE` configures them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// `STT_TTS` or `S2S`; `invalid` when the configuration does not parse.
    pub pipeline: &'static str,
    /// See [`PipelineSpec::providers`]; `none` when the configuration does not parse.
    pub provider: String,
}

/// Describes the backend's configuration `config` (the worker's `VOICE_PIPELINE`). Without
/// one every session runs the diagnostic S2S `echo`, and that is what it says. Session
/// overrides never change a provider, so the backend's configuration is the whole answer.
pub fn describe(config: Option<&str>) -> Described {
    let Some(json) = config else {
        return Described {
            pipeline: "S2S",
            provider: "echo".to_owned(),
        };
    };
    match PipelineSpec::parse(json) {
        Ok(spec) => Described {
            pipeline: spec.kind(),
            provider: spec.providers(),
        },
        // The session's pipeline reports the parse error itself (state `ERROR`).
        Err(_) => Described {
            pipeline: "invalid",
            provider: "none".to_owned(),
        },
    }
}

/// The pipeline `participant`'s connection to `session_id` runs: its own, or in a
/// multi-user session a seat in the session's shared room (see [`super::room`]).
pub fn for_session(
    sessions: &Arc<Sessions>,
    session_id: &str,
    uid: &str,
    participant: &str,
) -> Box<dyn SpeechToSpeech> {
    if sessions.is_multi_user(session_id) {
        return sessions
            .rooms()
            .seat(session_id, uid, participant, |speakers| {
                build_for(sessions, session_id, uid, Some(speakers))
            });
    }
    build_for(sessions, session_id, uid, None)
}

/// The pipeline `session_id` asks for. A configuration that cannot run gives a pipeline
/// that stays silent and reports `Error` with the reason (to the client and the operator)
/// rather than silently running something else.
fn build_for(
    sessions: &Arc<Sessions>,
    session_id: &str,
    uid: &str,
    speakers: Option<super::room::SpeakerLabels>,
) -> Box<dyn SpeechToSpeech> {
    let sink = || {
        Box::new(BusSink {
            sessions: sessions.clone(),
            session_id: session_id.to_owned(),
            uid: uid.to_owned(),
        })
    };
    let Some(json) = sessions.pipeline_config() else {
        return Box::new(Echo::new(ECHO_FRAMES));
    };
    let metrics = sessions.metrics().pipeline().clone();
    let overrides = sessions.session_config(session_id).unwrap_or_default();
    let built = PipelineSpec::parse(&json)
        .map(|spec| {
            let mut spec = spec.with_session(&overrides);
            spec.identity.uid = uid.to_owned();
            spec.metadata = sessions.metadata_feed(session_id, uid);
            spec.speakers = speakers;
            spec
        })
        .map_err(|e| e.to_string())
        .and_then(|spec| {
            super::build(&spec, session_id, sink(), metrics).map_err(|e| e.to_string())
        });
    match built {
        Ok(pipeline) => pipeline,
        Err(message) => {
            tracing::warn!(session = %session_id, error = %message, "the session's pipeline cannot run");
            let sink = sink();
            sink.state(PipelineState::Error, &message);
            Box::new(Broken {
                message: Some(message),
            })
        }
    }
}

/// A pipeline whose configuration cannot run: silent, and says why once.
#[derive(Debug)]
struct Broken {
    message: Option<String>,
}

impl SpeechToSpeech for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn push(&mut self, _frame: &Frame) -> usize {
        0
    }
    fn pull(&mut self, _out: &mut Frame) -> bool {
        false
    }
    fn next_event(&mut self) -> Option<String> {
        let message = self.message.take()?;
        Some(
            serde_json::json!({ "type": "state", "state": "ERROR", "detail": message }).to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_told_the_configured_providers_not_echo() {
        let offline = r#"{"pipeline": {"type": "STT_TTS", "stt": "pocketsphinx", "tts": "espeak"},
                          "agent": {"type": "Echo"}}"#;
        assert_eq!(
            describe(Some(offline)),
            Described {
                pipeline: "STT_TTS",
                provider: "pocketsphinx/echo/espeak".to_owned()
            }
        );
        let llm = r#"{"pipeline": {"type": "STT_TTS", "stt": "whisper", "tts": "piper"},
                      "agent": {"type": "Llm", "llm": {"endpoint": "http://llm:8000/v1", "model": "qwen3"}}}"#;
        assert_eq!(describe(Some(llm)).provider, "whisper/llm:qwen3/piper");
        let realtime = r#"{"pipeline": {"type": "S2S", "s2s": "openai-realtime"}}"#;
        assert_eq!(
            describe(Some(realtime)),
            Described {
                pipeline: "S2S",
                provider: "openai-realtime".to_owned()
            }
        );
        let missing_agent =
            r#"{"pipeline": {"type": "STT_TTS", "stt": "whisper", "tts": "piper"}}"#;
        assert_eq!(describe(Some(missing_agent)).provider, "whisper/?/piper");
        assert_eq!(
            describe(None).provider,
            "echo",
            "no configuration runs echo"
        );
        assert_eq!(describe(Some("{not json")).pipeline, "invalid");
    }

    #[test]
    fn status_text_is_capped_on_a_character_boundary_without_control_characters() {
        let text = format!("a\u{1}b\n{}", "ß".repeat(10_000));
        let out = for_status(&text);
        assert!(out.len() <= MAX_TRANSCRIPT_BYTES, "{}", out.len());
        assert!(out.starts_with("a b\nßß"));
        assert!(out.ends_with('…'));
        assert_eq!(for_status("short"), "short");
    }
}
