//! Recent turn latencies per backend, from the workers' turn events: the backend's p95 is
//! compared with its `pipeline.latencyTarget`, and a backend that misses it is `Degraded`.
//! Pure window logic; time is an argument.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ledger::BackendKey;

/// Turns kept per backend.
const KEPT: usize = 200;
/// Turns older than this do not count.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Fewest turns in the window before a p95 is claimed.
pub const MIN_TURNS: usize = 5;

/// One backend's recent turns: `(when, total latency)`, oldest first.
type Window = VecDeque<(Instant, Duration)>;

/// Shared per-backend windows of recent turns.
#[derive(Clone, Debug, Default)]
pub struct TurnLatencies {
    windows: Arc<Mutex<HashMap<BackendKey, Window>>>,
}

impl TurnLatencies {
    /// Records one turn of `backend`.
    pub fn record(&self, backend: BackendKey, total: Duration, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry(backend).or_default();
        window.push_back((now, total));
        while window.len() > KEPT {
            window.pop_front();
        }
    }

    /// The p95 of `backend`'s turns within [`WINDOW`] of `now`, and how many there were;
    /// `None` with fewer than [`MIN_TURNS`].
    pub fn p95(&self, backend: &BackendKey, now: Instant) -> Option<(Duration, usize)> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut recent: Vec<Duration> = windows
            .get(backend)?
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= WINDOW)
            .map(|(_, d)| *d)
            .collect();
        if recent.len() < MIN_TURNS {
            return None;
        }
        recent.sort_unstable();
        let index = (recent.len() * 95).div_ceil(100).saturating_sub(1);
        Some((recent[index], recent.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BackendKey {
        BackendKey {
            namespace: "ns".into(),
            name: "b".into(),
        }
    }

    #[test]
    fn p95_needs_enough_recent_turns_and_picks_the_slow_tail() {
        let l = TurnLatencies::default();
        let t0 = Instant::now();
        for i in 0..4 {
            l.record(key(), Duration::from_millis(100 + i), t0);
        }
        assert_eq!(l.p95(&key(), t0), None, "4 turns are too few");
        for i in 0..16 {
            l.record(key(), Duration::from_millis(100 + i), t0);
        }
        l.record(key(), Duration::from_millis(2000), t0);
        let (p95, n) = l.p95(&key(), t0).unwrap();
        assert_eq!(n, 21);
        assert!(
            p95 >= Duration::from_millis(115) && p95 < Duration::from_millis(2000),
            "{p95:?}"
        );
        l.record(key(), Duration::from_millis(2000), t0);
        assert_eq!(l.p95(&key(), t0).unwrap().0, Duration::from_millis(2000));
        // Old turns fall out of the window.
        assert_eq!(l.p95(&key(), t0 + WINDOW + Duration::from_secs(1)), None);
    }
}
