//! The leader epoch every mutating control call carries, so a worker can refuse an operator
//! that has been replaced (docs/decisions.md, "Fencing a paused leader").
//!
//! The epoch is the leader Lease's `spec.leaseTransitions` when the caller acquired it, and
//! the leader is its holder identity. Both travel as gRPC metadata rather than message
//! fields, so every call (reserve, release, update, list, drain) carries them the same way.
//! A worker remembers the highest epoch it has seen and refuses calls from a lower one with
//! `FAILED_PRECONDITION` and a message starting with [`STALE_PREFIX`].

use tonic::metadata::{MetadataMap, MetadataValue};

/// Metadata key of the epoch (decimal).
pub const EPOCH_KEY: &str = "voice-leader-epoch";
/// Metadata key of the leader's identity.
pub const LEADER_KEY: &str = "voice-leader";
/// How a worker's refusal of a stale leader starts, so the caller can tell it from other
/// failed preconditions.
pub const STALE_PREFIX: &str = "stale leader";

/// One leader's claim: the Lease transitions count at acquisition, and who acquired it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderEpoch {
    /// `spec.leaseTransitions` of the Lease this leader acquired.
    pub epoch: u64,
    /// The Lease's `spec.holderIdentity` after acquisition.
    pub leader: String,
}

impl LeaderEpoch {
    /// Writes the claim into a request's metadata.
    pub fn insert(&self, metadata: &mut MetadataMap) {
        metadata.insert(EPOCH_KEY, MetadataValue::from(self.epoch));
        // Identities are pod names plus hex: always valid ASCII metadata. One that is not
        // is sent without it; the epoch alone still orders leaders.
        if let Ok(leader) = self.leader.parse() {
            metadata.insert(LEADER_KEY, leader);
        }
    }

    /// Reads a claim from a request's metadata: `Ok(None)` when it carries none, `Err` when
    /// the epoch is there but not a number.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Option<Self>, String> {
        let Some(raw) = metadata.get(EPOCH_KEY) else {
            return Ok(None);
        };
        let epoch = raw
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("metadata {EPOCH_KEY} must be a decimal number"))?;
        let leader = metadata
            .get(LEADER_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Some(Self { epoch, leader }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_round_trips_through_metadata() {
        let claim = LeaderEpoch {
            epoch: 7,
            leader: "voice-operator-0-1a2b3c4d".to_owned(),
        };
        let mut metadata = MetadataMap::new();
        claim.insert(&mut metadata);
        assert_eq!(LeaderEpoch::from_metadata(&metadata), Ok(Some(claim)));
        assert_eq!(LeaderEpoch::from_metadata(&MetadataMap::new()), Ok(None));
    }

    #[test]
    fn a_garbled_epoch_is_an_error_naming_the_key() {
        let mut metadata = MetadataMap::new();
        metadata.insert(EPOCH_KEY, "seven".parse().expect("ascii"));
        let err = LeaderEpoch::from_metadata(&metadata).expect_err("refused");
        assert!(err.contains(EPOCH_KEY), "{err}");
    }
}
