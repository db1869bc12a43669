//! The live part of `VoiceSession.status`, mirrored from the workers' session event streams:
//! connection details, pipeline state, last activity, the persisted conversation context and
//! the `Connected`/`Ready` conditions.
//!
//! One subscription per worker feeds one writer. The writer coalesces: events only mark a
//! session dirty, and dirty sessions are applied at most every [`FLUSH_INTERVAL`] (pings, which
//! only move `lastActivity`, at most every [`PING_WRITE_INTERVAL`]), so a chatty call does not
//! turn the API server into a per-frame bus. "Ended" events go to the allocator, which owns
//! the lifecycle fields.
//!
//! Every event is checked against the allocator's [`Roster`] first: only the worker that holds
//! a session may speak for it ([`crate::event_source`]). Others are dropped, counted in
//! `voice_session_events_dropped_total{reason}` and logged once per worker and reason.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use voice_crds::conditions::{CONNECTED, READY, set_condition};
use voice_crds::{
    AudioBufferStatus, AudioFormat, Codec, PipelineState, SessionContext, Speaker, TranscriptEntry,
    Transport, TurnDetectionState, TurnLatencyStatus, UserConnectionStatus, VoiceSession,
};
use voice_proto::worker::v1 as pb;
use voice_proto::worker::v1::session_event::Event;

use crate::context::Context;
use crate::event_source::{self, DropReason, Roster, WorkerRef};
use crate::heartbeat::Heartbeats;
use crate::ledger::BackendKey;
use voice_proto::session_config::MAX_AGENT_STATE_BYTES;

/// Field manager of the live session status.
pub const FIELD_MANAGER: &str = "voice-operator/session-live";
/// Most often a session's live status is written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Most often a ping alone causes a write.
const PING_WRITE_INTERVAL: Duration = Duration::from_secs(15);
/// Transcript entries kept in status; older ones are trimmed to keep the object small.
const TRANSCRIPT_KEPT: usize = 50;
/// The writer's name in `/healthz`.
const HEARTBEAT: &str = "session-live";
/// Events buffered between the worker streams and the writer.
const EVENT_BUFFER: usize = 8192;

/// Longest turn latency taken from a worker's event (a day): anything longer is a lie.
const MAX_TURN_LATENCY_MS: f64 = 86_400_000.0;

/// A session a worker ended, for the allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The worker that sent the event (checked against the ledger again by the allocator).
    pub worker: WorkerRef,
    /// `namespace/name`.
    pub session_id: String,
    /// The session's uid.
    pub uid: String,
    /// Why, as the worker said, when it is a well-formed condition reason; otherwise
    /// `EndedOnWorker`.
    pub reason: String,
    /// The worker's details in words (e.g. the agent's own reason for hanging up), capped.
    pub message: String,
}

/// Longest end reason taken from a worker; condition reasons are short CamelCase words.
const MAX_END_REASON: usize = 64;

/// Longest end message taken from a worker (bytes).
const MAX_END_MESSAGE: usize = 512;

/// A worker's end reason as a condition reason may be (a letter, then letters and digits,
/// at most [`MAX_END_REASON`]): anything else would make the API server refuse the status
/// write, so it becomes `EndedOnWorker`.
fn end_reason(reason: &str) -> String {
    let well_formed = reason.len() <= MAX_END_REASON
        && reason.starts_with(|c: char| c.is_ascii_alphabetic())
        && reason.chars().all(|c| c.is_ascii_alphanumeric());
    if well_formed {
        reason.to_owned()
    } else {
        crate::session_lifecycle::reason::ENDED_ON_WORKER.to_owned()
    }
}

