//! Backs off after a worker refuses a reservation, so a refusing worker is not asked again
//! every allocation round (25 ms).
//!
//! A refusal that says something about the worker (full, draining: its own count differs
//! from the ledger's, e.g. while orphans await repair) keeps the worker out of placement for
//! a while; one that says something about the session (conflict: an older incarnation of
//! the same name still holds a slot there) keeps the session out of planning. Delays double
//! per refusal in a row and reset after a success, or after a quiet spell. Sans-IO: the
//! caller passes the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::ledger::SessionKey;

/// First delay after a worker's refusal.
const WORKER_FIRST: Duration = Duration::from_millis(200);
/// Longest delay for a worker.
const WORKER_MAX: Duration = Duration::from_secs(5);
/// First delay after a session's refusal.
const SESSION_FIRST: Duration = Duration::from_millis(100);
/// Longest delay for a session.
const SESSION_MAX: Duration = Duration::from_secs(2);
/// A refusal this long after the previous back-off ended starts again from the first delay.
const FORGET_AFTER: Duration = Duration::from_secs(30);

/// Who a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The worker takes no more sessions now (full or draining).
    Worker,
    /// This session cannot go to this worker now (conflict with an older incarnation).
    Session,
}

/// Workers (`namespace/pod`) and sessions waiting out a refusal.
#[derive(Debug, Default)]
pub struct RefusalBackoff {
    workers: Delays<String>,
    sessions: Delays<SessionKey>,
}

impl RefusalBackoff {
    /// Records that `worker` refused `session` for `why` at `now`.
    pub fn refused(&mut self, worker: &str, session: &SessionKey, why: Refusal, now: Instant) {
        match why {
            Refusal::Worker => self
                .workers
                .fail(worker.to_owned(), now, WORKER_FIRST, WORKER_MAX),
            Refusal::Session => {
                self.sessions
                    .fail(session.clone(), now, SESSION_FIRST, SESSION_MAX)
            }
        }
    }

    /// Records that `worker` took `session`: both start afresh.
    pub fn took(&mut self, worker: &str, session: &SessionKey) {
        self.workers.0.remove(worker);
        self.sessions.0.remove(session);
    }

    /// Forgets `session` (it is gone).
    pub fn forget_session(&mut self, session: &SessionKey) {
        self.sessions.0.remove(session);
    }

    /// Forgets the sessions `keep` says are gone.
    pub fn retain_sessions(&mut self, keep: impl Fn(&SessionKey) -> bool) {
        self.sessions.0.retain(|k, _| keep(k));
    }

    /// Whether `worker` is still kept out of placement at `now`.
    pub fn worker_waits(&self, worker: &str, now: Instant) -> bool {
        self.workers.waits(worker, now)
    }

    /// Whether `session` is still kept out of planning at `now`.
    pub fn session_waits(&self, session: &SessionKey, now: Instant) -> bool {
        self.sessions.waits(session, now)
    }

    /// The next moment a back-off ends after `now`, to plan again then.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.workers
            .next(now)
            .into_iter()
            .chain(self.sessions.next(now))
            .min()
    }
}

/// Refusals in a row and the end of the current delay, per key.
#[derive(Debug)]
struct Delays<K>(HashMap<K, (u32, Instant)>);

impl<K> Default for Delays<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Eq + Hash> Delays<K> {
    fn fail(&mut self, key: K, now: Instant, first: Duration, max: Duration) {
        // An entry quiet this long would start again from the first delay anyway; dropping
        // it keeps workers that refused once and were then deleted from staying forever.
        self.0
            .retain(|_, (_, until)| now.saturating_duration_since(*until) <= FORGET_AFTER);
        let entry = self.0.entry(key).or_insert((0, now));
        let delay = first
            .saturating_mul(2u32.saturating_pow(entry.0.min(16)))
            .min(max);
        *entry = (entry.0 + 1, now + delay);
    }

    fn waits<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.0.get(key).is_some_and(|(_, until)| now < *until)
    }

    fn next(&self, now: Instant) -> Option<Instant> {
        self.0
            .values()
            .map(|(_, until)| *until)
            .filter(|u| *u > now)
            .min()
    }
}

#[cfg(test)]
// Tests need some Instant to count from; the code under test never reads the clock.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn key(name: &str) -> SessionKey {
        SessionKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    #[test]
    fn a_refusing_worker_is_kept_out_for_doubling_delays_until_it_takes_one() {
        let mut b = RefusalBackoff::default();
        let t0 = Instant::now();
        let s = key("a");
        b.refused("ns/w1", &s, Refusal::Worker, t0);
        assert!(b.worker_waits("ns/w1", t0 + Duration::from_millis(199)));
        assert!(!b.worker_waits("ns/w1", t0 + Duration::from_millis(200)));
        assert!(
            !b.worker_waits("ns/w2", t0),
            "other workers are not affected"
        );
        assert!(
            !b.session_waits(&s, t0),
            "a full worker says nothing about the session"
        );
        assert_eq!(b.next_due(t0), Some(t0 + Duration::from_millis(200)));

        let t1 = t0 + Duration::from_millis(200);
        b.refused("ns/w1", &s, Refusal::Worker, t1);
        assert!(b.worker_waits("ns/w1", t1 + Duration::from_millis(399)));
        assert!(!b.worker_waits("ns/w1", t1 + Duration::from_millis(400)));
        // Many refusals in a row: the delay stops at its maximum.
        let mut t = t1;
        for _ in 0..20 {
            t += Duration::from_secs(6);
            b.refused("ns/w1", &s, Refusal::Worker, t);
        }
        assert!(!b.worker_waits("ns/w1", t + WORKER_MAX));
        b.took("ns/w1", &s);
        assert!(!b.worker_waits("ns/w1", t));
        assert_eq!(b.next_due(t), None);
    }

    #[test]
    fn a_conflict_keeps_the_session_out_not_the_worker() {
        let mut b = RefusalBackoff::default();
        let t0 = Instant::now();
        let s = key("a");
        b.refused("ns/w1", &s, Refusal::Session, t0);
        assert!(b.session_waits(&s, t0 + Duration::from_millis(99)));
        assert!(!b.session_waits(&s, t0 + Duration::from_millis(100)));
        assert!(!b.worker_waits("ns/w1", t0));
        assert!(!b.session_waits(&key("b"), t0));
        b.retain_sessions(|k| k != &s);
        assert!(!b.session_waits(&s, t0));
    }

    #[test]
    fn a_refusal_after_a_quiet_spell_starts_from_the_first_delay() {
        let mut b = RefusalBackoff::default();
        let t0 = Instant::now();
        let s = key("a");
        for i in 0..5 {
            b.refused("ns/w1", &s, Refusal::Worker, t0 + Duration::from_millis(i));
        }
        b.refused("ns/gone", &s, Refusal::Worker, t0);
        let later = t0 + Duration::from_secs(60);
        b.refused("ns/w1", &s, Refusal::Worker, later);
        assert!(!b.worker_waits("ns/w1", later + WORKER_FIRST));
        assert_eq!(b.workers.0.len(), 1, "the long-quiet worker is forgotten");
    }
}
