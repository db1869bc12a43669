//! The worker's shared session state: the slot ledger plus what must change with it
//! (events, metrics, the occupancy watch), behind one lock.
//!
//! Every mutation goes through here so that an event, a metric and a watch update are
//! never skipped or reordered relative to the ledger change that caused them. The lock
//! is a plain mutex held for microseconds and never across an `.await`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use voice_proto::worker::v1::{
    Connected, Ended, Ping, PipelineStateChanged, Reserved as ReservedEvent, Transcript,
    session_event::Event,
};

use crate::capacity::{Ledger, Refusal, Released, Reserved, Session, SessionRequest};
use crate::events::{EventBus, EventStream};
use crate::metrics::Metrics;

mod live_metadata;
mod participants;
pub use participants::UnknownParticipant;

/// Reason recorded on sessions ended because a drain deadline passed.
pub const DRAIN_DEADLINE_REASON: &str = "DrainDeadline";

/// How full the worker is and whether it drains; watched by the drain supervisor,
/// the health reporter and readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    /// Slots held.
    pub held: u32,
    /// When draining, the moment remaining sessions are ended.
    pub drain_deadline: Option<SystemTime>,
}

impl Occupancy {
    /// Whether the worker refuses new sessions.
    pub fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }
}

/// A consistent copy of the ledger for stats and listings.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Most sessions held at once.
    pub capacity: u32,
    /// Held sessions, in id order.
    pub sessions: Vec<Session>,
    /// When draining, the moment remaining sessions are ended.
    pub drain_deadline: Option<SystemTime>,
}

/// The result of a reservation with the occupancy right after it.
#[derive(Clone, Debug)]
pub struct ReserveReply {
    /// Success (new or retried) or the refusal.
    pub outcome: Result<Reserved, Refusal>,
    /// Slots held after the call.
    pub held: u32,
    /// Most sessions held at once.
    pub capacity: u32,
}

/// The shared session state of one worker process.
#[derive(Debug)]
pub struct Sessions {
    ledger: Mutex<Ledger>,
    events: EventBus,
    metrics: Metrics,
    occupancy: watch::Sender<Occupancy>,
    default_drain: Duration,
    started_at: Instant,
    /// The worker's pipeline (`VOICE_PIPELINE`), for sessions reserved without their own.
    default_pipeline: Option<String>,
    /// Live metadata of running pipelines (changed under the ledger lock).
    metadata: live_metadata::MetadataFeeds,
    /// The shared pipelines of multi-user sessions.
    rooms: crate::pipeline::room::Rooms,
}

impl Sessions {
    /// Empty state for a worker of `capacity` sessions.
    pub fn new(
        capacity: u32,
        default_drain: Duration,
        event_buffer: usize,
        metrics: Metrics,
    ) -> Self {
        metrics.set_occupancy(capacity, 0, 0, false);
        let (occupancy, _) = watch::channel(Occupancy {
            held: 0,
            drain_deadline: None,
        });
        Self {
            ledger: Mutex::new(Ledger::new(capacity)),
            events: EventBus::new(event_buffer),
            metrics,
            occupancy,
            default_drain,
            started_at: Instant::now(),
            default_pipeline: None,
            metadata: Default::default(),
            rooms: Default::default(),
        }
    }

    /// Every session runs `pipeline` (the worker's `VOICE_PIPELINE`) with its own
    /// overrides; without one they run the diagnostic S2S `echo`.
    pub fn with_default_pipeline(mut self, pipeline: Option<&serde_json::Value>) -> Self {
        self.default_pipeline = pipeline.map(serde_json::Value::to_string);
        self
    }

    /// The backend's pipeline configuration (JSON) every session runs: the worker's
    /// `VOICE_PIPELINE`, never anything a caller sent; `None` means the echo default.
    pub fn pipeline_config(&self) -> Option<String> {
        self.default_pipeline.clone()
    }

    /// The shared pipelines of this worker's multi-user sessions.
    pub fn rooms(&self) -> &crate::pipeline::room::Rooms {
        &self.rooms
    }

    /// The overrides and persisted conversation `session_id` was reserved with.
    pub fn session_config(
        &self,
        session_id: &str,
    ) -> Option<voice_proto::session_config::SessionConfig> {
        self.lock()
            .get(session_id)
            .map(|s| s.request.config.clone())
    }

    /// Publishes a liveness ping for every session whose client is connected and `active`
    /// (sent media lately): the operator turns it into `lastActivity`, which
    /// `spec.idleTimeout` is measured from. Returns how many were sent.
    /// `dropped` gives a connection's dropped frames so far, carried in the ping.
    pub fn ping_connected(
        &self,
        now: SystemTime,
        active: impl Fn(&str) -> bool,
        dropped: impl Fn(&str) -> Option<u64>,
    ) -> usize {
        let connected: Vec<(String, String)> = self
            .lock()
            .sessions()
            .filter(|s| s.is_connected() && active(&s.request.session_id))
            .map(|s| (s.request.session_id.clone(), s.request.uid.clone()))
            .collect();
        for (id, uid) in &connected {
            let ping = Ping {
                rtt_ms: None,
                dropped_frames: dropped(id),
            };
            self.events.publish(id, uid, now, Event::Ping(ping));
        }
        connected.len()
    }

