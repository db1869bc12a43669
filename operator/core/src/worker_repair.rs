//! The repair pass's decisions for one worker: which of its reservations no session explains
//! (orphans, to release) and which Active sessions it no longer holds (ended there while no
//! operator listened, to end here too).
//!
//! Pure: the allocator takes the snapshot from its ledger, lists the worker, and acts on the
//! findings; time is an argument.

use std::collections::{HashMap, HashSet};

use crate::ledger::SessionKey;

/// A session a worker says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `namespace/name`.
    pub session_id: String,
    /// The session's uid.
    pub uid: String,
    /// When the worker reserved it, in Unix seconds.
    pub reserved_at: Option<i64>,
}

/// What the ledger knew when the pass started.
#[derive(Debug, Default, Clone)]
pub struct Known {
    /// Every session the ledger holds or is admitting, by (`namespace/name`, uid), with the
    /// IP of the worker holding it (`None`: any worker may, e.g. an admission in flight).
    pub holders: HashMap<(String, String), Option<String>>,
    /// Per worker IP, the sessions Active on it (with the worker's pod name).
    pub active: HashMap<String, Vec<(SessionKey, String)>>,
}

/// What one worker's list showed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Reservations to release on the worker: (`namespace/name`, uid).
    pub orphans: Vec<(String, String)>,
    /// Sessions Active on this worker in the ledger that it no longer holds.
    pub ended_unseen: Vec<(SessionKey, String)>,
}

/// Compares what the worker at `ip` holds with what the ledger knew. A reservation younger
/// than `grace_seconds` is never an orphan: it may have been made after the snapshot.
pub fn compare(ip: &str, held: &[Held], known: &Known, now: i64, grace_seconds: i64) -> Findings {
    let holds: HashSet<(&str, &str)> = held
        .iter()
        .map(|s| (s.session_id.as_str(), s.uid.as_str()))
        .collect();
    let ended_unseen = known
        .active
        .get(ip)
        .into_iter()
        .flatten()
        .filter(|(key, _)| !holds.contains(&(key.session_id().as_str(), key.uid.as_str())))
        .cloned()
        .collect();
    let orphans = held
        .iter()
        .filter(|s| {
            let explained = match known.holders.get(&(s.session_id.clone(), s.uid.clone())) {
                Some(None) => true,
                Some(Some(holder)) => holder == ip,
                None => false,
            };
            let fresh = s.reserved_at.is_some_and(|at| now - at < grace_seconds);
            !explained && !fresh
        })
        .map(|s| (s.session_id.clone(), s.uid.clone()))
        .collect();
    Findings {
        orphans,
        ended_unseen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;
    const GRACE: i64 = 30;

    fn held(name: &str, uid: &str, age: i64) -> Held {
        Held {
            session_id: format!("team/{name}"),
            uid: uid.into(),
            reserved_at: Some(NOW - age),
        }
    }

    fn key(name: &str, uid: &str) -> SessionKey {
        SessionKey {
            namespace: "team".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn known(entries: &[(&str, &str, Option<&str>)]) -> Known {
        Known {
            holders: entries
                .iter()
                .map(|(n, u, ip)| {
                    (
                        (format!("team/{n}"), (*u).to_owned()),
                        ip.map(str::to_owned),
                    )
                })
                .collect(),
            active: HashMap::new(),
        }
    }

    #[test]
    fn a_slot_the_ledger_holds_on_this_worker_is_kept() {
        let f = compare(
            "10.0.0.1",
            &[held("a", "u1", 300)],
            &known(&[("a", "u1", Some("10.0.0.1"))]),
            NOW,
            GRACE,
        );
        assert!(f.orphans.is_empty());
    }

    #[test]
    fn an_old_slot_nobody_holds_is_an_orphan_and_a_fresh_one_gets_grace() {
        let f = compare(
            "10.0.0.1",
            &[held("gone", "u1", 300), held("new", "u2", 5)],
            &known(&[]),
            NOW,
            GRACE,
        );
        assert_eq!(f.orphans, vec![("team/gone".to_owned(), "u1".to_owned())]);
    }

    #[test]
    fn a_session_held_on_another_worker_is_an_orphan_here() {
        let f = compare(
            "10.0.0.1",
            &[held("a", "u1", 300)],
            &known(&[("a", "u1", Some("10.0.0.2"))]),
            NOW,
            GRACE,
        );
        assert_eq!(f.orphans, vec![("team/a".to_owned(), "u1".to_owned())]);
    }

    #[test]
    fn an_older_incarnation_of_a_name_is_an_orphan() {
        let f = compare(
            "10.0.0.1",
            &[held("a", "old", 300)],
            &known(&[("a", "new", Some("10.0.0.1"))]),
            NOW,
            GRACE,
        );
        assert_eq!(f.orphans, vec![("team/a".to_owned(), "old".to_owned())]);
    }

    #[test]
    fn an_admission_in_flight_explains_its_slot_on_any_worker() {
        let f = compare(
            "10.0.0.1",
            &[held("a", "u1", 300)],
            &known(&[("a", "u1", None)]),
            NOW,
            GRACE,
        );
        assert!(f.orphans.is_empty());
    }

    #[test]
    fn an_active_session_the_worker_no_longer_holds_ended_unseen() {
        let mut k = known(&[("a", "u1", Some("10.0.0.1")), ("b", "u2", Some("10.0.0.1"))]);
        k.active.insert(
            "10.0.0.1".into(),
            vec![
                (key("a", "u1"), "w-1".into()),
                (key("b", "u2"), "w-1".into()),
            ],
        );
        let f = compare("10.0.0.1", &[held("a", "u1", 300)], &k, NOW, GRACE);
        assert_eq!(f.ended_unseen, vec![(key("b", "u2"), "w-1".to_owned())]);
        assert!(f.orphans.is_empty());
        // Another worker's list says nothing about sessions on this one.
        assert!(
            compare("10.0.0.2", &[], &k, NOW, GRACE)
                .ended_unseen
                .is_empty()
        );
    }
}
