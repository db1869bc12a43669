//! The VoiceBackend status the controller writes: conditions and the fields folded from
//! health checks, and whether a write is needed at all.
//!
//! Pure. A status is written only when something other than check timestamps changed, or
//! when the last written check time is older than [`HEARTBEAT`]: a backend whose workers
//! answer every 10 s the same way costs one write a minute, not six, and a backend with
//! nothing to check costs none.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use voice_crds::conditions::{ACCEPTED, DEGRADED, PROGRESSING, READY, set_condition};
use voice_crds::{ConnectionState, HealthStatus, VoiceBackendStatus};

use crate::backend_acceptance::Acceptance;
use crate::health::Fold;

/// Longest time `lastHealthCheck` may lag behind while nothing else changes.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// What the backend is doing with its pods, for the `Progressing` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Pods of an older template are still being replaced.
    RollingUpdate,
    /// Fewer current, ready pods than desired.
    ScalingUp,
    /// Surplus pods are draining or about to.
    ScalingDown,
    /// Nothing to do.
    Stable,
}

impl Progress {
    /// The condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Progress::RollingUpdate => "RollingUpdate",
            Progress::ScalingUp => "ScalingUp",
            Progress::ScalingDown => "ScalingDown",
            Progress::Stable => "Stable",
        }
    }
}

/// Everything the new status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The status as read.
    pub current: &'a VoiceBackendStatus,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The acceptance outcome.
    pub acceptance: &'a Acceptance,
    /// This round's health fold.
    pub fold: &'a Fold,
    /// Rollout or scaling in progress.
    pub progress: Progress,
    /// Worker pods that exist (not being deleted).
    pub replicas: i32,
    /// `status.selector`.
    pub selector: String,
    /// Now.
    pub now: Time,
    /// The p95 of recent turn latencies and how many turns it covers, with the backend's
    /// `latencyTarget`; `None` until enough turns were seen.
    pub latency: Option<(std::time::Duration, usize, std::time::Duration)>,
}

/// Computes the new status.
pub fn compute(input: &StatusInput<'_>) -> VoiceBackendStatus {
    let mut s = input.current.clone();
    // pendingSessions is the session allocator's: left out, so this controller's apply
    // never owns it (see field_managers.rs).
    s.pending_sessions = None;
    let f = input.fold;
    let g = input.generation;
    let now = || input.now.clone();
    s.observed_generation = g;
    set_condition(
        &mut s.conditions,
        ACCEPTED,
        input.acceptance.is_accepted(),
        input.acceptance.reason(),
        input.acceptance.message(),
        g,
        now(),
    );
    let (ready, reason, message) = if !input.acceptance.is_accepted() {
        (
            false,
            "NotAccepted",
            "the backend is not Accepted; see the Accepted condition".to_owned(),
        )
    } else if f.counts.ready > 0 {
        (
            true,
            "WorkersReady",
            format!(
                "{} of {} desired workers ready",
                f.counts.ready, f.counts.desired
            ),
        )
    } else {
        (
            false,
            "NoReadyWorkers",
            format!("0 of {} desired workers ready", f.counts.desired),
        )
    };
    set_condition(&mut s.conditions, READY, ready, reason, message, g, now());
    let failing = f
        .worker_statuses
        .iter()
        .filter(|w| w.phase == voice_crds::WorkerPhase::Unhealthy)
        .count();
    let (degraded, reason, message) = match f.health_status {
        HealthStatus::Degraded if failing > 0 => (
            true,
            "WorkersFailing",
            format!("{failing} worker(s) fail health checks"),
        ),
        HealthStatus::Degraded => (
            true,
            "BelowDesired",
            format!(
                "{} of {} desired workers ready",
                f.counts.ready, f.counts.desired
            ),
        ),
        HealthStatus::Unhealthy => (
            true,
            "NoHealthyWorkers",
            "no worker passes its health checks".to_owned(),
        ),
        HealthStatus::Healthy => (
            false,
            "Healthy",
            "every worker passes its health checks".to_owned(),
        ),
        HealthStatus::Unknown => (
            false,
            "NotChecked",
            "no health check has completed yet".to_owned(),
        ),
    };
    // Healthy workers that answer too slowly still leave the backend Degraded.
    let (degraded, reason, message) = match input.latency {
        Some((p95, turns, target)) if !degraded && p95 > target => (
            true,
            "LatencyTargetExceeded",
            format!(
                "p95 turn latency {} ms over the last {turns} turns exceeds pipeline.latencyTarget {} ms",
                p95.as_millis(),
                target.as_millis()
            ),
        ),
        _ => (degraded, reason, message),
    };
    set_condition(
        &mut s.conditions,
        DEGRADED,
        degraded,
        reason,
        message,
        g,
        now(),
    );
    let message = match input.progress {
        Progress::RollingUpdate => {
            "replacing workers of an older template; new ones start before old ones drain"
        }
        Progress::ScalingUp => "starting workers up to the desired count",
        Progress::ScalingDown => "draining surplus workers",
        Progress::Stable => "the workers match the desired count and template",
    };
    set_condition(
        &mut s.conditions,
        PROGRESSING,
        input.progress != Progress::Stable,
        input.progress.reason(),
        message,
        g,
        now(),
    );
    s.connection_state = f.connection_state;
    s.health_status = f.health_status;
    if f.checked {
        s.last_health_check = Some(input.now.clone());
    }
    s.active_sessions = i32::try_from(f.active_sessions).unwrap_or(i32::MAX);
    s.workers = f.counts.clone();
    s.worker_statuses = f.worker_statuses.clone();
    s.replicas = input.replicas;
    s.selector = Some(input.selector.clone());
    s
}