    /// Publishes the stage timings of a session's finished turn.
    pub fn publish_turn_latency(
        &self,
        session_id: &str,
        uid: &str,
        latency: voice_proto::worker::v1::TurnLatency,
        now: SystemTime,
    ) {
        self.events
            .publish(session_id, uid, now, Event::TurnLatency(latency));
    }

    /// Publishes a pipeline state change of a session.
    pub fn publish_pipeline_state(
        &self,
        session_id: &str,
        uid: &str,
        state: voice_proto::worker::v1::PipelineState,
        detail: &str,
        now: SystemTime,
    ) {
        let event = Event::PipelineState(PipelineStateChanged {
            state: state.into(),
            detail: detail.to_owned(),
        });
        self.events.publish(session_id, uid, now, event);
    }

    /// Publishes a finished piece of a session's conversation.
    pub fn publish_transcript(
        &self,
        session_id: &str,
        uid: &str,
        transcript: Transcript,
        now: SystemTime,
    ) {
        self.events
            .publish(session_id, uid, now, Event::Transcript(transcript));
    }

    /// Publishes a change of a session's turn detection.
    pub fn publish_turn_detection(
        &self,
        session_id: &str,
        uid: &str,
        state: voice_proto::worker::v1::TurnDetection,
        now: SystemTime,
    ) {
        self.events
            .publish(session_id, uid, now, Event::TurnDetection(state));
    }

    /// Publishes the agent's conversation state, for the operator to keep and return when
    /// the session resumes.
    pub fn publish_agent_state(
        &self,
        session_id: &str,
        uid: &str,
        context_json: String,
        now: SystemTime,
    ) {
        let state = voice_proto::worker::v1::AgentState { context_json };
        self.events
            .publish(session_id, uid, now, Event::AgentState(state));
    }

    /// Holds a slot for `request`; publishes `reserved` only for a new slot, since a
    /// retry changes nothing the operator has not already seen.
    pub fn reserve(&self, request: SessionRequest, now: SystemTime) -> ReserveReply {
        let mut ledger = self.lock();
        let (session_id, uid) = (request.session_id.clone(), request.uid.clone());
        let outcome = ledger.reserve(request, now);
        let label = match &outcome {
            Ok(Reserved::New) => "reserved",
            Ok(Reserved::Existing) => "already_reserved",
            Err(Refusal::Full { .. }) => "full",
            Err(Refusal::Draining) => "draining",
            Err(Refusal::Conflict { .. }) => "conflict",
        };
        self.metrics.count_reservation(label);
        if outcome == Ok(Reserved::New) {
            self.events
                .publish(&session_id, &uid, now, Event::Reserved(ReservedEvent {}));
            self.changed(&ledger);
        }
        ReserveReply {
            outcome,
            held: ledger.held(),
            capacity: ledger.capacity(),
        }
    }

    /// Frees a session's slot and publishes `ended` with `reason` when one was freed.
    pub fn release(
        &self,
        session_id: &str,
        uid: &str,
        reason: &str,
        now: SystemTime,
    ) -> (Released, u32) {
        self.release_because(session_id, uid, reason, "", now)
    }

    /// [`Sessions::release`] with a `message` in words beside the reason (e.g. why the
    /// agent hung up).
    pub fn release_because(
        &self,
        session_id: &str,
        uid: &str,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) -> (Released, u32) {
        let mut ledger = self.lock();
        let released = ledger.release(session_id, uid);
        if let Released::Freed(_) = &released {
            self.metadata.forget(session_id, uid);
            self.publish_ended(session_id, uid, reason, message, now);
            self.changed(&ledger);
        }
        (released, ledger.held())
    }

    /// The uid under which `session_id` holds a slot, if it holds one.
    pub fn held_uid(&self, session_id: &str) -> Option<String> {
        self.lock()
            .get(session_id)
            .map(|session| session.request.uid.clone())
    }

    /// Records that the client of a held session connected and publishes `connected`;
    /// false (and nothing published) when no such session (same id and uid) is held,
    /// e.g. because it was released while the client was connecting.
    pub fn connect(
        &self,
        session_id: &str,
        uid: &str,
        connected: Connected,
        now: SystemTime,
    ) -> bool {
        let mut ledger = self.lock();
        if !ledger.mark_connected(session_id, uid, now) {
            return false;
        }
        self.events
            .publish(session_id, uid, now, Event::Connected(connected));
        self.changed(&ledger);
        true
    }

