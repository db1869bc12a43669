//! The part of `VoiceSession.status` the allocator owns — phase, persistence, worker,
//! endpoint, queue position, admission and end times, end reason and the `Admitted` condition —
//! and the transitions between its values. Pure: time is an argument.
//!
//! Under server-side apply a manager's apply replaces every field it owns, so the allocator
//! always applies the whole [`Lifecycle`], never a piece of it. Live fields (connection,
//! pipeline state, transcript, `Connected`/`Ready`) belong to the live-state writer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use serde::Serialize;
use voice_crds::conditions::{ADMITTED, set_condition};
use voice_crds::{
    PersistenceStatus, SessionEndpoint, SessionPhase, SessionWorker, VoiceSession,
    VoiceSessionStatus,
};

/// Reasons of the `Admitted` condition and of `status.endReason`.
pub use admission_core::reason;

/// The allocator-owned status fields of one session, exactly as applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Generation of the spec this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase.
    pub phase: SessionPhase,
    /// Active while live, Completed once ended.
    pub persistence: PersistenceStatus,
    /// Position among the backend's pending sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// The worker holding (or about to hold) the slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<SessionWorker>,
    /// Where the client connects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SessionEndpoint>,
    /// When the session was (last) admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
    /// When the session ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// Why the session ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Only the `Admitted` condition.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Lifecycle {
    /// The allocator-owned fields of an observed status (what the allocator last applied).
    pub fn observed(status: Option<&VoiceSessionStatus>) -> Self {
        let Some(s) = status else {
            return Self::default();
        };
        Lifecycle {
            observed_generation: s.observed_generation,
            phase: s.phase,
            persistence: s.persistence,
            queue_position: s.queue_position,
            worker: s.worker.clone(),
            endpoint: s.endpoint.clone(),
            admitted_at: s.admitted_at.clone(),
            ended_at: s.ended_at.clone(),
            end_reason: s.end_reason.clone(),
            conditions: s
                .conditions
                .iter()
                .filter(|c| c.type_ == ADMITTED)
                .cloned()
                .collect(),
        }
    }

    /// Whether this status counts against the caps: it names a worker and has not ended.
    /// Write-ahead: a recorded worker counts before the worker confirmed the slot.
    pub fn holds_slot(&self) -> bool {
        self.worker.is_some() && !self.phase.is_finished()
    }

    /// The `Admitted` condition's reason, if any.
    pub fn admitted_reason(&self) -> Option<&str> {
        self.conditions.first().map(|c| c.reason.as_str())
    }

    /// When the `Admitted` condition last changed status.
    pub fn admitted_since(&self) -> Option<&Time> {
        self.conditions.first().map(|c| &c.last_transition_time)
    }

    /// Waiting for admission: no worker, the blocking reason and the queue position.
    pub fn pending(&self, reason: &str, message: &str, position: Option<i32>, now: Time) -> Self {
        let mut next = self.clone();
        next.phase = SessionPhase::Pending;
        next.persistence = PersistenceStatus::Active;
        next.queue_position = position;
        next.worker = None;
        next.endpoint = None;
        next.set_admitted(false, reason, message, now);
        next
    }

    /// Admitted: `worker` holds the slot (the join token is written beside this status).
    pub fn active(&self, worker: SessionWorker, endpoint: SessionEndpoint, now: Time) -> Self {
        let mut next = self.clone();
        let message = format!("admitted onto worker {}", worker.pod);
        next.worker = Some(worker);
        next.phase = SessionPhase::Active;
        next.persistence = PersistenceStatus::Active;
        next.queue_position = None;
        next.endpoint = Some(endpoint);
        next.admitted_at = Some(now.clone());
        next.set_admitted(true, reason::ADMITTED, &message, now);
        next
    }

    /// Ended (`Completed` or `Failed`): the slot is free and the state becomes ephemeral.
    /// The worker stays recorded for the record; the endpoint goes.
    pub fn ended(&self, phase: SessionPhase, why: &str, message: &str, now: Time) -> Self {
        let mut next = self.clone();
        next.phase = phase;
        next.persistence = PersistenceStatus::Completed;
        next.queue_position = None;
        next.endpoint = None;
        next.ended_at = Some(now.clone());
        next.end_reason = Some(why.to_owned());
        next.set_admitted(false, why, message, now);
        next
    }

    /// With `observedGeneration` set to the session's generation.
    pub fn observing(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        for c in &mut self.conditions {
            c.observed_generation = generation;
        }
        self
    }

    /// The server-side apply body for the status subresource.
    pub fn apply_body(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": VoiceSession::api_version(&()),
            "kind": VoiceSession::kind(&()),
            "status": self,
        })
    }

    fn set_admitted(&mut self, admitted: bool, why: &str, message: &str, now: Time) {
        let generation = self.observed_generation;
        set_condition(
            &mut self.conditions,
            ADMITTED,
            admitted,
            why,
            message,
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn worker() -> SessionWorker {
        SessionWorker {
            pod: "w-1".into(),
            pod_ip: Some("10.0.0.1".into()),
        }
    }

    fn endpoint() -> SessionEndpoint {
        SessionEndpoint {
            url: "http://10.0.0.1:8080/v1/sessions/ns/s/offer".into(),
            token_secret_name: "s-join-token".into(),
            ice_servers: vec![],
            room: None,
        }
    }

    #[test]
    fn admission_sets_phase_endpoint_and_a_true_condition() {
        let active = Lifecycle::default()
            .pending("BackendLimit", "full", Some(3), at(1))
            .active(worker(), endpoint(), at(11));
        assert_eq!(active.phase, SessionPhase::Active);
        assert_eq!(active.queue_position, None);
        assert!(active.holds_slot());
        assert_eq!(active.conditions.len(), 1);
        assert_eq!(active.conditions[0].status, "True");
        assert_eq!(active.conditions[0].last_transition_time, at(11));
        assert_eq!(active.admitted_at, Some(at(11)));
    }

    #[test]
    fn an_ended_session_holds_no_slot_and_is_ephemeral() {
        let ended = Lifecycle::default()
            .active(worker(), endpoint(), at(11))
            .ended(SessionPhase::Completed, "ClientHangup", "bye", at(20));
        assert!(!ended.holds_slot());
        assert_eq!(ended.persistence, PersistenceStatus::Completed);
        assert_eq!(ended.end_reason.as_deref(), Some("ClientHangup"));
        assert!(ended.endpoint.is_none());
        assert_eq!(ended.worker, Some(worker()), "kept for the record");
    }

    #[test]
    fn losing_the_worker_clears_it_and_keeps_the_loss_time() {
        let lost = Lifecycle::default()
            .active(worker(), endpoint(), at(11))
            .pending(reason::WORKER_LOST, "worker died", Some(1), at(30));
        assert!(!lost.holds_slot());
        assert_eq!(lost.admitted_reason(), Some(reason::WORKER_LOST));
        assert_eq!(lost.admitted_since(), Some(&at(30)));
        // Waiting longer does not move the loss time.
        let still = lost.pending(reason::WORKER_LOST, "still waiting", Some(1), at(40));
        assert_eq!(still.admitted_since(), Some(&at(30)));
    }

    #[test]
    fn the_observed_status_round_trips_through_the_apply_body() {
        let active = Lifecycle::default()
            .active(worker(), endpoint(), at(11))
            .observing(Some(4));
        let body = active.apply_body();
        let status: VoiceSessionStatus = serde_json::from_value(body["status"].clone()).unwrap();
        assert_eq!(Lifecycle::observed(Some(&status)), active);
        assert_eq!(body["kind"], "VoiceSession");
    }
}
