//! The admission ledger: which session holds a slot on which worker, counted per provider,
//! backend and worker.
//!
//! Pure data, no Kubernetes client and no clock: the allocator rebuilds it on start from the
//! sessions' statuses and the workers' reservations ([`crate::ledger_rebuild`]) and applies
//! its own decisions to it, so the caps can be checked and property-tested without a cluster.

use std::collections::{BTreeMap, HashMap};

/// A session, by namespace, name and uid (a re-created session with the same name is another one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// Namespace of the VoiceSession.
    pub namespace: String,
    /// Name of the VoiceSession.
    pub name: String,
    /// metadata.uid of the VoiceSession.
    pub uid: String,
}

impl SessionKey {
    /// The session id workers know it by: `namespace/name`.
    pub fn session_id(&self) -> String {
        self.to_string()
    }

    /// Whether a worker's (`session_id`, `uid`) pair names this session.
    pub fn is(&self, session_id: &str, uid: &str) -> bool {
        self.uid == uid
            && session_id
                .split_once('/')
                .is_some_and(|(ns, name)| ns == self.namespace && name == self.name)
    }
}

/// `namespace/name`, as workers, logs and Events name a session.
impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A backend, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Namespace of the VoiceBackend.
    pub namespace: String,
    /// Name of the VoiceBackend.
    pub name: String,
}

/// Where one session holds its slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// VoiceProvider name.
    pub provider: String,
    /// The session's backend.
    pub backend: BackendKey,
    /// Worker pod name (unique within the backend's namespace).
    pub worker: String,
}

/// Sessions holding slots, with counts kept in step.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    slots: HashMap<SessionKey, Slot>,
    per_provider: HashMap<String, u32>,
    per_namespace: HashMap<String, u32>,
    per_backend: HashMap<BackendKey, u32>,
    per_worker: HashMap<(BackendKey, String), u32>,
    /// Sessions held or released since [`Ledger::take_changed`] last ran.
    changed: Vec<SessionKey>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `session` holds `slot`. Idempotent for the same slot; a session that held
    /// another slot moves (its old slot is freed first), so a session never counts twice.
    pub fn hold(&mut self, session: SessionKey, slot: Slot) {
        if self.slots.get(&session) == Some(&slot) {
            return;
        }
        self.release(&session);
        *self.per_provider.entry(slot.provider.clone()).or_default() += 1;
        *self
            .per_namespace
            .entry(slot.backend.namespace.clone())
            .or_default() += 1;
        *self.per_backend.entry(slot.backend.clone()).or_default() += 1;
        *self
            .per_worker
            .entry((slot.backend.clone(), slot.worker.clone()))
            .or_default() += 1;
        self.changed.push(session.clone());
        self.slots.insert(session, slot);
    }

    /// Frees the slot `session` holds, if any, and returns it. Idempotent.
    pub fn release(&mut self, session: &SessionKey) -> Option<Slot> {
        let slot = self.slots.remove(session)?;
        self.changed.push(session.clone());
        decrement(&mut self.per_provider, &slot.provider);
        decrement(&mut self.per_namespace, &slot.backend.namespace);
        decrement(&mut self.per_backend, &slot.backend);
        decrement(
            &mut self.per_worker,
            &(slot.backend.clone(), slot.worker.clone()),
        );
        Some(slot)
    }

    /// Frees every slot on `worker` of `backend` (the worker is gone) and returns the sessions
    /// that held them, so they can be admitted again elsewhere.
    pub fn release_worker(&mut self, backend: &BackendKey, worker: &str) -> Vec<SessionKey> {
        let lost: Vec<SessionKey> = self
            .slots
            .iter()
            .filter(|(_, s)| &s.backend == backend && s.worker == worker)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &lost {
            self.release(key);
        }
        lost
    }

    /// The counts without the slots: enough to plan admissions of sessions that hold none
    /// (and far cheaper to copy than the whole ledger).
    pub fn counts_only(&self) -> Ledger {
        Ledger {
            slots: HashMap::new(),
            per_provider: self.per_provider.clone(),
            per_namespace: self.per_namespace.clone(),
            per_backend: self.per_backend.clone(),
            per_worker: self.per_worker.clone(),
            changed: Vec::new(),
        }
    }

    /// The sessions held or released since the last call (with repeats), for a reader that
    /// follows the ledger incrementally.
    pub fn take_changed(&mut self) -> Vec<SessionKey> {
        std::mem::take(&mut self.changed)
    }

    /// The slot `session` holds.
    pub fn slot(&self, session: &SessionKey) -> Option<&Slot> {
        self.slots.get(session)
    }

    /// Sessions holding a slot of `provider`, across all backends.
    pub fn provider_count(&self, provider: &str) -> u32 {
        self.per_provider.get(provider).copied().unwrap_or(0)
    }

    /// Sessions holding a slot in `namespace`, across all its backends.
    pub fn namespace_count(&self, namespace: &str) -> u32 {
        self.per_namespace.get(namespace).copied().unwrap_or(0)
    }

    /// Sessions holding a slot of `backend`.
    pub fn backend_count(&self, backend: &BackendKey) -> u32 {
        self.per_backend.get(backend).copied().unwrap_or(0)
    }

    /// Sessions holding a slot on `worker` of `backend`.
    pub fn worker_count(&self, backend: &BackendKey, worker: &str) -> u32 {
        self.per_worker
            .get(&(backend.clone(), worker.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Sessions per worker of `backend`, for placement and status.
    pub fn workers_of(&self, backend: &BackendKey) -> BTreeMap<String, u32> {
        self.per_worker
            .iter()
            .filter(|((b, _), _)| b == backend)
            .map(|((_, w), n)| (w.clone(), *n))
            .collect()
    }

    /// Every held slot.
    pub fn iter(&self) -> impl Iterator<Item = (&SessionKey, &Slot)> {
        self.slots.iter()
    }

    /// Number of sessions holding a slot.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no session holds a slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Lowers a count, dropping the entry at zero so an idle ledger holds no keys.
fn decrement<K: std::hash::Hash + Eq + Clone>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::SessionKey;

    #[test]
    fn a_session_key_reads_as_the_workers_session_id_and_matches_only_its_own_uid() {
        let key = SessionKey {
            namespace: "team-a".into(),
            name: "call-1".into(),
            uid: "u-1".into(),
        };
        assert_eq!(key.to_string(), "team-a/call-1");
        assert_eq!(key.session_id(), "team-a/call-1");
        assert!(key.is("team-a/call-1", "u-1"));
        assert!(!key.is("team-a/call-1", "u-2"), "another incarnation");
        assert!(!key.is("team-b/call-1", "u-1"));
        assert!(!key.is("team-a/call-10", "u-1"));
        assert!(!key.is("team-acall-1", "u-1"));
    }
}
