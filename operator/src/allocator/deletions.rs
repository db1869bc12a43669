//! Deleted sessions: slots released from the watch's delete events, and the slow sweep
//! that compares everything the loop holds with the index.

use super::*;

impl Allocator {
    /// Frees the slots of sessions the watch reported gone, and forgets them; one whose
    /// admission is running waits for its outcome.
    pub(super) fn forget_removed(&mut self, removed: Vec<SessionKey>) {
        self.deleted_in_flight.extend(removed);
        if self.deleted_in_flight.is_empty() {
            return;
        }
        let gone: Vec<SessionKey> = self
            .deleted_in_flight
            .iter()
            .filter(|k| !self.in_flight.contains(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.deleted_in_flight.remove(key);
            if let Some(slot) = self.ledger.release(key) {
                tracing::info!(session = %key, worker = %slot.worker, "session deleted; slot released");
                self.release_on_worker(key, &slot, "Deleted");
            }
            if self.lifecycle.remove(key).is_some() {
                self.lifecycle_changed.insert(key.clone());
            }
            self.waiting_written.remove(key);
        }
        if !gone.is_empty() {
            let gone: HashSet<&SessionKey> = gone.iter().collect();
            self.metadata.retain(|k| !gone.contains(k));
            self.backoff.retain_sessions(|k| !gone.contains(k));
        }
    }

    /// The slow sweep behind [`Allocator::forget_removed`], every `REPAIR_INTERVAL`: frees
    /// the slots of sessions that are gone from the API by comparing everything the loop
    /// holds with the index, so nothing an event missed is held for good.
    pub(super) fn forget_deleted(&mut self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>) {
        let gone: Vec<SessionKey> = self
            .ledger
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !sessions.contains_key(k) && !self.in_flight.contains(k))
            .collect();
        for key in gone {
            if let Some(slot) = self.ledger.release(&key) {
                tracing::info!(session = %key, worker = %slot.worker, "session deleted; slot released");
                self.release_on_worker(&key, &slot, "Deleted");
            }
        }
        let removed: Vec<SessionKey> = self
            .lifecycle
            .keys()
            .filter(|k| !sessions.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            self.lifecycle.remove(&key);
            self.lifecycle_changed.insert(key);
        }
        self.waiting_written.retain(|k, _| sessions.contains_key(k));
        self.metadata.retain(|k| sessions.contains_key(k));
        self.backoff.retain_sessions(|k| sessions.contains_key(k));
    }
}
