//! One worker event folded into a session's live status, without I/O: the writer applies the
//! state and carries out what [`Folded`] asks (Events, the latency window, the end for the
//! allocator). Worker-supplied values are checked here, field by field, before they reach a
//! status the API server would refuse.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;
use voice_crds::conditions::{CONNECTED, READY, set_condition};
use voice_crds::{
    AudioBufferStatus, AudioFormat, Codec, PipelineState, SessionContext, Speaker, TranscriptEntry,
    Transport, TurnDetectionState, TurnLatencyStatus, UserConnectionStatus,
};
use voice_proto::session_config::MAX_AGENT_STATE_BYTES;
use voice_proto::worker::v1 as pb;
use voice_proto::worker::v1::session_event::Event;

use crate::session_connections::{Members, Presence};

/// Transcript entries kept in status; older ones are trimmed to keep the object small.
const TRANSCRIPT_KEPT: usize = 50;
/// Longest turn latency taken from a worker's event (a day): anything longer is a lie.
const MAX_TURN_LATENCY_MS: f64 = 86_400_000.0;
/// Longest end reason taken from a worker; condition reasons are short CamelCase words.
const MAX_END_REASON: usize = 64;
/// Longest end message taken from a worker (bytes).
pub(super) const MAX_END_MESSAGE: usize = 512;

/// Event reason of a participant of a multi-user session connecting.
pub const PARTICIPANT_JOINED: &str = "ParticipantJoined";
/// Event reason of a participant of a multi-user session leaving while others stay.
pub const PARTICIPANT_LEFT: &str = "ParticipantLeft";

/// The writer-owned status fields of one session, exactly as applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Live {
    #[serde(flatten)]
    pub presence: Presence,
    pub pipeline_state: PipelineState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_turn: Option<TurnLatencyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<SessionContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_detection: Option<TurnDetectionState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_buffers: Option<AudioBufferStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A Kubernetes Event to publish about the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What folding one event asks of the writer beyond the new state.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Folded {
    /// The state changed and must be written.
    pub dirty: bool,
    /// Only liveness moved (written less often).
    pub ping: bool,
    /// The event named someone the session does not list, and was dropped.
    pub unknown_participant: bool,
    /// Events to publish.
    pub notices: Vec<Notice>,
    /// A turn's end-to-end latency, for the backend's window.
    pub turn_latency: Option<Duration>,
    /// The worker ended the session: its reason and message, checked.
    pub ended: Option<(String, String)>,
}

