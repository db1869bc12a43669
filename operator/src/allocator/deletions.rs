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
            self.ended_in_flight.remove(key);
            if let Some(slot) = self.release_slot(key) {
                tracing::info!(session = %key, worker = %slot.worker, "session deleted; slot released");
                self.release_on_worker(key, &slot, "Deleted");
            }
            if self.lifecycle.remove(key).is_some() {
                self.lifecycle_changed.insert(key.clone());
            }
            self.waiting_written.remove(key);
            self.metadata.forget(key);
            self.backoff.forget_session(key);
        }
    }

    /// The slow sweep behind [`Allocator::forget_removed`], every `REPAIR_INTERVAL`: hands it
    /// every session the loop still remembers that the index no longer has, so nothing an
    /// event missed is held for good.
    pub(super) fn forget_deleted(&mut self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>) {
        let gone = |k: &&SessionKey| !sessions.contains_key(*k);
        let missed: HashSet<SessionKey> = (self.ledger.iter().map(|(k, _)| k))
            .chain(self.lifecycle.keys())
            .chain(self.waiting_written.keys())
            .filter(gone)
            .cloned()
            .collect();
        self.forget_removed(missed.into_iter().collect());
        self.metadata.retain(|k| sessions.contains_key(k));
        self.backoff.retain_sessions(|k| sessions.contains_key(k));
    }
}
