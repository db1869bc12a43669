//! When a draining worker pod may be deleted.
//!
//! Pure: the backend controller marks a surplus pod draining (label, `draining-since`
//! annotation and a gRPC `Drain` call), and on every reconcile asks [`decide`] whether it may
//! go now. A pod goes once its worker holds no session, once its drain timeout has passed, or
//! when its worker cannot hold sessions any more (process gone, pod finished).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// What the worker said when asked, for a draining pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainProbe {
    /// The worker answered `GetStats` with this many held sessions.
    Sessions(u32),
    /// The worker did not answer (no IP yet, process gone, timeout).
    Unreachable,
    /// The pod has finished (`Succeeded`/`Failed`): nothing runs there.
    Finished,
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainDecision {
    /// Delete the pod now; the reason is a CamelCase word for logs and Events.
    Delete(&'static str),
    /// Keep it; look again no later than after this long.
    Wait(Duration),
}

/// Decides about one draining pod that started draining at `since`.
///
/// An unreachable worker is kept until the deadline: a pod whose gRPC port blips must not
/// lose its sessions to one missed call, and the deadline bounds the wait.
pub fn decide(
    now: Timestamp,
    since: Timestamp,
    timeout: Duration,
    probe: DrainProbe,
) -> DrainDecision {
    match probe {
        DrainProbe::Finished => return DrainDecision::Delete("WorkerFinished"),
        DrainProbe::Sessions(0) => return DrainDecision::Delete("DrainComplete"),
        DrainProbe::Sessions(_) | DrainProbe::Unreachable => {}
    }
    let elapsed = now.duration_since(since);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    if elapsed >= timeout {
        DrainDecision::Delete("DrainTimeout")
    } else {
        DrainDecision::Wait(timeout - elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid second")
    }

    const T: Duration = Duration::from_secs(300);

    #[test]
    fn an_empty_worker_goes_at_once() {
        assert_eq!(
            decide(at(10), at(10), T, DrainProbe::Sessions(0)),
            DrainDecision::Delete("DrainComplete")
        );
    }

    #[test]
    fn a_busy_worker_waits_until_the_deadline() {
        assert_eq!(
            decide(at(100), at(0), T, DrainProbe::Sessions(3)),
            DrainDecision::Wait(Duration::from_secs(200))
        );
        assert_eq!(
            decide(at(300), at(0), T, DrainProbe::Sessions(3)),
            DrainDecision::Delete("DrainTimeout")
        );
    }

    #[test]
    fn an_unreachable_worker_is_kept_until_the_deadline() {
        assert!(matches!(
            decide(at(1), at(0), T, DrainProbe::Unreachable),
            DrainDecision::Wait(_)
        ));
        assert_eq!(
            decide(at(301), at(0), T, DrainProbe::Unreachable),
            DrainDecision::Delete("DrainTimeout")
        );
    }

    #[test]
    fn a_finished_pod_goes_at_once_and_clock_skew_does_not_panic() {
        assert_eq!(
            decide(at(0), at(50), T, DrainProbe::Finished),
            DrainDecision::Delete("WorkerFinished")
        );
        assert_eq!(
            decide(at(0), at(50), T, DrainProbe::Sessions(1)),
            DrainDecision::Wait(T)
        );
    }
}