    /// Starts draining with a deadline `timeout` from `now` (the configured drain
    /// timeout when `None`); returns the deadline in force and the slots still held.
    pub fn drain(&self, timeout: Option<Duration>, now: SystemTime) -> (SystemTime, u32) {
        let mut ledger = self.lock();
        let timeout = timeout.unwrap_or(self.default_drain);
        // An absurd timeout must not panic the worker: cap it at about a century.
        let far = Duration::from_secs(u64::from(u32::MAX));
        let deadline = ledger.drain(now.checked_add(timeout.min(far)).unwrap_or(now));
        self.changed(&ledger);
        (deadline, ledger.held())
    }

    /// Ends the sessions left when the drain deadline has passed, publishing `ended`
    /// for each; returns how many were ended.
    pub fn expire(&self, now: SystemTime) -> usize {
        let mut ledger = self.lock();
        let ended = ledger.expire(now);
        for session in &ended {
            let request = &session.request;
            self.metadata.forget(&request.session_id, &request.uid);
            self.publish_ended(
                &request.session_id,
                &request.uid,
                DRAIN_DEADLINE_REASON,
                "",
                now,
            );
        }
        if !ended.is_empty() {
            self.changed(&ledger);
        }
        ended.len()
    }

    /// A consistent copy of the ledger.
    pub fn snapshot(&self) -> Snapshot {
        let ledger = self.lock();
        Snapshot {
            capacity: ledger.capacity(),
            sessions: ledger.sessions().cloned().collect(),
            drain_deadline: ledger.drain_deadline(),
        }
    }

    /// Follows occupancy changes.
    pub fn watch(&self) -> watch::Receiver<Occupancy> {
        self.occupancy.subscribe()
    }

    /// Session events from now on, until `stop` (after those already published).
    pub fn subscribe(&self, stop: CancellationToken) -> EventStream {
        self.events.subscribe(self.metrics.clone(), stop)
    }

    /// Time since this state was created, i.e. since the worker started.
    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-changed (each
        // method mutates it in one step), so a poisoned lock is still usable.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_ended(
        &self,
        session_id: &str,
        uid: &str,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) {
        let ended = Event::Ended(Ended {
            reason: reason.to_owned(),
            message: message.to_owned(),
        });
        self.events.publish(session_id, uid, now, ended);
    }

    /// Mirrors a ledger change into metrics and the occupancy watch.
    fn changed(&self, ledger: &Ledger) {
        self.metrics.set_occupancy(
            ledger.capacity(),
            ledger.reserved_only(),
            ledger.connected(),
            ledger.is_draining(),
        );
        self.occupancy.send_replace(Occupancy {
            held: ledger.held(),
            drain_deadline: ledger.drain_deadline(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn request(id: &str) -> SessionRequest {
        SessionRequest {
            session_id: id.to_owned(),
            uid: format!("uid-{id}"),
            token_key_id: None,
            config: Default::default(),
        }
    }

    #[test]
    fn a_token_opens_only_a_seat_its_session_lists() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let sessions = Sessions::new(4, Duration::from_secs(5), 64, metrics);
        let now = SystemTime::now();
        let mut room = request("ns/room");
        room.config.user_id = Some("alice".into());
        room.config.participants = vec!["bob".into()];
        assert!(sessions.reserve(room, now).outcome.is_ok());
        assert!(sessions.reserve(request("ns/bare"), now).outcome.is_ok());
        assert_eq!(sessions.participant("ns/room", ""), Ok("alice".to_owned()));
        assert_eq!(sessions.participant("ns/room", "bob"), Ok("bob".to_owned()));
        assert!(sessions.participant("ns/room", "carol").is_err());
        // No user named at reservation: the one person is whoever the token says.
        assert_eq!(
            sessions.participant("ns/bare", "dave"),
            Ok("dave".to_owned())
        );
    }

    #[tokio::test]
    async fn only_connected_sessions_with_media_are_pinged() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let sessions = Sessions::new(4, Duration::from_secs(5), 64, metrics);
        let now = SystemTime::now();
        let mut events = sessions.subscribe(CancellationToken::new());
        for id in ["ns/a", "ns/b", "ns/c"] {
            assert!(sessions.reserve(request(id), now).outcome.is_ok());
        }
        assert!(sessions.connect("ns/a", "uid-ns/a", Connected::default(), now));
        assert!(sessions.connect("ns/c", "uid-ns/c", Connected::default(), now));
        // ns/c is connected but silent: an open connection alone is not activity.
        assert_eq!(sessions.ping_connected(now, |id| id != "ns/c", |_| None), 1);
        let mut pinged = Vec::new();
        while let Some(Ok(event)) = events.next().await {
            if let Some(Event::Ping(_)) = event.event {
                pinged.push(event.session_id);
                break;
            }
        }
        assert_eq!(pinged, ["ns/a"]);
    }
}
