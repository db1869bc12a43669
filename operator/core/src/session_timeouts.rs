//! Which of a session's clocks ran out: pending timeout, maximum duration, idle timeout, and
//! the time-to-live of a finished session. Pure: the caller passes the facts and the time.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use voice_crds::SessionPhase;

use crate::reason;

/// The facts about one session that its timers depend on.
#[derive(Clone, Debug, Default)]
pub struct Clocks {
    /// Lifecycle phase.
    pub phase: SessionPhase,
    /// Whether the session holds a slot (counted in the ledger).
    pub holds_slot: bool,
    /// When the session was created.
    pub created: Option<Timestamp>,
    /// When it started waiting after losing its worker (re-admission), if it did.
    pub lost_worker_at: Option<Timestamp>,
    /// When it was admitted.
    pub admitted_at: Option<Timestamp>,
    /// Last client activity the workers reported.
    pub last_activity: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// `spec.pendingTimeout`.
    pub pending_timeout: Option<Duration>,
    /// `spec.maxDuration`.
    pub max_duration: Option<Duration>,
    /// `spec.idleTimeout`.
    pub idle_timeout: Option<Duration>,
    /// `spec.ttlSecondsAfterFinished`.
    pub ttl_after_finished: Duration,
}

/// What must happen to a session now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expired {
    /// Fail it: it waited too long (`QueueTimeout`, or `WorkerLost` after losing its worker).
    Fail(&'static str),
    /// End it: `MaxDuration` or `IdleTimeout`.
    End(&'static str),
    /// Delete it: it finished more than its TTL ago.
    Delete,
}

/// The first clock of `clocks` that has run out at `now`, if any.
pub fn check(clocks: &Clocks, now: Timestamp) -> Option<Expired> {
    let past = |since: Option<Timestamp>, limit: Option<Duration>| match (since, limit) {
        (Some(since), Some(limit)) => elapsed(since, now) >= limit,
        _ => false,
    };
    match clocks.phase {
        SessionPhase::Completed | SessionPhase::Failed => {
            past(clocks.ended_at, Some(clocks.ttl_after_finished)).then_some(Expired::Delete)
        }
        SessionPhase::Pending if !clocks.holds_slot => {
            // A session that lost its worker waits its pending timeout again from the loss.
            let (since, why) = match clocks.lost_worker_at {
                Some(lost) => (Some(lost), reason::WORKER_LOST),
                None => (clocks.created, reason::QUEUE_TIMEOUT),
            };
            past(since, clocks.pending_timeout).then_some(Expired::Fail(why))
        }
        SessionPhase::Pending => None,
        SessionPhase::Active => {
            if past(clocks.admitted_at, clocks.max_duration) {
                return Some(Expired::End(reason::MAX_DURATION));
            }
            let quiet_since = clocks.last_activity.or(clocks.admitted_at);
            past(quiet_since, clocks.idle_timeout).then_some(Expired::End(reason::IDLE_TIMEOUT))
        }
    }
}

/// When the first clock of `clocks` runs out: [`check`] finds nothing before it and something
/// at it. `None` when no clock runs (nothing changes until the facts do), so a caller can
/// look at a session again at its deadline instead of at every tick.
pub fn deadline(clocks: &Clocks) -> Option<Timestamp> {
    let at = |since: Option<Timestamp>, limit: Option<Duration>| {
        since?
            .checked_add(SignedDuration::try_from(limit?).ok()?)
            .ok()
    };
    match clocks.phase {
        SessionPhase::Completed | SessionPhase::Failed => {
            at(clocks.ended_at, Some(clocks.ttl_after_finished))
        }
        SessionPhase::Pending if !clocks.holds_slot => at(
            clocks.lost_worker_at.or(clocks.created),
            clocks.pending_timeout,
        ),
        SessionPhase::Pending => None,
        SessionPhase::Active => {
            let quiet_since = clocks.last_activity.or(clocks.admitted_at);
            let ends = at(clocks.admitted_at, clocks.max_duration);
            let idles = at(quiet_since, clocks.idle_timeout);
            ends.into_iter().chain(idles).min()
        }
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(since);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn a_pending_session_fails_with_queue_timeout_after_its_pending_timeout() {
        let c = Clocks {
            phase: SessionPhase::Pending,
            created: Some(t(100)),
            pending_timeout: secs(30),
            ..Clocks::default()
        };
        assert_eq!(check(&c, t(129)), None);
        assert_eq!(check(&c, t(130)), Some(Expired::Fail("QueueTimeout")));
    }

    #[test]
    fn without_a_pending_timeout_a_session_waits_forever() {
        let c = Clocks {
            phase: SessionPhase::Pending,
            created: Some(t(0)),
            ..Clocks::default()
        };
        assert_eq!(check(&c, t(1_000_000)), None);
    }

    #[test]
    fn a_session_that_lost_its_worker_fails_with_worker_lost_counted_from_the_loss() {
        let c = Clocks {
            phase: SessionPhase::Pending,
            created: Some(t(0)),
            lost_worker_at: Some(t(500)),
            pending_timeout: secs(30),
            ..Clocks::default()
        };
        assert_eq!(check(&c, t(520)), None);
        assert_eq!(check(&c, t(530)), Some(Expired::Fail("WorkerLost")));
    }

    #[test]
    fn a_pending_session_holding_a_slot_is_never_timed_out_mid_admission() {
        let c = Clocks {
            phase: SessionPhase::Pending,
            holds_slot: true,
            created: Some(t(0)),
            pending_timeout: secs(1),
            ..Clocks::default()
        };
        assert_eq!(check(&c, t(100)), None);
    }

    #[test]
    fn an_active_session_ends_at_max_duration_then_idle_timeout() {
        let c = Clocks {
            phase: SessionPhase::Active,
            holds_slot: true,
            admitted_at: Some(t(0)),
            last_activity: Some(t(50)),
            max_duration: secs(200),
            idle_timeout: secs(60),
            ..Clocks::default()
        };
        assert_eq!(check(&c, t(109)), None);
        assert_eq!(check(&c, t(110)), Some(Expired::End("IdleTimeout")));
        let busy = Clocks {
            last_activity: Some(t(99)),
            max_duration: secs(100),
            ..c
        };
        assert_eq!(check(&busy, t(99)), None);
        assert_eq!(check(&busy, t(100)), Some(Expired::End("MaxDuration")));
    }

    #[test]
    fn idle_time_counts_from_admission_when_the_client_never_spoke() {
        let c = Clocks {
            phase: SessionPhase::Active,
            holds_slot: true,
            admitted_at: Some(t(10)),
            idle_timeout: secs(5),
            ..Clocks::default()
        };
        assert_eq!(check(&c, t(15)), Some(Expired::End("IdleTimeout")));
    }

    #[test]
    fn a_finished_session_is_deleted_after_its_ttl() {
        let c = Clocks {
            phase: SessionPhase::Completed,
            ended_at: Some(t(10)),
            ttl_after_finished: Duration::from_secs(300),
            ..Clocks::default()
        };
        assert_eq!(check(&c, t(309)), None);
        assert_eq!(check(&c, t(310)), Some(Expired::Delete));
        let zero = Clocks {
            ttl_after_finished: Duration::ZERO,
            ..c
        };
        assert_eq!(check(&zero, t(10)), Some(Expired::Delete));
    }

    #[test]
    fn the_deadline_is_the_first_moment_check_finds_a_clock_run_out() {
        let active = Clocks {
            phase: SessionPhase::Active,
            holds_slot: true,
            admitted_at: Some(t(0)),
            ..Clocks::default()
        };
        let pending = Clocks {
            phase: SessionPhase::Pending,
            created: Some(t(7)),
            pending_timeout: secs(30),
            ..Clocks::default()
        };
        let cases = [
            pending.clone(),
            Clocks {
                lost_worker_at: Some(t(500)),
                ..pending.clone()
            },
            Clocks {
                max_duration: secs(200),
                idle_timeout: secs(60),
                last_activity: Some(t(50)),
                ..active.clone()
            },
            Clocks {
                max_duration: secs(100),
                idle_timeout: secs(60),
                last_activity: Some(t(99)),
                ..active.clone()
            },
            Clocks {
                idle_timeout: secs(5),
                ..active.clone()
            },
            Clocks {
                phase: SessionPhase::Failed,
                ended_at: Some(t(10)),
                ttl_after_finished: Duration::from_secs(300),
                ..Clocks::default()
            },
        ];
        for c in &cases {
            let due = deadline(c).unwrap_or_else(|| panic!("a clock runs: {c:?}"));
            let before = due.checked_sub(SignedDuration::from_millis(1)).unwrap();
            assert_eq!(check(c, before), None, "{c:?}");
            assert!(check(c, due).is_some(), "{c:?}");
        }
        // A zero TTL has run out from the end on (and, clamped, before it too).
        let zero = Clocks {
            phase: SessionPhase::Completed,
            ended_at: Some(t(10)),
            ..Clocks::default()
        };
        assert_eq!(deadline(&zero), Some(t(10)));
        assert_eq!(check(&zero, t(10)), Some(Expired::Delete));
    }

    #[test]
    fn a_session_with_no_clock_running_has_no_deadline() {
        let never = [
            Clocks {
                phase: SessionPhase::Pending,
                created: Some(t(0)),
                ..Clocks::default()
            },
            Clocks {
                phase: SessionPhase::Pending,
                holds_slot: true,
                created: Some(t(0)),
                pending_timeout: secs(1),
                ..Clocks::default()
            },
            Clocks {
                phase: SessionPhase::Active,
                holds_slot: true,
                admitted_at: Some(t(0)),
                ..Clocks::default()
            },
        ];
        for c in &never {
            assert_eq!(deadline(c), None, "{c:?}");
            assert_eq!(check(c, t(1_000_000_000)), None, "{c:?}");
        }
    }
}
