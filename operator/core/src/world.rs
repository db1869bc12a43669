//! Which workers take sessions: the one rule the allocator (placing sessions) and the backend
//! controller (checking health, draining, scaling) share, so they never disagree on whether
//! a worker is ready or draining.

use voice_crds::WorkerPhase;

/// What the API says of one worker pod, in the core's terms (read at the edge from the Pod).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// `status.phase` is `Running`.
    pub running: bool,
    /// The pod's `Ready` condition is `True` (its readiness probe passes).
    pub ready_condition: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `status.phase` is `Succeeded` or `Failed`: the worker process is gone.
    pub finished: bool,
    /// The operator marked it to drain (`voicebackends.dev/draining: "true"`).
    pub draining_label: bool,
}

impl PodFacts {
    /// Whether the worker may still hold sessions (a finished pod holds none).
    pub fn alive(&self) -> bool {
        !self.finished
    }

    /// Whether the pod is on its way out: marked to drain, or being deleted.
    pub fn leaving(&self) -> bool {
        self.draining_label || self.deleting
    }
}

/// Whether the worker takes no new session because it drains: marked by the operator, being
/// deleted, or reported `Draining` by the backend's health round.
pub fn draining(pod: &PodFacts, health: Option<WorkerPhase>) -> bool {
    pod.leaving() || health == Some(WorkerPhase::Draining)
}

/// Whether the worker takes new sessions: running, passing its readiness probe, not leaving,
/// and found healthy by the backend's last health round (`status.workerStatuses[].phase`
/// `Ready`, which that round sets only for a worker that answered and was Ready).
pub fn takes_sessions(pod: &PodFacts, health: Option<WorkerPhase>) -> bool {
    pod.running
        && pod.ready_condition
        && !draining(pod, health)
        && health == Some(WorkerPhase::Ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving() -> PodFacts {
        PodFacts {
            running: true,
            ready_condition: true,
            ..PodFacts::default()
        }
    }

    #[test]
    fn a_running_ready_pod_found_healthy_takes_sessions() {
        assert!(takes_sessions(&serving(), Some(WorkerPhase::Ready)));
    }

    #[test]
    fn health_not_yet_checked_or_failing_takes_none() {
        for health in [
            None,
            Some(WorkerPhase::Starting),
            Some(WorkerPhase::Unhealthy),
        ] {
            assert!(!takes_sessions(&serving(), health), "{health:?}");
        }
    }

    #[test]
    fn a_pod_whose_probe_fails_now_takes_none_even_if_last_round_found_it_healthy() {
        let pod = PodFacts {
            ready_condition: false,
            ..serving()
        };
        assert!(!takes_sessions(&pod, Some(WorkerPhase::Ready)));
        assert!(!draining(&pod, Some(WorkerPhase::Ready)));
    }

    #[test]
    fn marked_deleted_or_reported_draining_is_draining_and_takes_none() {
        let marked = PodFacts {
            draining_label: true,
            ..serving()
        };
        let deleting = PodFacts {
            deleting: true,
            ..serving()
        };
        for (pod, health) in [
            (&marked, Some(WorkerPhase::Ready)),
            (&deleting, Some(WorkerPhase::Ready)),
            (&serving(), Some(WorkerPhase::Draining)),
        ] {
            assert!(draining(pod, health), "{pod:?} {health:?}");
            assert!(!takes_sessions(pod, health), "{pod:?} {health:?}");
        }
    }

    #[test]
    fn a_finished_pod_is_not_alive_and_a_pending_one_is() {
        let finished = PodFacts {
            finished: true,
            ..PodFacts::default()
        };
        assert!(!finished.alive());
        assert!(PodFacts::default().alive());
        assert!(!takes_sessions(
            &PodFacts::default(),
            Some(WorkerPhase::Ready)
        ));
    }
}
