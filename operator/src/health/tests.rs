use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use voice_crds::{ConnectionState, HealthStatus, WorkerPhase, WorkerStatus};

use super::*;

fn now() -> Time {
    Time(Timestamp::from_second(1000).expect("time"))
}

fn input(prev: ConnectionState, desired: u32, previous: &[WorkerStatus]) -> FoldInput<'_> {
    FoldInput {
        accepted: true,
        previous_connection: prev,
        ever_checked: false,
        previous_workers: previous,
        desired,
        failure_threshold: 3,
        lost_worker: false,
        now: now(),
    }
}

fn ok(held: u32) -> Option<Result<WorkerStats, String>> {
    Some(Ok(WorkerStats {
        capacity: 4,
        active: held,
        reserved: 0,
        draining: false,
        serving: true,
    }))
}

fn worker(name: &str, check: Option<Result<WorkerStats, String>>) -> WorkerObservation {
    WorkerObservation {
        name: name.to_owned(),
        pod_ip: Some("127.0.0.2".to_owned()),
        ready: true,
        draining: false,
        check,
    }
}

#[test]
fn no_pods_is_disconnected_and_unknown() {
    let f = fold(&input(ConnectionState::Disconnected, 0, &[]), &[]);
    assert_eq!(f.connection_state, ConnectionState::Disconnected);
    assert_eq!(f.health_status, HealthStatus::Unknown);
    assert!(!f.checked);
}

#[test]
fn starting_pods_are_connecting_then_healthy_workers_connect() {
    let starting = WorkerObservation {
        ready: false,
        check: None,
        ..worker("a", None)
    };
    let f = fold(&input(ConnectionState::Disconnected, 1, &[]), &[starting]);
    assert_eq!(f.connection_state, ConnectionState::Connecting);
    let f = fold(
        &input(ConnectionState::Connecting, 2, &[]),
        &[worker("a", ok(1)), worker("b", ok(2))],
    );
    assert_eq!(f.connection_state, ConnectionState::Connected);
    assert_eq!(f.health_status, HealthStatus::Healthy);
    assert_eq!(f.active_sessions, 3);
    assert_eq!(f.counts.ready, 2);
    assert_eq!(f.worker_statuses[0].phase, WorkerPhase::Ready);
}

#[test]
fn disconnected_never_jumps_straight_to_connected() {
    let f = fold(
        &input(ConnectionState::Disconnected, 1, &[]),
        &[worker("a", ok(0))],
    );
    assert_eq!(f.connection_state, ConnectionState::Connecting);
    let f = fold(
        &input(ConnectionState::Error, 1, &[]),
        &[worker("a", ok(0))],
    );
    assert_eq!(f.connection_state, ConnectionState::Reconnecting);
}

#[test]
fn a_failing_worker_makes_a_connected_backend_reconnecting_and_degraded() {
    let f = fold(
        &input(ConnectionState::Connected, 2, &[]),
        &[
            worker("a", ok(0)),
            worker("b", Some(Err("refused".to_owned()))),
        ],
    );
    assert_eq!(f.connection_state, ConnectionState::Reconnecting);
    assert_eq!(f.health_status, HealthStatus::Degraded);
    assert_eq!(f.worker_statuses[1].consecutive_failures, 1);
    assert_eq!(f.worker_statuses[1].message.as_deref(), Some("refused"));
    // Recovery.
    let f = fold(
        &input(ConnectionState::Reconnecting, 2, &[]),
        &[worker("a", ok(0)), worker("b", ok(0))],
    );
    assert_eq!(f.connection_state, ConnectionState::Connected);
    assert_eq!(f.health_status, HealthStatus::Healthy);
}

#[test]
fn fewer_healthy_than_desired_is_degraded() {
    let f = fold(
        &input(ConnectionState::Connected, 3, &[]),
        &[worker("a", ok(0))],
    );
    assert_eq!(f.health_status, HealthStatus::Degraded);
    assert_eq!(f.connection_state, ConnectionState::Connected);
}

#[test]
fn a_worker_past_the_threshold_is_replaced() {
    let previous = [WorkerStatus {
        name: "a".to_owned(),
        consecutive_failures: 2,
        ..WorkerStatus::default()
    }];
    let f = fold(
        &input(ConnectionState::Connected, 1, &previous),
        &[worker("a", Some(Err("timeout".to_owned())))],
    );
    assert_eq!(f.replace, vec!["a".to_owned()]);
    assert_eq!(f.health_status, HealthStatus::Unhealthy);
    assert_eq!(f.connection_state, ConnectionState::Reconnecting);
}

#[test]
fn a_rejected_backend_is_in_error() {
    let mut i = input(ConnectionState::Connected, 1, &[]);
    i.accepted = false;
    let f = fold(&i, &[worker("a", ok(0))]);
    assert_eq!(f.connection_state, ConnectionState::Error);
}

#[test]
fn draining_workers_count_their_sessions_but_not_as_ready() {
    let mut w = worker(
        "a",
        Some(Ok(WorkerStats {
            capacity: 4,
            active: 2,
            reserved: 1,
            draining: true,
            serving: false,
        })),
    );
    w.draining = true;
    let f = fold(&input(ConnectionState::Connected, 0, &[]), &[w]);
    assert_eq!(f.counts.draining, 1);
    assert_eq!(f.counts.ready, 0);
    assert_eq!(f.active_sessions, 3);
    assert_eq!(f.worker_statuses[0].phase, WorkerPhase::Draining);
}

#[test]
fn a_worker_that_answers_but_is_not_ready_for_kubernetes_is_not_counted_healthy() {
    let mut w = worker("a", ok(0));
    w.ready = false;
    let f = fold(&input(ConnectionState::Connected, 1, &[]), &[w]);
    assert_eq!(f.counts.ready, 0);
    assert_eq!(f.worker_statuses[0].phase, WorkerPhase::Starting);
    assert_eq!(f.worker_statuses[0].consecutive_failures, 0);
}

#[test]
fn a_hung_worker_that_lost_readiness_still_counts_failures() {
    let previous = [WorkerStatus {
        name: "a".to_owned(),
        phase: WorkerPhase::Ready,
        consecutive_failures: 1,
        ..WorkerStatus::default()
    }];
    let mut w = worker("a", Some(Err("no answer within 1s".to_owned())));
    w.ready = false;
    let f = fold(&input(ConnectionState::Connected, 1, &previous), &[w]);
    assert_eq!(f.worker_statuses[0].consecutive_failures, 2);
    assert_eq!(f.worker_statuses[0].phase, WorkerPhase::Unhealthy);
}
