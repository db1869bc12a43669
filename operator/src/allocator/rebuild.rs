//! The loop's state rebuilt at takeover: the ledger and the rate limits' buckets.

use super::*;

impl Allocator {
    /// The rate limits' buckets as the sessions' `admittedAt` leave them, so a restart
    /// admits no faster than the limits allow.
    pub(super) fn rebuild_rates(&mut self) {
        let admitted = self
            .sessions
            .sessions()
            .values()
            .filter_map(|s| {
                let at = s.status.as_ref()?.admitted_at.as_ref()?.0.as_millisecond();
                let backend = backend_key_of(s);
                let provider = self.provider_of(&backend)?;
                Some((at, provider, backend))
            })
            .collect();
        let limits = rate_limit::limits_of(
            self.providers.state().iter().map(|p| &**p),
            self.backends.state().iter().map(|b| &**b),
        );
        self.rates = rate_limit::rebuild(limits, admitted);
    }

    /// Rebuilds the ledger from the sessions' statuses and the reservations the workers
    /// listed at takeover ([`ledger_rebuild`]); returns how many admissions the next rounds
    /// finish (reserved by an earlier leader that stopped before `Active`).
    pub(super) fn rebuild(&mut self, reservations: &[Reservation]) -> usize {
        let mut at_start = Vec::new();
        for s in self.sessions.sessions().values() {
            let key = key_of(s);
            let lifecycle = Lifecycle::observed(s.status.as_ref());
            let backend = backend_key_of(s);
            at_start.push(SessionAtStart {
                key: key.clone(),
                provider: self.provider_of(&backend),
                backend,
                pending: lifecycle.phase == SessionPhase::Pending,
                holder: lifecycle
                    .worker
                    .as_ref()
                    .filter(|_| lifecycle.holds_slot())
                    .map(|w| w.pod.clone()),
            });
            self.lifecycle.insert(key, lifecycle);
        }
        let rebuilt = ledger_rebuild::rebuild(&at_start, reservations);
        for key in &rebuilt.finishing {
            if let Some(slot) = rebuilt.ledger.slot(key) {
                tracing::info!(session = %key, worker = %slot.worker, "finishing an admission an earlier leader reserved");
            }
        }
        self.ledger = rebuilt.ledger;
        self.publish_metrics();
        rebuilt.finishing.len()
    }
}
