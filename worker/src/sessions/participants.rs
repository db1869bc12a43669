//! Who may connect to a held session, and what the operator hears when one of several
//! participants leaves.
//!
//! A join token names its participant (`JoinClaims.user`); the operator mints one per
//! `spec.participants` entry beside the user's. The worker still checks the name against
//! the session it was reserved with, so a token can never open a seat the session does not
//! list, whoever signed it.

use std::time::SystemTime;

use voice_proto::worker::v1::Disconnected;
use voice_proto::worker::v1::session_event::Event;

use super::Sessions;
use crate::capacity::Released;
use crate::connections::Claim;

/// A token that names a participant the session does not list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the join token is for participant {0:?}, who is not the session's user or one of its spec.participants"
)]
pub struct UnknownParticipant(pub String);

impl Sessions {
    /// The participant a verified token admits to held session `session_id`: the userID it
    /// names, or the session's user for a token that names none (minted before sessions had
    /// participants).
    pub fn participant(
        &self,
        session_id: &str,
        token_user: &str,
    ) -> Result<String, UnknownParticipant> {
        let config = self.session_config(session_id).unwrap_or_default();
        let Some(user) = config.user_id else {
            // Reserved without naming its user (an operator from before participants): a
            // session of one, joined by whoever its operator-signed token names.
            return if config.participants.is_empty() {
                Ok(token_user.to_owned())
            } else {
                Err(UnknownParticipant(token_user.to_owned()))
            };
        };
        if token_user.is_empty() || token_user == user {
            return Ok(user);
        }
        if config.participants.iter().any(|p| p == token_user) {
            Ok(token_user.to_owned())
        } else {
            Err(UnknownParticipant(token_user.to_owned()))
        }
    }

    /// Whether `session_id` has participants beside its user: their connections share one
    /// pipeline (see [`crate::pipeline::room`]).
    pub fn is_multi_user(&self, session_id: &str) -> bool {
        self.session_config(session_id)
            .is_some_and(|c| !c.participants.is_empty())
    }

    /// Ends `claim`'s connection. The session ends with it (its slot released with
    /// `reason`) unless other participants are still connected: then only `Disconnected`
    /// is published and the slot stays. Returns the release, if the session ended.
    pub fn connection_ended(
        &self,
        claim: &mut Claim,
        reason: &str,
        now: SystemTime,
    ) -> Option<Released> {
        if claim.leave() {
            return Some(self.release(&claim.session_id, &claim.uid, reason, now).0);
        }
        let left = Disconnected {
            connection_id: claim.connection_id.clone(),
            participant: claim.participant.clone(),
            reason: reason.to_owned(),
        };
        self.disconnected(&claim.session_id, &claim.uid, left, now);
        None
    }

    /// Publishes that a participant left while others stay connected; nothing when the
    /// session (this uid) is no longer held.
    pub fn disconnected(
        &self,
        session_id: &str,
        uid: &str,
        disconnected: Disconnected,
        now: SystemTime,
    ) -> bool {
        if self.held_uid(session_id).as_deref() != Some(uid) {
            return false;
        }
        self.events
            .publish(session_id, uid, now, Event::Disconnected(disconnected));
        true
    }
}
