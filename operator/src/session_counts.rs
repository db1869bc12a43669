//! Session counts per backend, shared from the allocator to the backend controller: pending
//! sessions count towards a backend's desired workers, so a backend scales up for the sessions
//! waiting on it. The allocator publishes a count and asks for a reconcile of the backend
//! when its count changes; status writes do not wake the backend controller (its watch
//! ignores status), so this in-process nudge is what makes scaling prompt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use voice_crds::VoiceBackend;

use crate::ledger::BackendKey;

/// Active and pending sessions of one backend, as the allocator counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendSessions {
    /// Sessions holding a slot.
    pub active: u32,
    /// Sessions waiting for admission.
    pub pending: u32,
}

/// The shared counts and the channel of backends to reconcile.
#[derive(Clone, Debug)]
pub struct SessionCounts {
    counts: Arc<Mutex<HashMap<BackendKey, BackendSessions>>>,
    nudge: mpsc::Sender<ObjectRef<VoiceBackend>>,
    nudges: Arc<Mutex<Option<mpsc::Receiver<ObjectRef<VoiceBackend>>>>>,
}

impl Default for SessionCounts {
    fn default() -> Self {
        // Bounded: a full channel only delays scaling until the backend's periodic requeue.
        let (nudge, nudges) = mpsc::channel(1024);
        SessionCounts {
            counts: Arc::default(),
            nudge,
            nudges: Arc::new(Mutex::new(Some(nudges))),
        }
    }
}

impl SessionCounts {
    /// The counts of `backend` (zero when it has no sessions).
    pub fn get(&self, backend: &BackendKey) -> BackendSessions {
        self.lock().get(backend).copied().unwrap_or_default()
    }

    /// Replaces every count; backends whose count changed are nudged to reconcile.
    pub fn publish(&self, next: HashMap<BackendKey, BackendSessions>) {
        let changed: Vec<BackendKey> = {
            let mut counts = self.lock();
            let mut changed: Vec<BackendKey> = next
                .iter()
                .filter(|(k, v)| counts.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            changed.extend(counts.keys().filter(|k| !next.contains_key(*k)).cloned());
            *counts = next;
            changed
        };
        for key in changed {
            let reference = ObjectRef::new(&key.name).within(&key.namespace);
            // Full means many nudges are queued already; the periodic requeue covers the rest.
            let _ = self.nudge.try_send(reference);
        }
    }

    /// The nudge stream, once (the backend controller takes it at start).
    pub fn take_nudges(&self) -> Option<mpsc::Receiver<ObjectRef<VoiceBackend>>> {
        self.nudges.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BackendKey, BackendSessions>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> BackendKey {
        BackendKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn only_changed_backends_are_nudged() {
        let counts = SessionCounts::default();
        let mut nudges = counts.take_nudges().unwrap();
        assert!(counts.take_nudges().is_none(), "taken once");
        let one = BackendSessions {
            active: 1,
            pending: 2,
        };
        counts.publish(HashMap::from([(key("a"), one), (key("b"), one)]));
        let mut first = vec![
            nudges.recv().await.unwrap().name,
            nudges.recv().await.unwrap().name,
        ];
        first.sort();
        assert_eq!(first, ["a", "b"]);
        counts.publish(HashMap::from([(key("a"), one)]));
        assert_eq!(nudges.recv().await.unwrap().name, "b", "b went to zero");
        assert!(nudges.try_recv().is_err(), "a did not change");
        assert_eq!(counts.get(&key("a")), one);
        assert_eq!(counts.get(&key("b")), BackendSessions::default());
    }
}
