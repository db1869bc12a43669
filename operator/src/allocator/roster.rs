//! The roster the live-state writer follows: which worker pods exist and which worker may
//! speak for which session; built whole once, then updated for the sessions that moved.

use super::*;

impl Allocator {
    /// Publishes every worker's address and the sessions each may report on: the ledger's
    /// holder, or for a session no longer held, the worker its status names.
    pub(super) fn publish_roster(
        &mut self,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
    ) {
        let workers: BTreeMap<String, WorkerRef> = backends
            .iter()
            .flat_map(|(backend, (_, ips))| {
                ips.iter().map(|(pod, ip)| {
                    let worker = WorkerRef {
                        namespace: backend.namespace.clone(),
                        pod: pod.clone(),
                    };
                    (ip.clone(), worker)
                })
            })
            .collect();
        let id = |k: &SessionKey| (k.session_id(), k.uid.clone());
        let changed: HashSet<SessionKey> = self
            .ledger
            .take_changed()
            .into_iter()
            .chain(self.lifecycle_changed.drain())
            .collect();
        if self.roster_built {
            // Only the sessions that moved: the holders are O(sessions) to build whole.
            let updates: Vec<((String, String), Option<WorkerRef>)> =
                changed.iter().map(|k| (id(k), self.holder_of(k))).collect();
            self.roster.send_if_modified(|current| {
                let mut modified = current.workers != workers;
                if modified {
                    current.workers = workers;
                }
                for (id, holder) in updates {
                    modified |= match holder {
                        Some(h) if current.holders.get(&id) != Some(&h) => {
                            current.holders.insert(id, h);
                            true
                        }
                        Some(_) => false,
                        None => current.holders.remove(&id).is_some(),
                    };
                }
                modified
            });
            return;
        }
        self.roster_built = true;
        let mut holders: HashMap<(String, String), WorkerRef> = self
            .lifecycle
            .iter()
            .filter_map(|(k, l)| {
                let pod = l.worker.as_ref()?.pod.clone();
                let namespace = k.namespace.clone();
                Some((id(k), WorkerRef { namespace, pod }))
            })
            .collect();
        // The ledger wins: it moves first when a session is placed on a worker.
        holders.extend(self.ledger.iter().map(|(k, slot)| {
            let worker = WorkerRef {
                namespace: slot.backend.namespace.clone(),
                pod: slot.worker.clone(),
            };
            (id(k), worker)
        }));
        let roster = Roster { workers, holders };
        self.roster.send_if_modified(|current| {
            if *current == roster {
                false
            } else {
                *current = roster;
                true
            }
        });
    }

    /// The worker that may speak for `key`: its ledger slot's, else (an ended session) the
    /// one its status still names.
    pub(super) fn holder_of(&self, key: &SessionKey) -> Option<WorkerRef> {
        if let Some(slot) = self.ledger.slot(key) {
            return Some(WorkerRef {
                namespace: slot.backend.namespace.clone(),
                pod: slot.worker.clone(),
            });
        }
        let pod = self.lifecycle.get(key)?.worker.as_ref()?.pod.clone();
        Some(WorkerRef {
            namespace: key.namespace.clone(),
            pod,
        })
    }
}
