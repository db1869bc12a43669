//! Which session meets in each LiveKit room this round (see [`crate::room_claims`]).

use super::*;
use crate::room_claims::{RoomClaims, RoomKey};

impl Allocator {
    /// The room claims of the `livekit` sessions (from their worklist): each held one, and
    /// each pending one that nothing else keeps waiting.
    pub(super) fn room_claims(
        &self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
    ) -> RoomClaims {
        let mut claims = RoomClaims::default();
        let livekit = (self.lists.livekit.iter()).filter_map(|k| sessions.get_key_value(k));
        for (key, session) in livekit {
            let Some(room) = self.room_key(key, session) else {
                continue;
            };
            let held = self.ledger.slot(key).is_some();
            let waits_anyway = self.phase_of(key, session) != SessionPhase::Pending
                || self.misfit(session, &key.namespace).is_some();
            if held || !waits_anyway {
                claims.claim(room, key, held, created_ms(session));
            }
        }
        claims
    }

    /// Why pending `session` must wait for another in its room, if it must.
    pub(super) fn room_misfit(
        &self,
        claims: &RoomClaims,
        key: &SessionKey,
        session: &VoiceSession,
    ) -> Option<Misfit> {
        claims.misfit(&self.room_key(key, session)?, key)
    }

    fn room_key(&self, key: &SessionKey, session: &VoiceSession) -> Option<RoomKey> {
        if session.spec.transport != voice_crds::Transport::LiveKit {
            return None;
        }
        let reference =
            reflector::ObjectRef::new(&session.spec.backend_ref.name).within(&key.namespace);
        session_livekit::room_key(session, &*self.backends.get(&reference)?)
    }
}

/// When `session` was created, in milliseconds since the epoch (0 when unknown).
pub(super) fn created_ms(session: &VoiceSession) -> i64 {
    session
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_millisecond())
}
