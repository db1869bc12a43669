//! Controller heartbeats for `/healthz`: each controller loop beats while it makes progress,
//! and liveness fails when one has not beaten for too long, so Kubernetes restarts a leader
//! whose controller is stuck (and the standby takes over).
//!
//! The allocator and the live-status writer beat once per turn of their own loops (each turns
//! at least every second), so an await that never returns inside a round stops their beat.
//! The provider and backend controllers are kube-runtime `Controller` streams that run their
//! reconciles concurrently inside the task; they are wrapped in [`beating`], which beats while
//! the task is still polled: it catches a task that ended or a blocked thread, not one stuck
//! reconcile among many. A controller that ends or panics makes `main` exit at once anyway.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often [`beating`] beats.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Last beat of every controller of this process (none while standing by).
#[derive(Clone, Debug, Default)]
pub struct Heartbeats {
    last: Arc<Mutex<BTreeMap<&'static str, Instant>>>,
}

impl Heartbeats {
    /// Records that `controller` made progress now.
    pub fn beat(&self, controller: &'static str) {
        self.beat_at(controller, Instant::now());
    }

    /// Records a beat of `controller` at `at`.
    pub fn beat_at(&self, controller: &'static str, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(controller, at);
    }

    /// Controllers whose last beat is older than `max_age` at `now`, with that age.
    pub fn stale(&self, now: Instant, max_age: Duration) -> Vec<(&'static str, Duration)> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.iter()
            .map(|(name, at)| (*name, now.saturating_duration_since(*at)))
            .filter(|(_, age)| *age > max_age)
            .collect()
    }
}

/// Runs `controller`, beating as `name` every [`BEAT_INTERVAL`] while it is polled.
pub async fn beating<F: Future>(
    heartbeats: Heartbeats,
    name: &'static str,
    controller: F,
) -> F::Output {
    heartbeats.beat(name);
    let mut tick = tokio::time::interval(BEAT_INTERVAL);
    let mut controller = std::pin::pin!(controller);
    loop {
        tokio::select! {
            out = &mut controller => return out,
            _ = tick.tick() => heartbeats.beat(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_that_stopped_beating_is_stale_and_the_others_are_not() {
        let hb = Heartbeats::default();
        let start = Instant::now();
        hb.beat_at("allocator", start);
        hb.beat_at("backend", start + Duration::from_secs(50));
        let now = start + Duration::from_secs(61);
        assert_eq!(
            hb.stale(now, Duration::from_secs(60)),
            vec![("allocator", Duration::from_secs(61))]
        );
        hb.beat_at("allocator", now);
        assert!(hb.stale(now, Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_standby_without_controllers_is_never_stale() {
        let hb = Heartbeats::default();
        assert!(
            hb.stale(Instant::now() + Duration::from_secs(3600), Duration::ZERO)
                .is_empty()
        );
    }
}