/// A worker's account of a connection's audio as the status schema allows it, or `None`:
/// a value the schema refuses would make the API server reject the whole live status write.
fn media_format(f: &pb::MediaFormat) -> Option<AudioFormat> {
    let codec = match f.codec.as_str() {
        "opus" => Codec::Opus,
        "pcm" => Codec::Pcm,
        _ => return None,
    };
    let rates: &[u32] = if codec == Codec::Opus {
        &[48_000]
    } else {
        &[8_000, 16_000, 24_000, 48_000]
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

/// The writer-owned status fields of one session, exactly as applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Live {
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<UserConnectionStatus>,
    pipeline_state: PipelineState,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_activity: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_turn: Option<TurnLatencyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<SessionContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    turn_detection: Option<TurnDetectionState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio_buffers: Option<AudioBufferStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<Condition>,
}

struct Entry {
    live: Live,
    /// The session's backend, for its latency window.
    backend: BackendKey,
    dirty: bool,
    ping_only: bool,
    written: Option<Instant>,
}

/// Runs the subscriptions and the writer until `cancel` fires.
pub async fn run(
    ctx: Arc<Context>,
    cancel: CancellationToken,
    mut roster: watch::Receiver<Roster>,
    ended: mpsc::Sender<Ended>,
    heartbeats: Heartbeats,
) {
    let (events_tx, mut events) = mpsc::channel::<(String, pb::SessionEvent)>(EVENT_BUFFER);
    let mut logged: HashSet<(String, DropReason)> = HashSet::new();
    let mut subscriptions: HashMap<String, CancellationToken> = HashMap::new();
    let mut entries: HashMap<(String, String), Entry> = HashMap::new();
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        // Once per turn (at least every FLUSH_INTERVAL): a write that never returns stops it.
        heartbeats.beat(HEARTBEAT);
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = roster.changed() => {
                if changed.is_err() {
                    return;
                }
                let wanted: BTreeSet<String> =
                    roster.borrow_and_update().workers.keys().cloned().collect();
                subscriptions.retain(|ip, token| {
                    let keep = wanted.contains(ip);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for ip in wanted {
                    if let std::collections::hash_map::Entry::Vacant(slot) = subscriptions.entry(ip) {
                        let token = cancel.child_token();
                        tokio::spawn(follow(ctx.clone(), slot.key().clone(), events_tx.clone(), token.clone()));
                        slot.insert(token);
                    }
                }
            }
            Some((source, event)) = events.recv() => {
                let checked = event_source::check(&roster.borrow(), &source, &event.session_id, &event.uid)
                    .cloned();
                let worker = match checked {
                    Ok(worker) => worker,
                    Err(why) => {
                        drop_event(&ctx, &mut logged, &source, &event, why);
                        continue;
                    }
                };
                if let Some(end) = absorb(&ctx, &mut entries, event, worker).await {
                    // The live fields' last word (disconnected) lands before the allocator
                    // marks the session Completed, so a finished status is final at once.
                    write_dirty(&ctx, &mut entries).await;
                    let _ = ended.send(end).await;
                }
            }
            _ = flush.tick() => write_dirty(&ctx, &mut entries).await,
        }
    }
}

/// Counts a dropped event and logs it the first time this worker sends one for this reason.
fn drop_event(
    ctx: &Context,
    logged: &mut HashSet<(String, DropReason)>,
    source: &str,
    event: &pb::SessionEvent,
    why: DropReason,
) {
    ctx.metrics
        .session_events_dropped
        .with_label_values(&[why.as_str()])
        .inc();
    // Bounded by workers × reasons; a hostile worker cannot grow it with session names.
    if logged.insert((source.to_owned(), why)) {
        tracing::warn!(
            worker = %source,
            session = %event.session_id,
            reason = why.as_str(),
            "dropping a session event this worker may not send (logged once per worker and reason)"
        );
    }
}

/// Follows one worker's event stream, resubscribing after errors until cancelled. Events
/// are tagged with the address they came from, which is what [`event_source::check`] trusts.
async fn follow(
    ctx: Arc<Context>,
    ip: String,
    events: mpsc::Sender<(String, pb::SessionEvent)>,
    cancel: CancellationToken,
) {
    loop {
        match ctx.workers.watch_events(&ip, Duration::from_secs(5)).await {
            Ok(mut stream) => loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    next = stream.message() => match next {
                        Ok(Some(event)) => {
                            if events.send((ip.clone(), event)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(worker = %ip, %status, "event stream ended; resubscribing");
                            break;
                        }
                    },
                }
            },
            Err(e) => {
                tracing::debug!(worker = %ip, error = %e, "subscribing to worker events failed")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Folds one event into its session's live state; returns the end of a session for the
/// allocator.
async fn absorb(
    ctx: &Context,
    entries: &mut HashMap<(String, String), Entry>,
    event: pb::SessionEvent,
    worker: WorkerRef,
) -> Option<Ended> {
    let id = (event.session_id.clone(), event.uid.clone());
    if !entries.contains_key(&id) {
        let (live, backend) = seed(ctx, &event.session_id, &event.uid).await?;
        entries.insert(
            id.clone(),
            Entry {
                live,
                backend,
                dirty: false,
                ping_only: true,
                written: None,
            },
        );
    }
    let entry = entries.get_mut(&id)?;
    let at = event
        .timestamp
        .as_ref()
        .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .unwrap_or_else(Timestamp::now);
    let now = Time(at);
    let live = &mut entry.live;
    let mut ping = false;
    let mut end = None;
    match event.event? {
        Event::Reserved(_) | Event::Disconnected(_) => return None,
        Event::Connected(c) => {
            let transport = match c.transport() {
                pb::Transport::Websocket => Transport::WebSocket,
                _ => Transport::WebRtc,
            };
            live.audio_buffers = Some(AudioBufferStatus {
                format: c.format.as_ref().and_then(media_format),
                dropped_frames: 0,
            });
            live.connection = Some(UserConnectionStatus {
                user_id: Some(c.participant).filter(|p| !p.is_empty()),
                connection_id: c.connection_id,
                transport,
                remote_address: Some(c.remote_address).filter(|a| !a.is_empty()),
                connected_at: Some(now.clone()),
                last_ping: Some(now.clone()),
            });
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
                if let Some((ns, name)) = event.session_id.split_once('/') {
                    crate::events::publish_session_warning(
                        &ctx.session_recorder,
                        ns,
                        name,
                        &event.uid,
                        "PipelineError",
                        &p.detail,
                    )
                    .await;
                }
            }
            live.pipeline_state = state;
            live.last_activity = Some(now.clone());
            if live.connection.is_some() {
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
            ping = true;
            live.last_activity = Some(now.clone());
            if let (Some(dropped), Some(buffers)) = (p.dropped_frames, live.audio_buffers.as_mut())
            {
                buffers.dropped_frames = i64::try_from(dropped).unwrap_or(i64::MAX);
            }
            if let Some(c) = live.connection.as_mut() {
                c.last_ping = Some(now);
            }
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
                participant: Some(t.speaker).filter(|s| !s.is_empty()),
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
                tracing::debug!(session = %event.session_id, total_ms = t.total_ms, "turn latency out of range; ignored");
                return None;
            };
            live.last_turn = Some(TurnLatencyStatus {
                turn_detect_ms: t.turn_detect_ms.and_then(checked_ms),
                stt_ms: t.stt_ms.and_then(checked_ms),
                agent_first_token_ms: t.agent_first_token_ms.and_then(checked_ms),
                tts_first_audio_ms: t.tts_first_audio_ms.and_then(checked_ms),
                first_packet_ms: t.first_packet_ms.and_then(checked_ms),
                total_ms,
            });
            ctx.turn_latencies.record(
                entry.backend.clone(),
                Duration::from_millis(total_ms.unsigned_abs()),
                Instant::now(),
            );
        }
        Event::TurnDetection(t) => {
            live.turn_detection = Some(TurnDetectionState {
                is_listening: t.listening,
                last_speech_time: t.last_speech.and_then(|at| {
                    let at = Timestamp::new(at.seconds, at.nanos).ok()?;
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
                tracing::warn!(session = %event.session_id, bytes = a.context_json.len(), "dropping an agent state larger than {MAX_AGENT_STATE_BYTES} bytes");
            }
        }
        Event::Ended(e) => {
            live.connection = None;
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
            end = Some(Ended {
                worker,
                session_id: event.session_id,
                uid: event.uid,
                reason,
                message: capped(&e.message, MAX_END_MESSAGE),
            });
        }
    }
    entry.ping_only = if entry.dirty {
        entry.ping_only && ping
    } else {
        ping
    };
    entry.dirty = true;
    end
}

/// The live state as the API has it, so the writer continues (rather than replaces) the
/// context after an operator restart. `None` when the session is gone or was recreated.
async fn seed(ctx: &Context, session_id: &str, uid: &str) -> Option<(Live, BackendKey)> {
    let (ns, name) = session_id.split_once('/')?;
    let api: Api<VoiceSession> = Api::namespaced(ctx.client.clone(), ns);
    let session = api.get_opt(name).await.ok()??;
    if session.metadata.uid.as_deref() != Some(uid) {
        return None;
    }
    let backend = BackendKey {
        namespace: ns.to_owned(),
        name: session.spec.backend_ref.name.clone(),
    };
    let status = session.status.unwrap_or_default();
    let live = Live {
        connection: status.connection,
        pipeline_state: status.pipeline_state,
        last_activity: status.last_activity,
        last_turn: status.last_turn,
        context: status.context,
        turn_detection: status.turn_detection,
        audio_buffers: status.audio_buffers,
        conditions: status
            .conditions
            .into_iter()
            .filter(|c| c.type_ == CONNECTED || c.type_ == READY)
            .collect(),
    };
    Some((live, backend))
}

async fn write_dirty(ctx: &Context, entries: &mut HashMap<(String, String), Entry>) {
    let mut gone: HashSet<(String, String)> = HashSet::new();
    for (id, entry) in entries.iter_mut() {
        if !entry.dirty {
            continue;
        }
        if entry.ping_only
            && entry
                .written
                .is_some_and(|at| at.elapsed() < PING_WRITE_INTERVAL)
        {
            continue;
        }
        let Some((ns, name)) = id.0.split_once('/') else {
            continue;
        };
        let api: Api<VoiceSession> = Api::namespaced(ctx.client.clone(), ns);
        let body = serde_json::json!({
            "apiVersion": VoiceSession::api_version(&()),
            "kind": VoiceSession::kind(&()),
            "metadata": { "uid": id.1 },
            "status": entry.live,
        });
        match api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
        {
            Ok(_) => {
                entry.dirty = false;
                entry.written = Some(Instant::now());
                ctx.metrics.live_status_writes.inc();
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                gone.insert(id.clone());
            }
            Err(e) => {
                tracing::warn!(session = %id.0, error = %e, "writing live session status failed")
            }
        }
    }
    // Forget sessions that are gone, and ended ones once their last state is written.
    entries.retain(|id, e| {
        let finished = e.live.connection.is_none() && !e.dirty && ended(&e.live);
        !gone.contains(id) && !finished
    });
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

fn ended(live: &Live) -> bool {
    live.conditions
        .iter()
        .any(|c| c.type_ == CONNECTED && c.reason == "SessionEnded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_latencies_from_a_worker_are_checked_before_use() {
        assert_eq!(checked_ms(12.4), Some(12));
        assert_eq!(checked_ms(0.0), Some(0));
        assert_eq!(checked_ms(MAX_TURN_LATENCY_MS), Some(86_400_000));
        for hostile in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            f64::MAX,
            MAX_TURN_LATENCY_MS + 1.0,
        ] {
            assert_eq!(checked_ms(hostile), None, "{hostile}");
        }
    }

    #[test]
    fn a_workers_media_format_reaches_status_only_when_the_schema_allows_it() {
        let format = |codec: &str, rate, channels, bytes| pb::MediaFormat {
            codec: codec.into(),
            sample_rate: rate,
            channels,
            buffer_bytes: bytes,
        };
        let opus =
            media_format(&format("opus", 48_000, 1, 3_840)).unwrap_or_else(|| panic!("opus"));
        assert_eq!(
            (opus.codec, opus.sample_rate, opus.buffer_size),
            (Codec::Opus, 48_000, 3_840)
        );
        assert!(media_format(&format("pcm", 8_000, 1, 96_000)).is_some());
        for hostile in [
            format("opus", 16_000, 1, 1),
            format("mp3", 48_000, 1, 1),
            format("pcm", 12_345, 1, 1),
            format("pcm", 16_000, 3, 1),
            format("pcm", 16_000, 1, 0),
            format("pcm", 16_000, 1, u32::MAX),
        ] {
            assert_eq!(media_format(&hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn end_reasons_from_a_worker_are_condition_reasons_or_ended_on_worker() {
        assert_eq!(end_reason("AgentHangup"), "AgentHangup");
        assert_eq!(end_reason("DrainDeadline"), "DrainDeadline");
        for hostile in ["", "has space", "9Lives", "é", "a-b", &"A".repeat(65)] {
            assert_eq!(end_reason(hostile), "EndedOnWorker", "{hostile:?}");
        }
        assert_eq!(capped("ééé", 3), "é");
        assert_eq!(capped("short", 512), "short");
    }
}
