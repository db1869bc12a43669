//! What becomes of a session that holds a slot when its backend or its worker goes away.

/// What the allocator knows of one held session this round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldFacts {
    /// The session's VoiceBackend still exists.
    pub backend_exists: bool,
    /// The worker holding the slot is alive (not finished) and listed with an address.
    pub worker_alive: bool,
    /// The session is past its admission (`Active`); false while the admission is unfinished.
    pub admitted: bool,
    /// The provider offers `capabilities.sessionPersistence` (FR-025).
    pub persistent: bool,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldFate {
    /// Nothing to do.
    Stays,
    /// The backend was deleted: the session ends (`Completed`, `BackendDeleted`).
    EndBackendDeleted,
    /// The worker went before the admission finished: nobody was connected, so the slot is
    /// released and the session planned again, with no end and no warning.
    PlanAgain,
    /// The worker went and the provider keeps no context: the session fails (`WorkerLost`).
    Fail,
    /// The worker went and the provider keeps context: the slot is released and the session
    /// waits (`Pending`, `WorkerLost`) to be re-admitted elsewhere, its client reconnecting
    /// with the same token.
    Readmit,
}

/// Decides the fate of one held session.
pub fn fate(f: HeldFacts) -> HeldFate {
    if !f.backend_exists {
        HeldFate::EndBackendDeleted
    } else if f.worker_alive {
        HeldFate::Stays
    } else if !f.admitted {
        HeldFate::PlanAgain
    } else if f.persistent {
        HeldFate::Readmit
    } else {
        HeldFate::Fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVING: HeldFacts = HeldFacts {
        backend_exists: true,
        worker_alive: true,
        admitted: true,
        persistent: true,
    };

    #[test]
    fn a_session_on_a_live_worker_of_a_live_backend_stays() {
        assert_eq!(fate(SERVING), HeldFate::Stays);
        let unfinished = HeldFacts {
            admitted: false,
            ..SERVING
        };
        assert_eq!(fate(unfinished), HeldFate::Stays);
    }

    #[test]
    fn a_deleted_backend_ends_its_sessions_whatever_their_worker() {
        for worker_alive in [true, false] {
            let f = HeldFacts {
                backend_exists: false,
                worker_alive,
                ..SERVING
            };
            assert_eq!(fate(f), HeldFate::EndBackendDeleted);
        }
    }

    #[test]
    fn a_lost_worker_readmits_with_persistence_and_fails_without() {
        let lost = HeldFacts {
            worker_alive: false,
            ..SERVING
        };
        assert_eq!(fate(lost), HeldFate::Readmit);
        let no_context = HeldFacts {
            persistent: false,
            ..lost
        };
        assert_eq!(fate(no_context), HeldFate::Fail);
    }

    #[test]
    fn a_worker_lost_before_the_admission_finished_plans_it_again_without_failing_it() {
        for persistent in [true, false] {
            let f = HeldFacts {
                worker_alive: false,
                admitted: false,
                persistent,
                ..SERVING
            };
            assert_eq!(fate(f), HeldFate::PlanAgain);
        }
    }
}
