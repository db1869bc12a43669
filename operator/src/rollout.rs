//! Which worker pods to create, drain or delete: scaling and rolling updates in one plan.
//!
//! Pure: the backend controller describes its pods as [`PodView`]s and carries out the
//! [`Plan`]. Rules:
//! - Pods of the current template ("new") are brought to `desired` first.
//! - Pods of an older template ("old") are drained only as new pods become Ready, so a
//!   rollout never lowers serving capacity: old pods kept = desired − new ready pods.
//! - Surplus pods are chosen not-ready first (they hold no sessions and are deleted outright),
//!   then empty, then those with the fewest sessions; ties go by name so the plan is stable.
//! - Finished pods (`Failed`/`Succeeded`: with `restartPolicy: Never` a dead worker ends so)
//!   are deleted and thereby replaced.
//! - Draining pods and pods already being deleted count for nothing: they are leaving.

/// One worker pod as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Whether its `template-hash` label matches the current template.
    pub current: bool,
    /// Pod `Ready` condition.
    pub ready: bool,
    /// Marked draining.
    pub draining: bool,
    /// `deletionTimestamp` set.
    pub deleting: bool,
    /// Phase `Succeeded` or `Failed`.
    pub finished: bool,
    /// Sessions last reported by the worker, if known.
    pub sessions: Option<u32>,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New pods to create.
    pub create: u32,
    /// Ready pods to mark draining.
    pub drain: Vec<String>,
    /// Pods to delete now (finished, or surplus that never became ready).
    pub delete: Vec<String>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.create == 0 && self.drain.is_empty() && self.delete.is_empty()
    }
}

/// Plans one step toward `desired` current-template pods.
pub fn plan(pods: &[PodView], desired: u32) -> Plan {
    let mut out = Plan::default();
    let mut live_new = Vec::new();
    let mut live_old = Vec::new();
    for pod in pods {
        if pod.deleting {
            continue;
        }
        if pod.finished {
            out.delete.push(pod.name.clone());
            continue;
        }
        if pod.draining {
            continue;
        }
        if pod.current {
            live_new.push(pod);
        } else {
            live_old.push(pod);
        }
    }
    let desired_usize = desired as usize;
    let new_count = u32::try_from(live_new.len()).unwrap_or(u32::MAX);
    out.create = desired.saturating_sub(new_count);
    let new_ready = live_new.iter().filter(|p| p.ready).count();
    let old_keep = desired_usize.saturating_sub(new_ready);
    remove_surplus(&mut out, live_new, desired_usize);
    remove_surplus(&mut out, live_old, old_keep);
    out
}

/// Keeps `keep` of `pods`, the busiest ready ones, and drains or deletes the rest.
fn remove_surplus(out: &mut Plan, mut pods: Vec<&PodView>, keep: usize) {
    if pods.len() <= keep {
        return;
    }
    // Order by how cheap a pod is to lose: not ready, then fewest sessions (unknown counts as
    // none), then name.
    pods.sort_by(|a, b| {
        (a.ready, a.sessions.unwrap_or(0), &a.name).cmp(&(
            b.ready,
            b.sessions.unwrap_or(0),
            &b.name,
        ))
    });
    let surplus = pods.len() - keep;
    for pod in pods.into_iter().take(surplus) {
        if pod.ready {
            out.drain.push(pod.name.clone());
        } else {
            out.delete.push(pod.name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(name: &str, current: bool, ready: bool, sessions: u32) -> PodView {
        PodView {
            name: name.to_owned(),
            current,
            ready,
            draining: false,
            deleting: false,
            finished: false,
            sessions: Some(sessions),
        }
    }

    #[test]
    fn scale_up_creates_the_missing_pods() {
        let p = plan(&[pod("a", true, true, 0)], 3);
        assert_eq!(
            p,
            Plan {
                create: 2,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn scale_down_drains_empty_pods_first_then_the_least_busy() {
        let pods = [
            pod("a", true, true, 5),
            pod("b", true, true, 0),
            pod("c", true, true, 2),
            pod("d", true, true, 9),
        ];
        let p = plan(&pods, 2);
        assert_eq!(p.drain, vec!["b".to_owned(), "c".to_owned()]);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn surplus_pods_that_never_became_ready_are_deleted_outright() {
        let pods = [pod("a", true, true, 1), pod("b", true, false, 0)];
        let p = plan(&pods, 1);
        assert_eq!(p.delete, vec!["b".to_owned()]);
        assert!(p.drain.is_empty());
    }

    #[test]
    fn a_rollout_creates_new_pods_before_draining_old_ones() {
        let old = [pod("o1", false, true, 1), pod("o2", false, true, 3)];
        let p = plan(&old, 2);
        assert_eq!(
            p,
            Plan {
                create: 2,
                ..Plan::default()
            }
        );

        // One new pod ready: one old pod (the less busy) may go.
        let mut pods = old.to_vec();
        pods.push(pod("n1", true, true, 0));
        pods.push(pod("n2", true, false, 0));
        let p = plan(&pods, 2);
        assert_eq!(p.create, 0);
        assert_eq!(p.drain, vec!["o1".to_owned()]);

        // Both ready: the other goes too.
        pods[3].ready = true;
        let p = plan(&pods, 2);
        assert_eq!(p.drain, vec!["o1".to_owned(), "o2".to_owned()]);
    }

    #[test]
    fn finished_pods_are_deleted_and_replaced() {
        let mut dead = pod("a", true, false, 0);
        dead.finished = true;
        let p = plan(&[dead, pod("b", true, true, 0)], 2);
        assert_eq!(p.delete, vec!["a".to_owned()]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn draining_and_deleting_pods_are_not_counted() {
        let mut draining = pod("a", true, true, 4);
        draining.draining = true;
        let mut deleting = pod("b", true, true, 0);
        deleting.deleting = true;
        let p = plan(&[draining, deleting], 1);
        assert_eq!(
            p,
            Plan {
                create: 1,
                ..Plan::default()
            }
        );
    }

    fn any_pod() -> impl Strategy<Value = PodView> {
        (
            "[a-z]{1,4}",
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0u32..10),
        )
            .prop_map(
                |(name, current, ready, draining, deleting, finished, sessions)| PodView {
                    name,
                    current,
                    ready,
                    draining,
                    deleting,
                    finished,
                    sessions,
                },
            )
    }

    proptest! {
        #[test]
        fn after_the_plan_serving_capacity_is_never_below_desired_or_what_was_ready(
            pods in proptest::collection::vec(any_pod(), 0..12), desired in 0u32..8,
        ) {
            // Unique names: the plan names pods, and two pods never share one.
            let pods: Vec<PodView> = pods.into_iter().enumerate().map(|(i, mut q)| { q.name = format!("p{i}"); q }).collect();
            let p = plan(&pods, desired);
            let removed = |n: &str| p.drain.iter().chain(&p.delete).any(|x| x == n);
            let live = |q: &&PodView| !q.deleting && !q.finished && !q.draining;
            let ready_before = pods.iter().filter(live).filter(|q| q.ready).count();
            let ready_after = pods.iter().filter(live).filter(|q| q.ready && !removed(&q.name)).count();
            // Ready pods are only removed down to `desired`.
            prop_assert!(ready_after >= ready_before.min(desired as usize));
            // Current pods plus creations reach desired, never more.
            let new_after = pods.iter().filter(live).filter(|q| q.current && !removed(&q.name)).count() + p.create as usize;
            prop_assert_eq!(new_after, desired as usize);
        }
    }
}
