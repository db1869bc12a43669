//! How many workers a backend wants.
//!
//! Pure: desired = clamp(minWorkers, maxWorkers, ceil((active + pending + bufferSessions) /
//! sessionsPerWorker)), or `spec.replicas` (set through the scale subresource by `kubectl
//! scale`, HPA or KEDA) clamped to the same bounds.

/// The inputs of [`desired_workers`], all from the backend's spec and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalingInput {
    /// `spec.scaling.minWorkers`.
    pub min_workers: u32,
    /// `spec.scaling.maxWorkers`.
    pub max_workers: u32,
    /// `spec.scaling.bufferSessions`.
    pub buffer_sessions: u32,
    /// `spec.workers.sessionsPerWorker` (0 is treated as 1; the schema forbids it anyway).
    pub sessions_per_worker: u32,
    /// `spec.replicas`, when set.
    pub replicas: Option<u32>,
    /// Sessions holding a slot (connected or reserved).
    pub active_sessions: u32,
    /// Sessions waiting for admission.
    pub pending_sessions: u32,
}

impl ScalingInput {
    /// Reads the scaling inputs of a backend; negative numbers (impossible past the schema)
    /// count as 0.
    pub fn from_backend(spec: &voice_crds::VoiceBackendSpec, active: u32, pending: u32) -> Self {
        let n = |v: i32| u32::try_from(v).unwrap_or(0);
        ScalingInput {
            min_workers: n(spec.scaling.min_workers),
            max_workers: n(spec.scaling.max_workers),
            buffer_sessions: n(spec.scaling.buffer_sessions),
            sessions_per_worker: n(spec.workers.sessions_per_worker),
            replicas: spec.replicas.map(n),
            active_sessions: active,
            pending_sessions: pending,
        }
    }
}

/// The number of workers the backend should run.
pub fn desired_workers(input: ScalingInput) -> u32 {
    let min = input.min_workers;
    // The schema keeps min <= max; should an old object break that, min wins (never fewer
    // workers than promised).
    let max = input.max_workers.max(min);
    let wanted = match input.replicas {
        Some(replicas) => replicas,
        None => {
            let load = u64::from(input.active_sessions)
                + u64::from(input.pending_sessions)
                + u64::from(input.buffer_sessions);
            let per = u64::from(input.sessions_per_worker.max(1));
            u32::try_from(load.div_ceil(per)).unwrap_or(u32::MAX)
        }
    };
    wanted.clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input(min: u32, max: u32, spw: u32, active: u32) -> ScalingInput {
        ScalingInput {
            min_workers: min,
            max_workers: max,
            buffer_sessions: 0,
            sessions_per_worker: spw,
            replicas: None,
            active_sessions: active,
            pending_sessions: 0,
        }
    }

    #[test]
    fn load_rounds_up_to_whole_workers() {
        assert_eq!(desired_workers(input(0, 10, 10, 0)), 0);
        assert_eq!(desired_workers(input(0, 10, 10, 1)), 1);
        assert_eq!(desired_workers(input(0, 10, 10, 11)), 2);
        let buffered = ScalingInput {
            buffer_sessions: 5,
            pending_sessions: 6,
            ..input(1, 10, 4, 1)
        };
        assert_eq!(desired_workers(buffered), 3);
    }

    #[test]
    fn replicas_override_the_formula_within_bounds() {
        let with = |r| ScalingInput {
            replicas: Some(r),
            ..input(2, 5, 10, 100)
        };
        assert_eq!(desired_workers(with(4)), 4);
        assert_eq!(desired_workers(with(0)), 2);
        assert_eq!(desired_workers(with(9)), 5);
    }

    fn any_input() -> impl Strategy<Value = ScalingInput> {
        (
            0u32..50,
            0u32..50,
            0u32..1000,
            0u32..200,
            proptest::option::of(0u32..100),
            0u32..100_000,
            0u32..100_000,
        )
            .prop_map(|(min, extra, buffer, spw, replicas, active, pending)| {
                ScalingInput {
                    min_workers: min,
                    max_workers: min + extra,
                    buffer_sessions: buffer,
                    sessions_per_worker: spw,
                    replicas,
                    active_sessions: active,
                    pending_sessions: pending,
                }
            })
    }

    proptest! {
        #[test]
        fn always_within_bounds(i in any_input()) {
            let d = desired_workers(i);
            prop_assert!(d >= i.min_workers && d <= i.max_workers);
        }

        #[test]
        fn monotone_in_load(i in any_input(), more_active in 0u32..1000, more_pending in 0u32..1000) {
            let busier = ScalingInput {
                active_sessions: i.active_sessions + more_active,
                pending_sessions: i.pending_sessions + more_pending,
                ..i
            };
            prop_assert!(desired_workers(busier) >= desired_workers(i));
        }

        #[test]
        fn replicas_ignore_load(i in any_input(), replicas in 0u32..100, active in 0u32..100_000) {
            let a = ScalingInput { replicas: Some(replicas), ..i };
            let b = ScalingInput { active_sessions: active, ..a };
            prop_assert_eq!(desired_workers(a), desired_workers(b));
            prop_assert_eq!(desired_workers(a), replicas.clamp(i.min_workers, i.max_workers));
        }

        #[test]
        fn enough_capacity_for_the_load_when_max_allows(i in any_input()) {
            let d = desired_workers(ScalingInput { replicas: None, ..i });
            let load = u64::from(i.active_sessions) + u64::from(i.pending_sessions) + u64::from(i.buffer_sessions);
            if d < i.max_workers {
                prop_assert!(u64::from(d) * u64::from(i.sessions_per_worker.max(1)) >= load);
            }
        }
    }
}
