//! Live metadata: an edit of `VoiceSession.spec.metadata` while the session holds a slot is
//! handed to its worker (`UpdateSession`), whose agent sees it from its next turn.
//!
//! This decides *when* to send; the allocator's round asks it for the held sessions that
//! changed and those with a retry pending ([`MetadataSync::retrying`]), and sends on a task. A session's metadata is remembered by fingerprint once it is on its way
//! (the reservation carries it, or an update was sent); a failed update is forgotten so the
//! next round sends it again. After an operator restart nothing is remembered, so every
//! held session is sent its metadata once: updates are idempotent on the worker.
//!
//! After a start the round asks for every held session, so the common answer ("nothing changed") must not
//! cost a JSON serialization per session per round: a session whose `metadata.generation` is
//! the one last handed over is skipped at once (an edit of `spec.metadata` is a spec change,
//! which the API server counts in `generation`).

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ledger::SessionKey;

/// How long after a failed update it is sent again: an unreachable worker with many
/// sessions must not get one call per session per round.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Per held session: the fingerprint (and the session generation it came from) last handed
/// over, or when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handed {
    Sent { print: u64, generation: Option<i64> },
    RetryAt(Instant),
}

/// What was last handed to each held session's worker.
#[derive(Clone, Debug, Default)]
pub struct MetadataSync {
    sent: Arc<Mutex<Sent>>,
}

#[derive(Debug, Default)]
struct Sent {
    handed: HashMap<SessionKey, Handed>,
    /// The keys whose `handed` is a retry, so they are found without a walk of every session.
    retrying: HashSet<SessionKey>,
}

impl Sent {
    fn insert(&mut self, key: SessionKey, handed: Handed) -> Option<Handed> {
        if matches!(handed, Handed::RetryAt(_)) {
            self.retrying.insert(key.clone());
        } else {
            self.retrying.remove(&key);
        }
        self.handed.insert(key, handed)
    }

    fn get(&self, key: &SessionKey) -> Option<&Handed> {
        self.handed.get(key)
    }

    fn remove(&mut self, key: &SessionKey) -> Option<Handed> {
        self.retrying.remove(key);
        self.handed.remove(key)
    }
}

/// `spec.metadata` as the worker gets it: a JSON object (`{}` when unset).
pub fn metadata_json(metadata: Option<&serde_json::Value>) -> String {
    match metadata {
        Some(value @ serde_json::Value::Object(_)) => value.to_string(),
        _ => "{}".to_owned(),
    }
}

fn fingerprint(json: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    json.hash(&mut hasher);
    hasher.finish()
}

