//! The allocator's sessions, kept from the watch's events rather than copied out of a
//! reflector store every round: a round reads this map as it stands, and deletions arrive as
//! events ([`SessionIndex::take_removed`]) instead of being found by comparing every held
//! session with the store.
//!
//! Only sessions the allocator may act on are kept: one with a deletion timestamp is gone
//! for it (its slot is released at once, as for a deleted one).

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::watcher::Event;
use voice_crds::VoiceSession;

use crate::ledger::SessionKey;

/// The live sessions by key, and by namespace and name.
#[derive(Debug, Default)]
pub struct SessionIndex {
    live: HashMap<SessionKey, Arc<VoiceSession>>,
    by_name: HashMap<String, HashMap<String, SessionKey>>,
    /// Keys that left `live` since the last [`SessionIndex::take_removed`].
    removed: Vec<SessionKey>,
    /// A (re)list in progress: what it has delivered so far.
    relist: Option<HashMap<SessionKey, Arc<VoiceSession>>>,
    listed: bool,
}

/// A session's key: namespace, name and uid.
pub fn key_of(s: &VoiceSession) -> SessionKey {
    SessionKey {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
        uid: s.uid().unwrap_or_default(),
    }
}

/// A session key for unit tests: `name` in namespace `ns`, uid `uid-<name>`.
#[cfg(test)]
pub fn test_key(name: &str) -> SessionKey {
    SessionKey {
        namespace: "ns".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

impl SessionIndex {
    /// Takes one watch event.
    pub fn apply(&mut self, event: Event<VoiceSession>) {
        match event {
            Event::Init => self.relist = Some(HashMap::new()),
            Event::InitApply(s) => {
                if s.metadata.deletion_timestamp.is_none() {
                    self.relist
                        .get_or_insert_with(HashMap::new)
                        .insert(key_of(&s), Arc::new(s));
                }
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                self.removed.extend(
                    self.live
                        .keys()
                        .filter(|k| !fresh.contains_key(*k))
                        .cloned(),
                );
                self.by_name.clear();
                for key in fresh.keys() {
                    self.name_insert(key.clone());
                }
                self.live = fresh;
                self.listed = true;
            }
            Event::Apply(s) => {
                let key = key_of(&s);
                if s.metadata.deletion_timestamp.is_some() {
                    self.remove(&key);
                    return;
                }
                if let Some(old) = self.name_insert(key.clone())
                    && old != key
                {
                    // Deleted and created again under the same name: the old one is gone.
                    self.live.remove(&old);
                    self.removed.push(old);
                }
                self.live.insert(key, Arc::new(s));
            }
            Event::Delete(s) => self.remove(&key_of(&s)),
        }
    }

    fn name_insert(&mut self, key: SessionKey) -> Option<SessionKey> {
        self.by_name
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone(), key)
    }

    fn remove(&mut self, key: &SessionKey) {
        if self.live.remove(key).is_none() {
            return;
        }
        if let Some(names) = self.by_name.get_mut(&key.namespace)
            && names.get(&key.name) == Some(key)
        {
            names.remove(&key.name);
            if names.is_empty() {
                self.by_name.remove(&key.namespace);
            }
        }
        self.removed.push(key.clone());
    }

    /// Whether the first list has been delivered whole.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Every live session.
    pub fn sessions(&self) -> &HashMap<SessionKey, Arc<VoiceSession>> {
        &self.live
    }

    /// Whether `key` is live.
    pub fn contains(&self, key: &SessionKey) -> bool {
        self.live.contains_key(key)
    }

    /// The live session named `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<VoiceSession>> {
        let key = self.by_name.get(namespace)?.get(name)?;
        self.live.get(key)
    }

    /// The sessions that left since the last call (deleted, being deleted, or replaced by a
    /// new one of the same name).
    pub fn take_removed(&mut self) -> Vec<SessionKey> {
        std::mem::take(&mut self.removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn session(name: &str, uid: &str) -> VoiceSession {
        let mut s = VoiceSession::new(
            name,
            serde_json::from_value(serde_json::json!({
                "backendRef": {"name": "b"}, "transport": "websocket", "user": {"userID": "u"}
            }))
            .expect("a spec"),
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(uid.into());
        s
    }

    fn listed(items: Vec<VoiceSession>) -> SessionIndex {
        let mut index = SessionIndex::default();
        index.apply(Event::Init);
        for s in items {
            index.apply(Event::InitApply(s));
        }
        index.apply(Event::InitDone);
        index
    }

    #[test]
    fn the_first_list_fills_the_index_and_removes_nothing() {
        let mut index = SessionIndex::default();
        assert!(!index.listed());
        index.apply(Event::Init);
        index.apply(Event::InitApply(session("a", "1")));
        assert!(!index.listed(), "not before the list is whole");
        index.apply(Event::InitDone);
        assert!(index.listed());
        assert!(index.get("ns", "a").is_some());
        assert!(index.take_removed().is_empty());
    }

    #[test]
    fn a_delete_and_a_deletion_timestamp_both_remove_once() {
        let mut index = listed(vec![session("a", "1"), session("b", "2")]);
        index.apply(Event::Delete(session("a", "1")));
        let mut deleting = session("b", "2");
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        index.apply(Event::Apply(deleting.clone()));
        index.apply(Event::Apply(deleting));
        let removed: Vec<String> = index.take_removed().into_iter().map(|k| k.name).collect();
        assert_eq!(removed, ["a", "b"]);
        assert!(index.sessions().is_empty());
        assert!(index.get("ns", "a").is_none());
        assert!(index.take_removed().is_empty(), "taken once");
    }

    #[test]
    fn a_session_created_again_under_its_name_replaces_the_old_one() {
        let mut index = listed(vec![session("a", "1")]);
        index.apply(Event::Apply(session("a", "2")));
        let removed = index.take_removed();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].uid, "1");
        assert_eq!(index.get("ns", "a").and_then(|s| s.uid()), Some("2".into()));
        assert_eq!(index.sessions().len(), 1);
    }

    #[test]
    fn a_relist_removes_what_it_no_longer_lists_and_keeps_the_rest() {
        let mut index = listed(vec![session("a", "1"), session("b", "2")]);
        index.apply(Event::Init);
        index.apply(Event::InitApply(session("b", "2")));
        index.apply(Event::InitApply(session("c", "3")));
        assert!(
            index.get("ns", "a").is_some(),
            "the old view stands until the relist is whole"
        );
        index.apply(Event::InitDone);
        let removed: Vec<String> = index.take_removed().into_iter().map(|k| k.name).collect();
        assert_eq!(removed, ["a"]);
        assert!(index.get("ns", "b").is_some() && index.get("ns", "c").is_some());
        assert!(index.get("ns", "a").is_none());
    }
}
