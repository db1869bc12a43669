//! Condition types and the helper that sets one without churning `lastTransitionTime`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition: the object is valid and its references resolve.
pub const ACCEPTED: &str = "Accepted";
/// Condition: the object serves (backend: a worker is ready; session: the client is connected
/// and the pipeline runs).
pub const READY: &str = "Ready";
/// Condition: the backend serves, but below what it wants.
pub const DEGRADED: &str = "Degraded";
/// Condition: the backend is scaling or rolling out.
pub const PROGRESSING: &str = "Progressing";
/// Condition: the session holds a slot on a worker.
pub const ADMITTED: &str = "Admitted";
/// Condition: the session's client is connected.
pub const CONNECTED: &str = "Connected";

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` when the status did not
/// change, so rewriting the same facts is a no-op for server-side apply.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: now,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut cs = Vec::new();
        set_condition(&mut cs, READY, false, "Starting", "", Some(1), at(10));
        set_condition(&mut cs, READY, false, "Starting", "still", Some(1), at(20));
        assert_eq!(cs[0].last_transition_time, at(10));
        set_condition(&mut cs, READY, true, "WorkersReady", "", Some(1), at(30));
        assert_eq!(cs[0].last_transition_time, at(30));
        assert_eq!(cs.len(), 1);
    }
}
