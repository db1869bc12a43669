//! Who may speak for which session: a worker's session event is applied only when the worker
//! that sent it is the one the allocator's ledger has holding that session.
//!
//! A worker pod is a tenant's process (its image may be the backend's, its providers call out
//! to the internet); it must not be able to move another session's status, end it, or write
//! into another namespace. The allocator publishes a [`Roster`] built from its ledger; the
//! live-status writer and the allocator check every event against it with [`check`]. Pure
//! data, so the rule is tested without a cluster.

use std::collections::{BTreeMap, HashMap};

/// A worker pod, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerRef {
    /// Namespace of the pod (the backend's).
    pub namespace: String,
    /// Pod name.
    pub pod: String,
}

/// The workers the live-status writer follows and the sessions each may speak for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    /// Worker pod IP → pod: whom a subscription to that IP hears.
    pub workers: BTreeMap<String, WorkerRef>,
    /// Session (`namespace/name`, uid) → the worker that holds it in the ledger or, for a
    /// session that has ended, the worker its status still names (so that worker's last word,
    /// "disconnected", lands).
    pub holders: HashMap<(String, String), WorkerRef>,
}

/// Why an event was dropped; the label of `voice_session_events_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The event came over a subscription to an address that is no worker pod we run.
    UnknownWorker,
    /// No worker holds the named session (unknown, or the uid of another incarnation).
    NotHeld,
    /// Another worker (maybe in another namespace) holds the named session.
    OtherWorker,
    /// The holding worker named a participant the session does not list.
    UnknownParticipant,
}

impl DropReason {
    /// Stable CamelCase name, for the metric label and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownWorker => "UnknownWorker",
            DropReason::NotHeld => "NotHeld",
            DropReason::OtherWorker => "OtherWorker",
            DropReason::UnknownParticipant => "UnknownParticipant",
        }
    }
}

impl Roster {
    /// The pod behind `ip`, if it is one of our workers.
    pub fn worker(&self, ip: &str) -> Option<&WorkerRef> {
        self.workers.get(ip)
    }
}

/// Whether the worker at `source_ip` may report on session `session_id` (`namespace/name`)
/// with `uid`: it must be a known worker pod, in the session's namespace, and the one holding
/// the session. Returns the sending worker when it may.
pub fn check<'r>(
    roster: &'r Roster,
    source_ip: &str,
    session_id: &str,
    uid: &str,
) -> Result<&'r WorkerRef, DropReason> {
    let source = roster.worker(source_ip).ok_or(DropReason::UnknownWorker)?;
    let holder = roster
        .holders
        .get(&(session_id.to_owned(), uid.to_owned()))
        .ok_or(DropReason::NotHeld)?;
    if holder != source {
        return Err(DropReason::OtherWorker);
    }
    // The holder is keyed by the session's own namespace, so this only fails for a roster
    // built wrongly; checked anyway because it is the boundary between tenants.
    if session_id.split_once('/').map(|(ns, _)| ns) != Some(source.namespace.as_str()) {
        return Err(DropReason::OtherWorker);
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(ns: &str, pod: &str) -> WorkerRef {
        WorkerRef {
            namespace: ns.into(),
            pod: pod.into(),
        }
    }

    fn roster() -> Roster {
        Roster {
            workers: BTreeMap::from([
                ("10.0.0.1".into(), worker("team-a", "w-1")),
                ("10.0.0.2".into(), worker("team-a", "w-2")),
                ("10.0.0.3".into(), worker("team-b", "w-1")),
            ]),
            holders: HashMap::from([
                (
                    ("team-a/call-1".into(), "u-1".into()),
                    worker("team-a", "w-1"),
                ),
                (
                    ("team-b/call-9".into(), "u-9".into()),
                    worker("team-b", "w-1"),
                ),
            ]),
        }
    }

    #[test]
    fn the_holding_worker_may_speak_for_its_session() {
        assert_eq!(
            check(&roster(), "10.0.0.1", "team-a/call-1", "u-1"),
            Ok(&worker("team-a", "w-1"))
        );
    }

    #[test]
    fn another_worker_of_the_same_backend_is_refused() {
        assert_eq!(
            check(&roster(), "10.0.0.2", "team-a/call-1", "u-1"),
            Err(DropReason::OtherWorker)
        );
    }

    #[test]
    fn a_worker_in_another_namespace_with_the_same_pod_name_is_refused() {
        assert_eq!(
            check(&roster(), "10.0.0.3", "team-a/call-1", "u-1"),
            Err(DropReason::OtherWorker)
        );
        assert_eq!(
            check(&roster(), "10.0.0.1", "team-b/call-9", "u-9"),
            Err(DropReason::OtherWorker)
        );
    }

    #[test]
    fn unknown_sessions_uids_and_addresses_are_refused() {
        let r = roster();
        assert_eq!(
            check(&r, "10.0.0.1", "team-a/call-2", "u-2"),
            Err(DropReason::NotHeld)
        );
        // The same name with another uid is another session (deleted and re-created).
        assert_eq!(
            check(&r, "10.0.0.1", "team-a/call-1", "u-other"),
            Err(DropReason::NotHeld)
        );
        assert_eq!(
            check(&r, "10.9.9.9", "team-a/call-1", "u-1"),
            Err(DropReason::UnknownWorker)
        );
    }

    #[test]
    fn a_roster_that_files_a_session_under_a_foreign_worker_still_refuses() {
        let mut r = roster();
        r.holders.insert(
            ("team-a/call-3".into(), "u-3".into()),
            worker("team-b", "w-1"),
        );
        assert_eq!(
            check(&r, "10.0.0.3", "team-a/call-3", "u-3"),
            Err(DropReason::OtherWorker)
        );
    }
}
