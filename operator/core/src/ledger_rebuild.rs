//! A starting leader's ledger, from the two durable records of a slot: the sessions' statuses
//! (a session Active on a worker) and the workers' own lists (a reservation made by an
//! earlier leader that stopped before writing `Active`).
//!
//! Pure: the allocator gathers what it read (see [`crate::leader_takeover`] for why the
//! workers are listed before the sessions) and applies the result.

use crate::ledger::{BackendKey, Ledger, SessionKey, Slot};

/// One slot a worker said it holds, with where that worker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The worker pod's namespace (the session's too).
    pub namespace: String,
    /// The worker pod.
    pub pod: String,
    /// The pod's IP.
    pub pod_ip: String,
    /// The VoiceBackend the pod serves.
    pub backend: String,
    /// `namespace/name` of the session.
    pub session_id: String,
    /// The session's uid.
    pub uid: String,
}

/// What the API says of one session, as far as its slot goes.
#[derive(Debug, Clone)]
pub struct SessionAtStart {
    /// The session.
    pub key: SessionKey,
    /// Its backend.
    pub backend: BackendKey,
    /// Its backend's provider, if the backend exists.
    pub provider: Option<String>,
    /// Whether it is still Pending (not Active, not ended).
    pub pending: bool,
    /// The worker its status names while it holds a slot: Active on it, or a write-ahead
    /// intent of an earlier operator version.
    pub holder: Option<String>,
}

/// The rebuilt ledger, and the sessions whose admission the new leader must finish.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Every slot held.
    pub ledger: Ledger,
    /// Pending sessions holding a slot: their admission is to be finished on that worker.
    pub finishing: Vec<SessionKey>,
}

/// Holds the slot of every session whose status names a worker, then the slot a worker
/// listed for a session still Pending (replacing a stale intent's worker: the worker's own
/// record is the newer). A listed slot of an unknown, ended or recreated session, or of a
/// session of another backend than the worker's, is held by nobody: the repair pass releases
/// it on the worker.
pub fn rebuild(sessions: &[SessionAtStart], reservations: &[Reservation]) -> Rebuilt {
    let mut rebuilt = Rebuilt::default();
    let slot = |s: &SessionAtStart, worker: &str| Slot {
        provider: s.provider.clone().unwrap_or_default(),
        backend: s.backend.clone(),
        worker: worker.to_owned(),
    };
    let mut by_key = std::collections::HashMap::new();
    for s in sessions {
        if let Some(worker) = &s.holder {
            rebuilt.ledger.hold(s.key.clone(), slot(s, worker));
            if s.pending {
                rebuilt.finishing.push(s.key.clone());
            }
        }
        by_key.insert(&s.key, s);
    }
    for r in reservations {
        let Some((namespace, name)) = r.session_id.split_once('/') else {
            continue;
        };
        let key = SessionKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: r.uid.clone(),
        };
        let Some(s) = by_key.get(&key) else {
            continue;
        };
        // A worker serves one backend in its own namespace; anything else is not ours.
        let ours = s.backend.namespace == r.namespace && s.backend.name == r.backend;
        if !s.pending
            || !ours
            || rebuilt.ledger.slot(&key).map(|h| h.worker.as_str()) == Some(&r.pod)
        {
            continue;
        }
        rebuilt.ledger.hold(key.clone(), slot(s, &r.pod));
        if !rebuilt.finishing.contains(&key) {
            rebuilt.finishing.push(key);
        }
    }
    rebuilt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, uid: &str) -> SessionKey {
        SessionKey {
            namespace: "team".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn session(name: &str, pending: bool, holder: Option<&str>) -> SessionAtStart {
        SessionAtStart {
            key: key(name, &format!("uid-{name}")),
            backend: BackendKey {
                namespace: "team".into(),
                name: "assistant".into(),
            },
            provider: Some("voice".into()),
            pending,
            holder: holder.map(str::to_owned),
        }
    }

    fn listed(name: &str, uid: &str, pod: &str) -> Reservation {
        Reservation {
            namespace: "team".into(),
            pod: pod.into(),
            pod_ip: "10.0.0.1".into(),
            backend: "assistant".into(),
            session_id: format!("team/{name}"),
            uid: uid.into(),
        }
    }

    fn worker_of(r: &Rebuilt, name: &str) -> Option<String> {
        r.ledger
            .slot(&key(name, &format!("uid-{name}")))
            .map(|s| s.worker.clone())
    }

    #[test]
    fn an_active_session_holds_its_worker_and_needs_no_finishing() {
        let r = rebuild(&[session("a", false, Some("w-1"))], &[]);
        assert_eq!(worker_of(&r, "a").as_deref(), Some("w-1"));
        assert_eq!(r.ledger.provider_count("voice"), 1);
        assert!(r.finishing.is_empty());
    }

    #[test]
    fn a_crash_after_the_reservation_is_held_and_finished_from_the_workers_list() {
        let r = rebuild(&[session("a", true, None)], &[listed("a", "uid-a", "w-2")]);
        assert_eq!(worker_of(&r, "a").as_deref(), Some("w-2"));
        assert_eq!(r.finishing, vec![key("a", "uid-a")]);
    }

    #[test]
    fn a_crash_before_the_reservation_leaves_a_plain_pending_session() {
        let r = rebuild(&[session("a", true, None)], &[]);
        assert!(r.ledger.is_empty() && r.finishing.is_empty());
    }

    #[test]
    fn an_intent_written_by_an_earlier_version_is_held_and_finished() {
        let r = rebuild(&[session("a", true, Some("w-1"))], &[]);
        assert_eq!(worker_of(&r, "a").as_deref(), Some("w-1"));
        assert_eq!(r.finishing, vec![key("a", "uid-a")]);
    }

    #[test]
    fn the_workers_record_beats_a_stale_intent_and_is_counted_once() {
        let r = rebuild(
            &[session("a", true, Some("w-1"))],
            &[listed("a", "uid-a", "w-2")],
        );
        assert_eq!(worker_of(&r, "a").as_deref(), Some("w-2"));
        assert_eq!(r.ledger.len(), 1);
        assert_eq!(r.finishing, vec![key("a", "uid-a")]);
    }

    #[test]
    fn an_active_session_listed_by_its_worker_is_counted_once() {
        let r = rebuild(
            &[session("a", false, Some("w-1"))],
            &[listed("a", "uid-a", "w-1")],
        );
        assert_eq!(r.ledger.len(), 1);
        assert!(r.finishing.is_empty());
    }

    #[test]
    fn slots_no_pending_session_explains_are_left_to_the_repair_pass() {
        let mut other_backend = listed("a", "uid-a", "w-9");
        other_backend.backend = "other".into();
        let mut other_namespace = listed("a", "uid-a", "w-8");
        other_namespace.namespace = "elsewhere".into();
        let mut unnamed = listed("x", "uid-x", "w-1");
        unnamed.session_id = "no-slash".into();
        let r = rebuild(
            &[session("a", true, None), session("done", false, None)],
            &[
                listed("gone", "uid-gone", "w-1"),
                listed("a", "uid-of-an-older-a", "w-1"),
                listed("done", "uid-done", "w-1"),
                unnamed,
                other_backend,
                other_namespace,
            ],
        );
        assert!(r.ledger.is_empty(), "{:?}", r.ledger);
        assert!(r.finishing.is_empty());
    }
}
