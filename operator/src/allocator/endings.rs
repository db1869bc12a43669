//! How sessions leave their slot: lost workers (re-admitted or failed), deleted backends,
//! timeouts and maximum durations, ends the workers report, and deletion after the TTL.

use super::*;
use crate::held_fate::{self, HeldFacts, HeldFate};

/// End reasons a worker reports when a session could not go on; the session ends `Failed`:
/// `BotLost` (the pipecat provider's bot went away) and `LiveKitUnavailable` (the worker could
/// not join the session's LiveKit room or lost the server: the provider's failure, so it is
/// not held against the worker, which only its health checks replace). Every other
/// worker-reported end is `Completed`, among them a room's `ParticipantLeft` (the user left,
/// as a hang-up) and `RoomEnded` (someone else closed the room).
const WORKER_FAILURE_REASONS: &[&str] = &["BotLost", session_livekit::LIVEKIT_UNAVAILABLE];

/// The phase a session ends in when its worker reports it ended for `reason`.
fn worker_end_phase(reason: &str) -> SessionPhase {
    if WORKER_FAILURE_REASONS.contains(&reason) {
        SessionPhase::Failed
    } else {
        SessionPhase::Completed
    }
}

impl Allocator {
    /// Sessions whose worker pod is gone or finished go back to Pending (WorkerLost) to be
    /// re-admitted elsewhere with their persisted context; sessions of a deleted backend end.
    pub(super) fn handle_lost_workers(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
        changed: &Changed,
        now: Timestamp,
    ) {
        // Every held session when the workers alive changed; else only those that changed:
        // an untouched session on an unchanged worker keeps its fate (`Stays`).
        let world = self.world_print(backends);
        let whole = self.lists.world_changed(world) || changed.all;
        let held: Vec<(&SessionKey, &Slot)> = if whole {
            self.ledger.iter().collect()
        } else {
            (changed.keys.iter())
                .filter_map(|k| Some((k, self.ledger.slot(k)?)))
                .collect()
        };
        // Decide on borrowed state and copy out only the sessions that move.
        let moving: Vec<(SessionKey, Slot, HeldFate)> = held
            .into_iter()
            .filter(|(k, _)| !self.in_flight.contains(*k))
            .filter_map(|(key, slot)| {
                let session = sessions.get(key)?;
                let listed = backends.get(&slot.backend);
                let mut facts = HeldFacts {
                    backend_exists: listed.is_some(),
                    worker_alive: listed.is_some_and(|(_, ips)| ips.contains_key(&slot.worker))
                        && self.worker_alive(&slot.backend.namespace, &slot.worker),
                    admitted: self.phase_of(key, session) != SessionPhase::Pending,
                    persistent: true,
                };
                // The provider lookup allocates: ask it only of the few sessions it decides.
                if !facts.worker_alive {
                    facts.persistent = self.persistent(&slot.provider);
                }
                let fate = held_fate::fate(facts);
                (fate != HeldFate::Stays).then(|| (key.clone(), slot.clone(), fate))
            })
            .collect();
        for (key, slot, fate) in moving {
            let Some(session) = sessions.get(&key) else {
                continue;
            };
            match fate {
                HeldFate::Stays => {}
                HeldFate::EndBackendDeleted => self.end(
                    session,
                    &key,
                    SessionPhase::Completed,
                    reason::BACKEND_DELETED,
                    "its VoiceBackend was deleted",
                    now,
                ),
                HeldFate::PlanAgain => {
                    tracing::info!(session = %key, worker = %slot.worker, "worker lost before the admission finished; planning again");
                    self.release_slot(&key);
                }
                HeldFate::Fail => {
                    let message = format!(
                        "worker {} was lost and provider {} does not offer capabilities.sessionPersistence",
                        slot.worker, slot.provider
                    );
                    self.ctx.metrics.sessions_lost.inc();
                    self.end(
                        session,
                        &key,
                        SessionPhase::Failed,
                        reason::WORKER_LOST,
                        &message,
                        now,
                    );
                }
                HeldFate::Readmit => {
                    self.release_slot(&key);
                    let lifecycle = self.lifecycle_of(&key, session);
                    let message = format!(
                        "worker {} was lost; waiting for another worker (the client reconnects with the same token)",
                        slot.worker
                    );
                    let next = lifecycle
                        .pending(reason::WORKER_LOST, &message, None, Time(now))
                        .observing(session.metadata.generation);
                    tracing::warn!(session = %key, worker = %slot.worker, "worker lost; re-admitting");
                    self.ctx.metrics.sessions_lost.inc();
                    self.warn(&key, reason::WORKER_LOST, &message);
                    self.write(&key, next);
                }
            }
        }
    }

