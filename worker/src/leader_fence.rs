//! Refuses control calls from an operator that has been replaced by a newer leader.
//!
//! Sans-IO: the service hands in the epoch a call carries and gets a verdict back. Clocks
//! play no part: leaders are ordered by their Lease's transition count alone, so a leader
//! that was paused (SIGSTOP, a long GC, a partitioned node) and wakes up still believing it
//! leads is refused here by the first worker its successor has talked to.

use std::sync::Mutex;

use voice_proto::leader_epoch::{LeaderEpoch, STALE_PREFIX};

/// The highest leader epoch this worker has seen.
#[derive(Debug, Default)]
pub struct LeaderFence {
    highest: Mutex<Option<LeaderEpoch>>,
}

impl LeaderFence {
    /// Admits a call carrying `claim` (raising the fence when it is newer) or says why not.
    pub fn admit(&self, claim: Option<&LeaderEpoch>) -> Result<(), String> {
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        match (claim, highest.as_ref()) {
            (_, None) => {
                *highest = claim.cloned();
                Ok(())
            }
            (None, Some(seen)) => Err(format!(
                "{STALE_PREFIX}: the call carries no leader epoch and this worker follows epoch {} of {}",
                seen.epoch, seen.leader
            )),
            (Some(claim), Some(seen)) if claim.epoch > seen.epoch => {
                tracing::info!(
                    epoch = claim.epoch,
                    leader = %claim.leader,
                    previous = seen.epoch,
                    "following a new leader"
                );
                *highest = Some(claim.clone());
                Ok(())
            }
            (Some(claim), Some(seen)) if claim == seen => Ok(()),
            (Some(claim), Some(seen)) => Err(format!(
                "{STALE_PREFIX}: {} at epoch {} is not the leader this worker follows (epoch {} of {})",
                claim.leader, claim.epoch, seen.epoch, seen.leader
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(epoch: u64, leader: &str) -> LeaderEpoch {
        LeaderEpoch {
            epoch,
            leader: leader.to_owned(),
        }
    }

    #[test]
    fn a_newer_leader_fences_the_older_one() {
        let fence = LeaderFence::default();
        assert_eq!(fence.admit(Some(&claim(3, "a"))), Ok(()));
        assert_eq!(fence.admit(Some(&claim(3, "a"))), Ok(()));
        assert_eq!(fence.admit(Some(&claim(4, "b"))), Ok(()));
        let refused = fence.admit(Some(&claim(3, "a"))).expect_err("a is stale");
        assert!(refused.starts_with(STALE_PREFIX), "{refused}");
        assert!(refused.contains("(epoch 4 of b)"), "{refused}");
        assert_eq!(fence.admit(Some(&claim(4, "b"))), Ok(()));
    }

    #[test]
    fn another_leader_claiming_the_same_epoch_is_refused() {
        let fence = LeaderFence::default();
        assert_eq!(fence.admit(Some(&claim(5, "a"))), Ok(()));
        assert!(fence.admit(Some(&claim(5, "b"))).is_err());
    }

    #[test]
    fn calls_without_an_epoch_are_served_only_until_a_leader_speaks() {
        let fence = LeaderFence::default();
        assert_eq!(fence.admit(None), Ok(()));
        assert_eq!(fence.admit(None), Ok(()));
        assert_eq!(fence.admit(Some(&claim(0, "a"))), Ok(()));
        assert!(fence.admit(None).is_err());
    }
}
