//! What each pass of the round must look at, kept from the sessions that changed.
//!
//! A round used to walk every session several times (pending scan, unfinished admissions,
//! held sessions' workers, metadata, counts), so with 10,000 held it cost ~100 ms even when
//! one session had arrived. Now every input that changes a session's state in the loop
//! (watch event, admission outcome, status write, slot held or released, end) marks it
//! *touched*; the round first re-sorts only the touched sessions into three sets, then:
//! - the plan reads the `unplaced` set (Pending, no slot), and the counts come from it and
//!   from the ledger's per-backend counts;
//! - admissions to finish come from the `unfinished` set (held, still Pending);
//! - room claims come from the `livekit` set;
//! - held sessions are checked against their workers only when they were touched, unless the
//!   workers alive changed (a fingerprint of them per backend), which checks every one;
//! - metadata is compared for touched held sessions and those with a retry pending;
//! - clocks (pending timeout, maximum duration, idle timeout, TTL) are checked for the
//!   sessions whose deadline ([`session_timeouts::deadline`]) has come.
//!
//! The sets are supersets: each pass checks its condition again on what it reads, so a key
//! sorted before a later change in the same round is harmless. A missed touch would leave a
//! session out of a set, so everything is sorted again whole at start, after a relist, and
//! at each slow sweep (`REPAIR_INTERVAL`): a miss costs at most that long, never a slot.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::*;

/// The sessions a round looks at, sorted by what it may do with them.
#[derive(Debug)]
pub(super) struct Worklists {
    /// Sessions whose state changed since the round last sorted them.
    touched: HashSet<SessionKey>,
    /// Every session must be sorted again (start, relist, sweep).
    all: bool,
    /// Sessions Pending with no slot: the plan's candidates.
    pub(super) unplaced: HashSet<SessionKey>,
    /// Sessions holding a slot but not yet past Pending: admissions to finish.
    pub(super) unfinished: HashSet<SessionKey>,
    /// Sessions served in LiveKit rooms: the room claims.
    pub(super) livekit: HashSet<SessionKey>,
    /// The alive workers per backend when every held session was last checked against them.
    world: Option<u64>,
    /// When each session's first clock runs out, and the same ordered by time.
    deadline_of: HashMap<SessionKey, Timestamp>,
    deadlines: BTreeSet<(Timestamp, SessionKey)>,
}

