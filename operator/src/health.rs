//! Folding worker health checks into a backend's connection state, health and counts.
//!
//! Pure: the backend controller checks each Ready worker over gRPC (see
//! [`crate::worker_client`]) and hands the results here with the previous status; what comes
//! back is written into `status`. Time is an argument.
//!
//! - connectionState: `Error` when the backend is not Accepted; `Disconnected` with no worker
//!   pods; `Connected` when at least one worker is healthy and none failed this round;
//!   `Reconnecting` when it was connected and a worker failed or was lost; `Connecting`
//!   otherwise. Moves the state diagram forbids (`Disconnected → Connected`, `Error →
//!   Connected`) go through the allowed intermediate state first.
//! - healthStatus: `Healthy` when every checked worker is healthy and at least `desired` are;
//!   `Degraded` when some are healthy but not all or not enough; `Unhealthy` when none is
//!   (after a check has ever completed; `Unknown` before).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use voice_crds::{ConnectionState, HealthStatus, WorkerCounts, WorkerPhase, WorkerStatus};

use crate::worker_client::WorkerStats;

/// One worker pod and, if it was checked this round, the result.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerObservation {
    /// Pod name.
    pub name: String,
    /// Pod IP.
    pub pod_ip: Option<String>,
    /// The pod's `Ready` condition.
    pub ready: bool,
    /// Marked draining by the operator.
    pub draining: bool,
    /// This round's check; `None` when the worker was not checked (not Ready, draining).
    pub check: Option<Result<WorkerStats, String>>,
}

/// What the fold needs beyond the workers.
#[derive(Clone, Debug)]
pub struct FoldInput<'a> {
    /// Whether the backend is Accepted.
    pub accepted: bool,
    /// Connection state before this round.
    pub previous_connection: ConnectionState,
    /// Whether a health check ever completed (`status.lastHealthCheck` is set).
    pub ever_checked: bool,
    /// Per-worker statuses before this round, for consecutive failure counts.
    pub previous_workers: &'a [WorkerStatus],
    /// Workers wanted.
    pub desired: u32,
    /// Consecutive failures after which a worker is replaced.
    pub failure_threshold: u32,
    /// A worker pod died (finished) since the last round.
    pub lost_worker: bool,
    /// Now.
    pub now: Time,
}

/// The folded result.
#[derive(Clone, Debug, PartialEq)]
pub struct Fold {
    /// New connection state.
    pub connection_state: ConnectionState,
    /// New health.
    pub health_status: HealthStatus,
    /// Whether at least one check ran this round.
    pub checked: bool,
    /// Per-worker statuses, sorted by name.
    pub worker_statuses: Vec<WorkerStatus>,
    /// Counts (desired, ready = healthy, draining, total).
    pub counts: WorkerCounts,
    /// Sessions held on all workers (active + reserved).
    pub active_sessions: u32,
    /// Workers past the failure threshold, to delete and replace.
    pub replace: Vec<String>,
}

/// Folds one round of checks.
pub fn fold(input: &FoldInput<'_>, workers: &[WorkerObservation]) -> Fold {
    let mut statuses = Vec::with_capacity(workers.len());
    let mut replace = Vec::new();
    let (mut healthy, mut failing, mut draining, mut sessions) = (0u32, 0u32, 0u32, 0u32);
    let mut checked = false;
    for w in workers {
        let before = input.previous_workers.iter().find(|s| s.name == w.name);
        let mut status = WorkerStatus {
            name: w.name.clone(),
            pod_ip: w.pod_ip.clone(),
            phase: WorkerPhase::Starting,
            sessions: before.map_or(0, |b| b.sessions),
            capacity: before.map_or(0, |b| b.capacity),
            consecutive_failures: before.map_or(0, |b| b.consecutive_failures),
            last_check: before.and_then(|b| b.last_check.clone()),
            message: before.and_then(|b| b.message.clone()),
        };
        match &w.check {
            Some(Ok(stats)) if stats.serving || w.draining => {
                checked = true;
                status.sessions = i32::try_from(stats.held()).unwrap_or(i32::MAX);
                status.capacity = i32::try_from(stats.capacity).unwrap_or(i32::MAX);
                status.consecutive_failures = 0;
                status.last_check = Some(input.now.clone());
                status.message = None;
                // Healthy means answering *and* Ready for Kubernetes: a worker whose
                // readiness probe fails is not counted until the kubelet agrees again.
                if !w.draining && w.ready {
                    status.phase = WorkerPhase::Ready;
                    healthy += 1;
                }
            }
            Some(result) => {
                checked = true;
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                status.last_check = Some(input.now.clone());
                status.message = Some(match result {
                    Ok(_) => "grpc.health.v1 reports NOT_SERVING".to_owned(),
                    Err(e) => e.clone(),
                });
                status.phase = WorkerPhase::Unhealthy;
                failing += 1;
                if u32::try_from(status.consecutive_failures).unwrap_or(0)
                    >= input.failure_threshold
                {
                    replace.push(w.name.clone());
                }
            }
            None if w.ready && !w.draining => status.phase = WorkerPhase::Starting,
            None => {}
        }
        if w.draining {
            status.phase = WorkerPhase::Draining;
            draining += 1;
        }
        if !w.ready && !w.draining && w.check.is_none() {
            // A worker that is not Ready carries no fresh facts; keep it plain.
            status.phase = WorkerPhase::Starting;
        }
        sessions = sessions.saturating_add(u32::try_from(status.sessions).unwrap_or(0));
        statuses.push(status);
    }
    statuses.sort_by(|a, b| a.name.cmp(&b.name));
    let total = u32::try_from(workers.len()).unwrap_or(u32::MAX);
    let connection_state = connection(input, total, healthy, failing);
    let health_status = if healthy == 0 {
        if input.ever_checked || checked {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Unknown
        }
    } else if failing > 0 || healthy < input.desired {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    let to_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    Fold {
        connection_state,
        health_status: if input.accepted {
            health_status
        } else {
            HealthStatus::Unknown
        },
        checked,
        worker_statuses: statuses,
        counts: WorkerCounts {
            desired: to_i32(input.desired),
            ready: to_i32(healthy),
            draining: to_i32(draining),
            total: to_i32(total),
        },
        active_sessions: sessions,
        replace,
    }
}

fn connection(input: &FoldInput<'_>, total: u32, healthy: u32, failing: u32) -> ConnectionState {
    use ConnectionState::*;
    let prev = input.previous_connection;
    let was_connected = matches!(prev, Connected | Reconnecting);
    let target = if !input.accepted {
        Error
    } else if total == 0 {
        Disconnected
    } else if was_connected && (failing > 0 || input.lost_worker || healthy == 0) {
        Reconnecting
    } else if healthy > 0 {
        Connected
    } else {
        Connecting
    };
    if prev.can_transition_to(target) {
        return target;
    }
    // The diagram forbids the direct move: take the allowed step toward it.
    match (prev, target) {
        (Error, _) => Reconnecting,
        (Disconnected, _) => Connecting,
        _ => prev,
    }
}

#[cfg(test)]
mod tests;