impl MetadataSync {
    fn with<T>(&self, f: impl FnOnce(&mut Sent) -> T) -> T {
        // Each use is one map operation: a poisoned lock is still whole.
        f(&mut self.sent.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The reservation of `key` carries `metadata`: nothing to send for it.
    pub fn reserved(
        &self,
        key: &SessionKey,
        generation: Option<i64>,
        metadata: Option<&serde_json::Value>,
    ) {
        let print = fingerprint(&metadata_json(metadata));
        self.with(|sent| sent.insert(key.clone(), Handed::Sent { print, generation }));
    }

    /// The JSON to send to `key`'s worker at `now` when its metadata (from the session at
    /// `generation`) is not what was last handed over, and no retry is pending; it is then
    /// remembered as sent.
    pub fn due(
        &self,
        key: &SessionKey,
        generation: Option<i64>,
        metadata: Option<&serde_json::Value>,
        now: Instant,
    ) -> Option<String> {
        let unchanged = |handed: Option<&Handed>| {
            matches!(handed, Some(Handed::Sent { generation: g, .. }) if generation.is_some() && *g == generation)
                || matches!(handed, Some(Handed::RetryAt(at)) if now < *at)
        };
        if self.with(|sent| unchanged(sent.get(key))) {
            return None;
        }
        let json = metadata_json(metadata);
        let print = fingerprint(&json);
        self.with(|sent| {
            let before = sent.insert(key.clone(), Handed::Sent { print, generation });
            match before {
                Some(Handed::Sent { print: p, .. }) if p == print => None,
                Some(Handed::RetryAt(at)) if now < at => {
                    sent.insert(key.clone(), Handed::RetryAt(at));
                    None
                }
                _ => Some(json),
            }
        })
    }

    /// Sending to `key` failed at `now` (or its worker did not hold it yet): try again
    /// [`RETRY_AFTER`] later.
    pub fn failed(&self, key: &SessionKey, now: Instant) {
        self.with(|sent| sent.insert(key.clone(), Handed::RetryAt(now + RETRY_AFTER)));
    }

    /// Forgets `key` (its session is gone).
    pub fn forget(&self, key: &SessionKey) {
        self.with(|sent| sent.remove(key));
    }

    /// Forgets every session `keep` refuses (no longer held).
    pub fn retain(&self, keep: impl Fn(&SessionKey) -> bool) {
        self.with(|sent| {
            sent.handed.retain(|k, _| keep(k));
            sent.retrying.retain(|k| keep(k));
        });
    }

    /// The sessions with a failed update to send again (when [`MetadataSync::due`] says so).
    pub fn retrying(&self) -> Vec<SessionKey> {
        self.with(|sent| sent.retrying.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::session_index::test_key as key;

    impl MetadataSync {
        /// `due` for a session without a generation: always compared by content.
        fn due_any(
            &self,
            key: &SessionKey,
            metadata: Option<&serde_json::Value>,
            now: Instant,
        ) -> Option<String> {
            self.due(key, None, metadata, now)
        }
    }

    #[test]
    fn a_session_at_the_generation_last_handed_over_is_skipped_without_reading_its_metadata() {
        let t0 = Instant::now();
        let sync = MetadataSync::default();
        let gold = json!({"plan": "gold"});
        sync.reserved(&key("a"), Some(1), Some(&gold));
        // Same generation: not even compared (the metadata cannot have changed).
        assert_eq!(
            sync.due(&key("a"), Some(1), Some(&json!({"x": 1})), t0),
            None
        );
        // An edit bumps the generation: compared, and sent.
        let platinum = json!({"plan": "platinum"});
        assert!(sync.due(&key("a"), Some(2), Some(&platinum), t0).is_some());
        assert_eq!(sync.due(&key("a"), Some(2), Some(&platinum), t0), None);
        // A new generation with the same metadata (another spec field changed): not sent.
        assert_eq!(sync.due(&key("a"), Some(3), Some(&platinum), t0), None);
        // A failed send is retried at the same generation once its delay has passed.
        sync.failed(&key("a"), t0);
        assert_eq!(sync.due(&key("a"), Some(3), Some(&platinum), t0), None);
        assert!(
            sync.due(&key("a"), Some(3), Some(&platinum), t0 + RETRY_AFTER)
                .is_some()
        );
    }

    #[test]
    fn an_edit_is_sent_once_a_failure_is_retried_and_a_restart_sends_again() {
        let t0 = Instant::now();
        let sync = MetadataSync::default();
        let gold = json!({"plan": "gold"});
        sync.reserved(&key("a"), None, Some(&gold));
        assert_eq!(
            sync.due_any(&key("a"), Some(&gold), t0),
            None,
            "the reservation carried it"
        );
        let platinum = json!({"plan": "platinum"});
        let sent = sync.due_any(&key("a"), Some(&platinum), t0);
        assert_eq!(sent.as_deref(), Some(r#"{"plan":"platinum"}"#));
        assert_eq!(
            sync.due_any(&key("a"), Some(&platinum), t0),
            None,
            "sent once"
        );
        assert_eq!(sync.retrying(), Vec::<SessionKey>::new());
        sync.failed(&key("a"), t0);
        assert_eq!(sync.retrying(), vec![key("a")], "found without a walk");
        assert_eq!(
            sync.due_any(&key("a"), Some(&platinum), t0),
            None,
            "not at once"
        );
        assert_eq!(sync.retrying(), vec![key("a")], "still to retry");
        let later = t0 + RETRY_AFTER;
        assert!(
            sync.due_any(&key("a"), Some(&platinum), later).is_some(),
            "retried"
        );
        assert_eq!(sync.retrying(), Vec::<SessionKey>::new(), "sent again");
        assert_eq!(
            sync.due_any(&key("a"), None, later),
            Some("{}".to_owned()),
            "cleared"
        );
        assert_eq!(
            sync.due_any(&key("a"), Some(&json!("not an object")), later),
            None,
            "anything but an object is no metadata, as before"
        );
        // Unknown to this operator (it restarted): sent once.
        assert!(sync.due_any(&key("b"), Some(&gold), t0).is_some());
        sync.retain(|k| k.name == "b");
        let again = sync.due_any(&key("a"), Some(&platinum), t0);
        assert!(again.is_some(), "forgotten when released");
    }
}