    /// Whether the provider's sessions survive worker loss (FR-025): re-admitted with their
    /// context rather than failed.
    pub(super) fn persistent(&self, provider: &str) -> bool {
        self.providers
            .get(&reflector::ObjectRef::new(provider))
            .is_some_and(|p| p.spec.capabilities.session_persistence)
    }

    pub(super) fn worker_alive(&self, namespace: &str, pod: &str) -> bool {
        let reference = reflector::ObjectRef::new(pod).within(namespace);
        self.pods
            .get(&reference)
            .is_some_and(|p| worker_pod_facts::of(&p).alive())
    }

    /// Pending timeouts, maximum durations, idle timeouts and TTLs, of the sessions whose
    /// deadline has come (a session is scheduled again whenever it changes).
    pub(super) fn handle_clocks(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        now: Timestamp,
    ) {
        for key in self.lists.take_due(now) {
            // Rescheduled when its admission settles.
            if self.in_flight.contains(&key) {
                continue;
            }
            let Some(session) = sessions.get(&key) else {
                continue;
            };
            let clocks = self.clocks_of(&key, session);
            let expired = session_timeouts::check(&clocks, now);
            // What follows touches the session (rescheduled next round); a failed delete is
            // tried again a second later.
            let again = now
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(1))
                .ok();
            let key = &key;
            match expired {
                None => {
                    // Not run out yet (the facts moved since it was scheduled): not before a
                    // second from now, so a clock at the edge cannot spin.
                    let next = session_timeouts::deadline(&clocks)
                        .map(|at| again.map_or(at, |again| at.max(again)));
                    self.lists.set_deadline(key, next);
                }
                Some(Expired::Fail(why)) => {
                    let message = if why == reason::WORKER_LOST {
                        "its worker was lost and no other worker had room within spec.pendingTimeout"
                    } else {
                        "no capacity within spec.pendingTimeout"
                    };
                    self.end(session, key, SessionPhase::Failed, why, message, now);
                }
                Some(Expired::End(why)) => {
                    let message = if why == reason::MAX_DURATION {
                        "the session reached spec.maxDuration"
                    } else {
                        "no client activity within spec.idleTimeout"
                    };
                    self.end(session, key, SessionPhase::Completed, why, message, now);
                }
                Some(Expired::Delete) => {
                    self.delete_finished(session);
                    self.lists.set_deadline(key, again);
                }
            }
        }
    }

    /// The facts `key`'s clocks depend on, from the lifecycle the API took.
    pub(super) fn clocks_of(&self, key: &SessionKey, session: &VoiceSession) -> Clocks {
        let observed;
        let lifecycle = match self.lifecycle.get(key) {
            Some(l) => l,
            None => {
                observed = Lifecycle::observed(session.status.as_ref());
                &observed
            }
        };
        let lost_at = (lifecycle.admitted_reason() == Some(reason::WORKER_LOST))
            .then(|| timestamp(lifecycle.admitted_since()))
            .flatten();
        Clocks {
            phase: lifecycle.phase,
            holds_slot: self.ledger.slot(key).is_some(),
            created: timestamp(session.metadata.creation_timestamp.as_ref()),
            lost_worker_at: lost_at,
            admitted_at: timestamp(lifecycle.admitted_at.as_ref()),
            last_activity: timestamp(
                session
                    .status
                    .as_ref()
                    .and_then(|s| s.last_activity.as_ref()),
            ),
            ended_at: timestamp(lifecycle.ended_at.as_ref()),
            pending_timeout: session.spec.pending_timeout.map(Duration::from),
            max_duration: session.spec.max_duration.map(Duration::from),
            idle_timeout: session.spec.idle_timeout.map(Duration::from),
            ttl_after_finished: Duration::from_secs(
                u64::try_from(session.spec.ttl_seconds_after_finished).unwrap_or(0),
            ),
        }
    }

    /// Ends a session: frees its slot, tells its worker, and records the end.
    pub(super) fn end(
        &mut self,
        session: &VoiceSession,
        key: &SessionKey,
        phase: SessionPhase,
        why: &str,
        message: &str,
        now: Timestamp,
    ) {
        if let Some(slot) = self.release_slot(key) {
            self.release_on_worker(key, &slot, why);
        }
        let next = self
            .lifecycle_of(key, session)
            .ended(phase, why, message, Time(now))
            .observing(session.metadata.generation);
        self.ctx
            .metrics
            .sessions_ended
            .with_label_values(&[why])
            .inc();
        if phase == SessionPhase::Failed {
            self.warn(key, why, message);
        }
        self.write(key, next);
    }

    /// A worker reported that a session ended (client hang-up, drain deadline, ...). Only the
    /// worker holding the session in the ledger may end it; the live writer checked that
    /// against the published roster, and it is checked again here against the ledger itself,
    /// which may have moved since.
    pub(super) fn worker_ended(&mut self, end: Ended) {
        // By name through the index, then the uid: a walk of the ledger per end was O(held).
        let Some((key, slot)) = (end.session_id.split_once('/'))
            .and_then(|(ns, name)| self.sessions.get(ns, name))
            .map(|s| key_of(s))
            .filter(|k| k.is(&end.session_id, &end.uid))
            .and_then(|k| Some((k.clone(), self.ledger.slot(&k)?.clone())))
        else {
            return;
        };
        if slot.worker != end.worker.pod || key.namespace != end.worker.namespace {
            self.ctx
                .metrics
                .session_events_dropped
                .with_label_values(&[crate::event_source::DropReason::OtherWorker.as_str()])
                .inc();
            tracing::warn!(session = %end.session_id, worker = %end.worker.pod, holder = %slot.worker, "a worker that does not hold the session reported its end; ignored");
            return;
        }
        // The worker can end a session (say, its agent cannot reach LiveKit) before the
        // admission's status write is back: the end waits for the outcome, not the repair pass.
        if self.in_flight.contains(&key) {
            self.ended_in_flight.insert(key, end);
            return;
        }
        let Some(session) = self.sessions.get(&key.namespace, &key.name).cloned() else {
            return;
        };
        let message = if end.message.is_empty() {
            format!("the worker ended the session: {}", end.reason)
        } else {
            format!(
                "the worker ended the session ({}): {}",
                end.reason, end.message
            )
        };
        // A worker ends a session as a failure only when its pipeline cannot go on.
        self.end(
            &session,
            &key,
            worker_end_phase(&end.reason),
            &end.reason,
            &message,
            Timestamp::now(),
        );
    }

    /// Publishes a Warning Event about the session on a task: the loop never waits for the
    /// Events API (a lost Event is logged by the recorder, and the status says the same).
    pub(super) fn warn(&self, key: &SessionKey, why: &str, message: &str) {
        let ctx = self.ctx.clone();
        let (key, why, message) = (key.clone(), why.to_owned(), message.to_owned());
        tokio::spawn(async move {
            crate::events::publish_session_warning(
                &ctx.session_recorder,
                &key.namespace,
                &key.name,
                &key.uid,
                &why,
                &message,
            )
            .await;
        });
    }

    /// Deletes a session past its TTL, on a task (the next clock round asks again if the
    /// delete failed; the uid precondition keeps a new session of the same name safe).
    pub(super) fn delete_finished(&self, session: &VoiceSession) {
        let api: Api<VoiceSession> = Api::namespaced(
            self.ctx.client.clone(),
            &session.namespace().unwrap_or_default(),
        );
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: session.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let name = session.name_any();
        tokio::spawn(async move {
            match api.delete(&name, &params).await {
                Ok(_) => tracing::info!(session = %name, "finished session deleted after its TTL"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(session = %name, error = %e, "deleting a finished session failed")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_reported_end_fails_the_session_only_when_it_could_not_go_on() {
        for reason in ["BotLost", "LiveKitUnavailable"] {
            assert_eq!(worker_end_phase(reason), SessionPhase::Failed, "{reason}");
        }
        for reason in [
            "ParticipantLeft",
            "RoomEnded",
            "DrainDeadline",
            "AgentHangup",
            "",
        ] {
            assert_eq!(
                worker_end_phase(reason),
                SessionPhase::Completed,
                "{reason}"
            );
        }
        assert_eq!(
            [
                session_livekit::PARTICIPANT_LEFT,
                session_livekit::ROOM_ENDED,
                session_livekit::LIVEKIT_UNAVAILABLE
            ],
            ["ParticipantLeft", "RoomEnded", "LiveKitUnavailable"]
        );
    }
}
