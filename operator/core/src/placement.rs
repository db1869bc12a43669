//! Which worker a session goes to.

use voice_crds::Placement;

/// A worker as the allocator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerView {
    /// Pod name.
    pub name: String,
    /// Ready and healthy: may take sessions.
    pub ready: bool,
    /// Draining: takes no new sessions.
    pub draining: bool,
    /// Sessions it may hold (`sessionsPerWorker`).
    pub capacity: u32,
    /// Sessions it holds, from the ledger.
    pub held: u32,
}

impl WorkerView {
    /// Whether the worker can take one more session.
    pub fn has_room(&self) -> bool {
        self.ready && !self.draining && self.held < self.capacity
    }
}

/// Picks a worker with room: `Packed` fills the fullest first (so idle workers can be scaled
/// away), `Distributed` the emptiest. Ties go to the lowest name, so a decision is repeatable.
pub fn pick(policy: Placement, workers: &[WorkerView]) -> Option<&WorkerView> {
    let candidates = workers.iter().filter(|w| w.has_room());
    match policy {
        Placement::Packed => {
            candidates.min_by(|a, b| b.held.cmp(&a.held).then_with(|| a.name.cmp(&b.name)))
        }
        Placement::Distributed => {
            candidates.min_by(|a, b| a.held.cmp(&b.held).then_with(|| a.name.cmp(&b.name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, held: u32) -> WorkerView {
        WorkerView {
            name: name.into(),
            ready: true,
            draining: false,
            capacity: 3,
            held,
        }
    }

    #[test]
    fn packed_fills_the_fullest_worker_with_room() {
        let ws = [w("a", 1), w("b", 2), w("c", 3)];
        assert_eq!(pick(Placement::Packed, &ws).unwrap().name, "b");
    }

    #[test]
    fn distributed_picks_the_least_loaded() {
        let ws = [w("a", 1), w("b", 0), w("c", 0)];
        assert_eq!(pick(Placement::Distributed, &ws).unwrap().name, "b");
    }

    #[test]
    fn draining_and_unready_workers_take_nothing() {
        let mut d = w("d", 0);
        d.draining = true;
        let mut u = w("u", 0);
        u.ready = false;
        assert_eq!(pick(Placement::Distributed, &[d, u, w("full", 3)]), None);
    }
}