/// Whether `new` must be written over `current`.
pub fn needs_write(current: &VoiceBackendStatus, new: &VoiceBackendStatus, now: &Time) -> bool {
    if without_check_times(current) != without_check_times(new) {
        return true;
    }
    if new.last_health_check == current.last_health_check {
        return false;
    }
    match &current.last_health_check {
        None => true,
        Some(last) => {
            let age = now.0.duration_since(last.0);
            Duration::try_from(age).unwrap_or(Duration::ZERO) >= HEARTBEAT
        }
    }
}

/// What this controller writes, less the check times.
fn without_check_times(s: &VoiceBackendStatus) -> VoiceBackendStatus {
    let mut s = s.clone();
    s.pending_sessions = None;
    s.last_health_check = None;
    for w in &mut s.worker_statuses {
        w.last_check = None;
    }
    s
}

/// The Event of a connection state change: reason, and whether it is a warning.
pub fn connection_event(state: ConnectionState) -> (&'static str, bool) {
    match state {
        ConnectionState::Disconnected => ("ConnectionDisconnected", false),
        ConnectionState::Connecting => ("ConnectionConnecting", false),
        ConnectionState::Connected => ("ConnectionConnected", false),
        ConnectionState::Reconnecting => ("ConnectionReconnecting", true),
        ConnectionState::Error => ("ConnectionError", true),
    }
}

/// The Event of a health change: reason, and whether it is a warning.
pub fn health_event(health: HealthStatus) -> (&'static str, bool) {
    match health {
        HealthStatus::Unknown => ("HealthUnknown", false),
        HealthStatus::Healthy => ("HealthHealthy", false),
        HealthStatus::Degraded => ("HealthDegraded", true),
        HealthStatus::Unhealthy => ("HealthUnhealthy", true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use voice_crds::WorkerCounts;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("time"))
    }

    fn fold(checked: bool) -> Fold {
        Fold {
            connection_state: ConnectionState::Connected,
            health_status: HealthStatus::Healthy,
            checked,
            worker_statuses: Vec::new(),
            counts: WorkerCounts {
                desired: 1,
                ready: 1,
                draining: 0,
                total: 1,
            },
            active_sessions: 0,
            replace: Vec::new(),
        }
    }

    fn status(current: &VoiceBackendStatus, fold: &Fold, now: i64) -> VoiceBackendStatus {
        status_with_latency(current, fold, now, None)
    }

    fn status_with_latency(
        current: &VoiceBackendStatus,
        fold: &Fold,
        now: i64,
        latency: Option<(std::time::Duration, usize, std::time::Duration)>,
    ) -> VoiceBackendStatus {
        compute(&StatusInput {
            current,
            generation: Some(1),
            acceptance: &Acceptance::Accepted,
            fold,
            progress: Progress::Stable,
            replicas: 1,
            selector: "a=b".to_owned(),
            now: at(now),
            latency,
        })
    }

    #[test]
    fn a_p95_over_the_latency_target_makes_a_healthy_backend_degraded() {
        let ms = std::time::Duration::from_millis;
        let slow = status_with_latency(
            &VoiceBackendStatus::default(),
            &fold(true),
            10,
            Some((ms(900), 20, ms(500))),
        );
        let c = slow
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "LatencyTargetExceeded")
        );
        assert!(
            c.message.contains("900 ms") && c.message.contains("500 ms"),
            "{}",
            c.message
        );
        let fast = status_with_latency(
            &VoiceBackendStatus::default(),
            &fold(true),
            10,
            Some((ms(300), 20, ms(500))),
        );
        let c = fast
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(c.status, "False");
    }

    #[test]
    fn the_same_facts_are_not_rewritten_until_the_heartbeat() {
        let first = status(&VoiceBackendStatus::default(), &fold(true), 100);
        assert!(needs_write(
            &VoiceBackendStatus::default(),
            &first,
            &at(100)
        ));
        let again = status(&first, &fold(true), 110);
        assert!(!needs_write(&first, &again, &at(110)));
        let later = status(&first, &fold(true), 161);
        assert!(needs_write(&first, &later, &at(161)));
        // Conditions keep their transition time.
        assert_eq!(first.conditions, again.conditions);
    }

    #[test]
    fn with_nothing_checked_nothing_is_rewritten() {
        let first = status(&VoiceBackendStatus::default(), &fold(false), 100);
        let again = status(&first, &fold(false), 1000);
        assert!(!needs_write(&first, &again, &at(1000)));
    }

    #[test]
    fn a_change_is_written_at_once() {
        let first = status(&VoiceBackendStatus::default(), &fold(true), 100);
        let mut f = fold(true);
        f.health_status = HealthStatus::Degraded;
        let changed = status(&first, &f, 101);
        assert!(needs_write(&first, &changed, &at(101)));
        let degraded = changed
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .expect("Degraded");
        assert_eq!(degraded.status, "True");
    }
}
