//! The live part of `VoiceSession.status`, mirrored from the workers' session event streams:
//! connection details (`connection`, and every participant's in `connections`), pipeline
//! state, last activity, the persisted conversation context and the `Connected`/`Ready`
//! conditions; also the session's `PipelineError`, `ParticipantJoined` and `ParticipantLeft`
//! Events. This writer is those fields' only owner; how one event changes them is decided,
//! without I/O, in `live_status_writer/fold.rs`.
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

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use voice_crds::VoiceSession;
use voice_crds::conditions::{CONNECTED, READY};
use voice_proto::worker::v1 as pb;

use crate::context::Context;
use crate::event_source::{self, DropReason, Roster, WorkerRef};
use crate::heartbeat::Heartbeats;
use crate::ledger::BackendKey;
use crate::session_connections::{Members, Presence};

mod fold;

use fold::Live;
pub use fold::{PARTICIPANT_JOINED, PARTICIPANT_LEFT};

/// Field manager of the live session status.
use crate::field_managers::SESSION_LIVE as FIELD_MANAGER;
/// Most often a session's live status is written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Most often a ping alone causes a write.
const PING_WRITE_INTERVAL: Duration = Duration::from_secs(15);
/// The writer's name in `/healthz`.
const HEARTBEAT: &str = "session-live";
/// Events buffered between the worker streams and the writer.
const EVENT_BUFFER: usize = 8192;

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

struct Entry {
    live: Live,
    /// The session's backend, for its latency window.
    backend: BackendKey,
    /// Who may connect, from the session's spec (participants are immutable).
    members: Members,
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
                        drop_event(&ctx, &mut logged, &source, &event.session_id, why);
                        continue;
                    }
                };
                let session = event.session_id.clone();
                match absorb(&ctx, &mut entries, event, worker).await {
                    Ok(Some(end)) => {
                        // The live fields' last word (disconnected) lands before the allocator
                        // marks the session Completed, so a finished status is final at once.
                        write_dirty(&ctx, &mut entries).await;
                        let _ = ended.send(end).await;
                    }
                    Ok(None) => {}
                    Err(why) => drop_event(&ctx, &mut logged, &source, &session, why),
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
    session: &str,
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
            session = %session,
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

/// Folds one event into its session's live state and carries out what that asks; returns
/// the end of a session for the allocator, or why the event was dropped.
async fn absorb(
    ctx: &Context,
    entries: &mut HashMap<(String, String), Entry>,
    event: pb::SessionEvent,
    worker: WorkerRef,
) -> Result<Option<Ended>, DropReason> {
    let id = (event.session_id.clone(), event.uid.clone());
    if !entries.contains_key(&id) {
        let Some((live, backend, members)) = seed(ctx, &event.session_id, &event.uid).await else {
            return Ok(None);
        };
        entries.insert(
            id.clone(),
            Entry {
                live,
                backend,
                members,
                dirty: false,
                ping_only: true,
                written: None,
            },
        );
    }
    let Some(entry) = entries.get_mut(&id) else {
        return Ok(None);
    };
    let at = event
        .timestamp
        .as_ref()
        .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .unwrap_or_else(Timestamp::now);
    let Some(what) = event.event else {
        return Ok(None);
    };
    let folded = fold::fold(
        &mut entry.live,
        &entry.members,
        what,
        Time(at),
        &event.session_id,
    );
    if folded.unknown_participant {
        return Err(DropReason::UnknownParticipant);
    }
    if let Some(latency) = folded.turn_latency {
        ctx.turn_latencies
            .record(entry.backend.clone(), latency, Instant::now());
    }
    if folded.dirty {
        entry.ping_only = if entry.dirty {
            entry.ping_only && folded.ping
        } else {
            folded.ping
        };
        entry.dirty = true;
    }
    if let Some((ns, name)) = event.session_id.split_once('/') {
        for notice in &folded.notices {
            let type_ = if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            crate::events::publish_session_event(
                &ctx.session_recorder,
                ns,
                name,
                &event.uid,
                type_,
                notice.reason,
                &notice.note,
            )
            .await;
        }
    }
    Ok(folded.ended.map(|(reason, message)| Ended {
        worker,
        session_id: event.session_id,
        uid: event.uid,
        reason,
        message,
    }))
}

/// The live state as the API has it, so the writer continues (rather than replaces) the
/// context after an operator restart. `None` when the session is gone or was recreated.
async fn seed(ctx: &Context, session_id: &str, uid: &str) -> Option<(Live, BackendKey, Members)> {
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
    let members = Members::of(&session.spec);
    let status = session.status.unwrap_or_default();
    let live = Live {
        presence: Presence {
            connection: status.connection,
            connections: status.connections,
        },
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
    Some((live, backend, members))
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
        let finished = e.live.presence.connection.is_none() && !e.dirty && fold::ended(&e.live);
        !gone.contains(id) && !finished
    });
}