/// Folds `event`, observed at `now`, into the live state of a session whose people are
/// `members`; `session` names it in logs.
pub(super) fn fold(
    live: &mut Live,
    members: &Members,
    event: Event,
    now: Time,
    session: &str,
) -> Folded {
    let mut folded = Folded {
        dirty: true,
        ..Folded::default()
    };
    match event {
        Event::Reserved(_) => return Folded::default(),
        Event::Connected(c) => {
            let Some(user_id) = members.resolve(&c.participant) else {
                return unknown(session, &c.participant);
            };
            let transport = match c.transport() {
                pb::Transport::Websocket => Transport::WebSocket,
                pb::Transport::Livekit => Transport::LiveKit,
                pb::Transport::Twilio => Transport::Twilio,
                _ => Transport::WebRtc,
            };
            let connection = UserConnectionStatus {
                user_id: Some(user_id),
                connection_id: c.connection_id,
                transport,
                remote_address: Some(c.remote_address).filter(|a| !a.is_empty()),
                connected_at: Some(now.clone()),
                last_ping: Some(now.clone()),
            };
            let joined = joined(&connection);
            // audioBuffers describes `status.connection`'s media.
            if live.presence.connect(members, connection) {
                live.audio_buffers = Some(AudioBufferStatus {
                    format: c.format.as_ref().and_then(media_format),
                    dropped_frames: 0,
                });
            }
            if members.multi_user() {
                folded.notices.push(Notice {
                    warning: false,
                    reason: PARTICIPANT_JOINED,
                    note: format!("{joined}; {} connected", live.presence.count()),
                });
            }
            live.last_activity = Some(now.clone());
            set_condition(
                &mut live.conditions,
                CONNECTED,
                true,
                "ClientConnected",
                "the client's media connection is up",
                None,
                now.clone(),
            );
            let error = live.pipeline_state == PipelineState::Error;
            set_condition(
                &mut live.conditions,
                READY,
                !error,
                if error { "PipelineError" } else { "Connected" },
                "",
                None,
                now,
            );
        }
        Event::Disconnected(d) => {
            if members.resolve(&d.participant).is_none() {
                return unknown(session, &d.participant);
            }
            // A late goodbye of a connection a reconnect already replaced changes nothing.
            let Some(gone) = live.presence.disconnect(members, &d.connection_id) else {
                return Folded::default();
            };
            if members.multi_user() {
                let reason = condition_reason(&d.reason).unwrap_or("NoReasonGiven");
                folded.notices.push(Notice {
                    warning: false,
                    reason: PARTICIPANT_LEFT,
                    note: format!(
                        "{} left ({reason}, connection {}); {} still connected",
                        gone.user_id.unwrap_or_default(),
                        gone.connection_id,
                        live.presence.count()
                    ),
                });
            }
        }
        Event::PipelineState(p) => {
            let state = match p.state() {
                pb::PipelineState::Listening => PipelineState::Listening,
                pb::PipelineState::Processing => PipelineState::Processing,
                pb::PipelineState::Speaking => PipelineState::Speaking,
                pb::PipelineState::Error => PipelineState::Error,
                _ => PipelineState::Idle,
            };
            if state == PipelineState::Error && live.pipeline_state != PipelineState::Error {
                // A provider failure (timeout, 4xx/5xx, malformed stream): say so where
                // `kubectl describe` looks. The worker's detail never carries credentials.
                folded.notices.push(Notice {
                    warning: true,
                    reason: "PipelineError",
                    note: p.detail.clone(),
                });
            }
            live.pipeline_state = state;
            live.last_activity = Some(now.clone());
            if live.presence.connection.is_some() {
                let error = state == PipelineState::Error;
                let message = if error { p.detail } else { String::new() };
                set_condition(
                    &mut live.conditions,
                    READY,
                    !error,
                    if error { "PipelineError" } else { "Connected" },
                    message,
                    None,
                    now,
                );
            }
        }
        Event::Ping(p) => {
            folded.ping = true;
            live.last_activity = Some(now.clone());
            if let (Some(dropped), Some(buffers)) = (p.dropped_frames, live.audio_buffers.as_mut())
            {
                buffers.dropped_frames = i64::try_from(dropped).unwrap_or(i64::MAX);
            }
            live.presence.ping(&now);
        }
        Event::Transcript(t) => {
            let speaker = if t.role() == pb::transcript::Role::Agent {
                Speaker::Agent
            } else {
                Speaker::User
            };
            let context = live.context.get_or_insert_with(SessionContext::default);
            if speaker == Speaker::Agent {
                context.turns += 1;
            }
            context.transcript.push(TranscriptEntry {
                speaker,
                text: t.text,
                participant: members.speaker(&t.speaker),
                time: Some(now.clone()),
            });
            let excess = context.transcript.len().saturating_sub(TRANSCRIPT_KEPT);
            context.transcript.drain(..excess);
            live.last_activity = Some(now);
        }
        Event::TurnLatency(t) => {
            // Worker-supplied numbers: NaN, infinities, negatives and absurd values are
            // refused field by field instead of reaching a conversion that panics.
            let Some(total_ms) = checked_ms(t.total_ms) else {
                tracing::debug!(%session, total_ms = t.total_ms, "turn latency out of range; ignored");
                return Folded::default();
            };
            live.last_turn = Some(TurnLatencyStatus {
                turn_detect_ms: t.turn_detect_ms.and_then(checked_ms),
                stt_ms: t.stt_ms.and_then(checked_ms),
                agent_first_token_ms: t.agent_first_token_ms.and_then(checked_ms),
                tts_first_audio_ms: t.tts_first_audio_ms.and_then(checked_ms),
                first_packet_ms: t.first_packet_ms.and_then(checked_ms),
                total_ms,
            });
            folded.turn_latency = Some(Duration::from_millis(total_ms.unsigned_abs()));
        }
        Event::TurnDetection(t) => {
            live.turn_detection = Some(TurnDetectionState {
                is_listening: t.listening,
                last_speech_time: t.last_speech.and_then(|at| {
                    let at = k8s_openapi::jiff::Timestamp::new(at.seconds, at.nanos).ok()?;
                    Some(Time(at))
                }),
                silence_timeout: Some(
                    Duration::from_millis(u64::from(t.silence_timeout_ms)).into(),
                ),
                turn_end_detected: t.turn_end_detected,
            });
        }
        Event::AgentState(a) => {
            if a.context_json.len() <= MAX_AGENT_STATE_BYTES {
                let context = live.context.get_or_insert_with(SessionContext::default);
                context.agent_state = Some(a.context_json);
            } else {
                tracing::warn!(%session, bytes = a.context_json.len(), "dropping an agent state larger than {MAX_AGENT_STATE_BYTES} bytes");
            }
        }
        Event::Ended(e) => {
            live.presence.clear();
            let reason = end_reason(&e.reason);
            set_condition(
                &mut live.conditions,
                CONNECTED,
                false,
                "SessionEnded",
                format!("the session ended: {reason}"),
                None,
                now.clone(),
            );
            set_condition(
                &mut live.conditions,
                READY,
                false,
                "SessionEnded",
                "",
                None,
                now,
            );
            folded.ended = Some((reason, capped(&e.message, MAX_END_MESSAGE)));
        }
    }
    folded
}