impl Default for Worklists {
    fn default() -> Self {
        Self {
            touched: HashSet::new(),
            all: true,
            unplaced: HashSet::new(),
            unfinished: HashSet::new(),
            livekit: HashSet::new(),
            world: None,
            deadline_of: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

/// The sessions one round sorted: the touched ones, or all of them.
#[derive(Debug, Default)]
pub(super) struct Changed {
    pub(super) keys: HashSet<SessionKey>,
    pub(super) all: bool,
}

impl Worklists {
    /// `key`'s state changed: the next round sorts it again.
    pub(super) fn touch(&mut self, key: &SessionKey) {
        if !self.touched.contains(key) {
            self.touched.insert(key.clone());
        }
    }

    /// Every session is sorted again next round.
    pub(super) fn touch_all(&mut self) {
        self.all = true;
    }

    /// Whether the workers alive differ from those every held session was last checked
    /// against; remembers `world` as checked.
    pub(super) fn world_changed(&mut self, world: u64) -> bool {
        self.world.replace(world) != Some(world)
    }

    /// Looks at `key`'s clocks again at `at` (never, for `None`).
    pub(super) fn set_deadline(&mut self, key: &SessionKey, at: Option<Timestamp>) {
        if self.deadline_of.get(key) == at.as_ref() {
            return;
        }
        if let Some(old) = self.deadline_of.remove(key) {
            self.deadlines.remove(&(old, key.clone()));
        }
        if let Some(at) = at {
            self.deadline_of.insert(key.clone(), at);
            self.deadlines.insert((at, key.clone()));
        }
    }

    /// The sessions whose deadline is `now` or earlier, taken off the schedule.
    pub(super) fn take_due(&mut self, now: Timestamp) -> Vec<SessionKey> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.deadlines.first()
            && *at <= now
        {
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            self.deadline_of.remove(&key);
            due.push(key);
        }
        due
    }

    fn sort(&mut self, key: &SessionKey, unplaced: bool, unfinished: bool, livekit: bool) {
        for (set, member) in [
            (&mut self.unplaced, unplaced),
            (&mut self.unfinished, unfinished),
            (&mut self.livekit, livekit),
        ] {
            if member {
                if !set.contains(key) {
                    set.insert(key.clone());
                }
            } else {
                set.remove(key);
            }
        }
    }
}

impl Allocator {
    /// Marks `key` touched (see [`Worklists`]).
    pub(super) fn touch(&mut self, key: &SessionKey) {
        self.lists.touch(key);
    }

    /// Holds `slot` for `key` in the ledger.
    pub(super) fn hold_slot(&mut self, key: SessionKey, slot: Slot) {
        self.lists.touch(&key);
        self.ledger.hold(key, slot);
    }

    /// Frees `key`'s slot in the ledger, if it holds one.
    pub(super) fn release_slot(&mut self, key: &SessionKey) -> Option<Slot> {
        self.lists.touch(key);
        self.ledger.release(key)
    }

    /// Sorts the sessions touched since the last round (or, when due, every session) into
    /// the worklists, and returns which were sorted.
    pub(super) fn sort_changed(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        sweep: bool,
    ) -> Changed {
        let changed = Changed {
            keys: std::mem::take(&mut self.lists.touched),
            all: std::mem::take(&mut self.lists.all) || sweep,
        };
        if changed.all {
            self.lists.unplaced.clear();
            self.lists.unfinished.clear();
            self.lists.livekit.clear();
            self.lists.deadline_of.clear();
            self.lists.deadlines.clear();
            for (key, session) in sessions {
                self.sort_one(key, Some(session));
            }
        } else {
            for key in &changed.keys {
                self.sort_one(key, sessions.get(key));
            }
        }
        changed
    }

    fn sort_one(&mut self, key: &SessionKey, session: Option<&Arc<VoiceSession>>) {
        let Some(s) = session else {
            self.lists.sort(key, false, false, false);
            self.lists.set_deadline(key, None);
            return;
        };
        let pending = self.phase_of(key, s) == SessionPhase::Pending;
        let held = self.ledger.slot(key).is_some();
        let livekit = s.spec.transport == voice_crds::Transport::LiveKit;
        let deadline = session_timeouts::deadline(&self.clocks_of(key, s));
        self.lists
            .sort(key, pending && !held, pending && held, livekit);
        self.lists.set_deadline(key, deadline);
    }

    /// A fingerprint of which workers of which backends are alive: when it is unchanged, a
    /// held session that was not touched still has its backend and its worker.
    pub(super) fn world_print(
        &self,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
    ) -> u64 {
        // Summed per backend, so the map's order does not matter.
        backends.iter().fold(0u64, |sum, (key, (_, ips))| {
            let mut h = DefaultHasher::new();
            key.hash(&mut h);
            for pod in ips.keys() {
                pod.hash(&mut h);
                self.worker_alive(&key.namespace, pod).hash(&mut h);
            }
            sum.wrapping_add(h.finish())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_index::test_key as key;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn sessions_come_due_in_deadline_order_once_and_a_new_deadline_replaces_the_old() {
        let mut lists = Worklists::default();
        lists.set_deadline(&key("late"), Some(t(30)));
        lists.set_deadline(&key("early"), Some(t(10)));
        lists.set_deadline(&key("moved"), Some(t(5)));
        lists.set_deadline(&key("moved"), Some(t(20)));
        lists.set_deadline(&key("never"), Some(t(1)));
        lists.set_deadline(&key("never"), None);
        assert_eq!(lists.take_due(t(9)), Vec::<SessionKey>::new());
        assert_eq!(lists.take_due(t(20)), vec![key("early"), key("moved")]);
        assert_eq!(
            lists.take_due(t(20)),
            Vec::<SessionKey>::new(),
            "taken once"
        );
        assert_eq!(lists.take_due(t(1000)), vec![key("late")]);
        // Taken off the schedule: scheduling again works from scratch.
        lists.set_deadline(&key("late"), Some(t(40)));
        assert_eq!(lists.take_due(t(40)), vec![key("late")]);
    }

    #[test]
    fn a_session_is_in_exactly_the_sets_it_was_last_sorted_into() {
        let mut lists = Worklists::default();
        lists.sort(&key("a"), true, false, true);
        lists.sort(&key("b"), false, true, false);
        assert!(lists.unplaced.contains(&key("a")) && lists.livekit.contains(&key("a")));
        assert!(lists.unfinished.contains(&key("b")));
        lists.sort(&key("a"), false, true, true);
        assert!(!lists.unplaced.contains(&key("a")));
        assert!(lists.unfinished.contains(&key("a")) && lists.livekit.contains(&key("a")));
        lists.sort(&key("a"), false, false, false);
        assert!(
            ![&lists.unplaced, &lists.unfinished, &lists.livekit]
                .iter()
                .any(|set| set.contains(&key("a")))
        );
    }

    #[test]
    fn the_world_counts_as_changed_on_first_sight_and_when_its_print_moves() {
        let mut lists = Worklists::default();
        assert!(lists.world_changed(7));
        assert!(!lists.world_changed(7));
        assert!(lists.world_changed(8));
    }

    #[test]
    fn touches_are_remembered_once_each_and_everything_is_sorted_at_start() {
        let mut lists = Worklists::default();
        assert!(lists.all, "a new allocator sorts every session");
        lists.touch(&key("a"));
        lists.touch(&key("a"));
        assert_eq!(lists.touched.len(), 1);
    }
}