fn unknown(session: &str, participant: &str) -> Folded {
    tracing::debug!(%session, participant = %capped(participant, 64), "event for a participant the session does not list; dropped");
    Folded {
        unknown_participant: true,
        ..Folded::default()
    }
}

/// Who joined how, for a ParticipantJoined note.
fn joined(c: &UserConnectionStatus) -> String {
    let transport = c.transport.as_str();
    let from = c
        .remote_address
        .as_deref()
        .map(|a| format!(" from {}", capped(a, 64)))
        .unwrap_or_default();
    format!(
        "{} joined over {transport}{from} (connection {})",
        c.user_id.as_deref().unwrap_or_default(),
        capped(&c.connection_id, 64)
    )
}

/// Whether the session's live state says it ended.
pub(super) fn ended(live: &Live) -> bool {
    live.conditions
        .iter()
        .any(|c| c.type_ == CONNECTED && c.reason == "SessionEnded")
}

/// `reason` when it is a well-formed condition reason (a letter, then letters and digits, at
/// most [`MAX_END_REASON`]): anything else would make the API server refuse a status write.
fn condition_reason(reason: &str) -> Option<&str> {
    let well_formed = reason.len() <= MAX_END_REASON
        && reason.starts_with(|c: char| c.is_ascii_alphabetic())
        && reason.chars().all(|c| c.is_ascii_alphanumeric());
    well_formed.then_some(reason)
}

/// A worker's end reason as a condition reason may be, or else `EndedOnWorker`.
fn end_reason(reason: &str) -> String {
    condition_reason(reason)
        .unwrap_or(crate::session_lifecycle::reason::ENDED_ON_WORKER)
        .to_owned()
}

/// A worker's account of a connection's audio as the status schema allows it, or `None`:
/// a value the schema refuses would make the API server reject the whole live status write.
fn media_format(f: &pb::MediaFormat) -> Option<AudioFormat> {
    let codec = match f.codec.as_str() {
        "opus" => Codec::Opus,
        "pcm" => Codec::Pcm,
        "pcmu" => Codec::Pcmu,
        _ => return None,
    };
    let rates: &[u32] = match codec {
        Codec::Opus => &[48_000],
        Codec::Pcmu => &[8_000],
        Codec::Pcm => &[8_000, 16_000, 24_000, 48_000],
    };
    let fits = rates.contains(&f.sample_rate)
        && (1..=2).contains(&f.channels)
        && (1..=16_777_216).contains(&f.buffer_bytes);
    fits.then(|| AudioFormat {
        codec,
        sample_rate: i32::try_from(f.sample_rate).unwrap_or(48_000),
        channels: i32::try_from(f.channels).unwrap_or(1),
        buffer_size: i32::try_from(f.buffer_bytes).unwrap_or(1),
    })
}

/// `text` cut to `max` bytes on a character boundary.
fn capped(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Whole milliseconds from a worker's number, when it is one a turn can take:
/// finite, not negative, at most [`MAX_TURN_LATENCY_MS`].
fn checked_ms(ms: f64) -> Option<i64> {
    if !(0.0..=MAX_TURN_LATENCY_MS).contains(&ms) {
        return None;
    }
    // In range, so the cast is exact up to rounding and cannot saturate.
    Some(ms.round() as i64)
}

#[cfg(test)]
mod tests;
