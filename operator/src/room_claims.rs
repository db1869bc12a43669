//! One session per LiveKit room: which session meets in each room of each server.
//!
//! A room holds one agent (its identity is [`voice_proto::livekit_token::AGENT_IDENTITY`]),
//! and LiveKit lets one participant per identity into a room: a second session admitted to
//! the same room would send a second agent that displaces the first. So a room of a server is
//! claimed by the session that holds a slot in it, else by the oldest pending session that
//! names it, and every other session naming it waits `RoomInUse` (outside the queue, without
//! a slot) until the claim is gone. Rooms are told apart by the server's `spec.liveKit.url`,
//! so two backends on one server share their rooms.

use std::collections::HashMap;

use crate::admission_plan::Misfit;
use crate::ledger::SessionKey;

/// A room of one LiveKit server: the server's URL and the room's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoomKey {
    /// The server's `spec.liveKit.url`.
    pub server: String,
    /// The room's name.
    pub room: String,
}

/// Who claims a room, and how strongly: a held session outranks any pending one, and among
/// pending ones the oldest (then the first by key) wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    pending: bool,
    created_ms: i64,
    key: SessionKey,
}

/// The claims of one round.
#[derive(Debug, Default)]
pub struct RoomClaims {
    claims: HashMap<RoomKey, Claim>,
}

impl RoomClaims {
    /// Records that `key` wants `room`: it holds a slot in it (`held`), or it is a pending
    /// session created at `created_ms` that nothing else keeps waiting.
    pub fn claim(&mut self, room: RoomKey, key: &SessionKey, held: bool, created_ms: i64) {
        let claim = Claim {
            pending: !held,
            created_ms: if held { 0 } else { created_ms },
            key: key.clone(),
        };
        self.claims
            .entry(room)
            .and_modify(|c| {
                if claim < *c {
                    *c = claim.clone();
                }
            })
            .or_insert(claim);
    }

    /// Why `key` must wait for `room`, when another session claims it.
    pub fn misfit(&self, room: &RoomKey, key: &SessionKey) -> Option<Misfit> {
        let claim = self.claims.get(room)?;
        (claim.key != *key).then(|| {
            let how = if claim.pending {
                "is older and waits for it"
            } else {
                "meets in it"
            };
            Misfit::RoomInUse(format!(
                "spec.room: LiveKit room {:?} of {} serves one session at a time and VoiceSession {} {how}; this session is admitted when that one ends, or create it with another spec.room (spec.room is immutable)",
                room.room,
                room.server,
                claim.key.session_id(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission_plan::Blocked;
    use crate::session_index::test_key as key;

    fn room(server: &str, room: &str) -> RoomKey {
        RoomKey {
            server: server.into(),
            room: room.into(),
        }
    }

    #[test]
    fn a_held_session_keeps_its_room_from_an_older_pending_one() {
        let mut claims = RoomClaims::default();
        claims.claim(room("wss://lk", "lobby"), &key("old"), false, 1);
        claims.claim(room("wss://lk", "lobby"), &key("held"), true, 9);
        assert_eq!(
            claims.misfit(&room("wss://lk", "lobby"), &key("held")),
            None
        );
        let waits = claims
            .misfit(&room("wss://lk", "lobby"), &key("old"))
            .unwrap_or_else(|| panic!("the pending session must wait"));
        assert_eq!(waits.blocked(), Blocked::RoomInUse);
        assert!(
            waits.detail().contains("ns/held") && waits.detail().contains("spec.room"),
            "{}",
            waits.detail()
        );
    }

    #[test]
    fn the_oldest_pending_session_gets_the_room_whatever_the_order_seen() {
        for order in [["a", "b", "c"], ["c", "b", "a"], ["b", "c", "a"]] {
            let mut claims = RoomClaims::default();
            for name in order {
                let created = match name {
                    "a" => 5,
                    "b" => 3,
                    _ => 3,
                };
                claims.claim(room("wss://lk", "r"), &key(name), false, created);
            }
            // b and c are as old; the key breaks the tie, the same way every round.
            assert_eq!(claims.misfit(&room("wss://lk", "r"), &key("b")), None);
            assert!(claims.misfit(&room("wss://lk", "r"), &key("a")).is_some());
            assert!(claims.misfit(&room("wss://lk", "r"), &key("c")).is_some());
        }
    }

    #[test]
    fn rooms_of_other_names_or_servers_are_other_rooms() {
        let mut claims = RoomClaims::default();
        claims.claim(room("wss://one", "r"), &key("a"), true, 0);
        assert_eq!(claims.misfit(&room("wss://two", "r"), &key("b")), None);
        assert_eq!(claims.misfit(&room("wss://one", "s"), &key("b")), None);
        assert!(claims.misfit(&room("wss://one", "r"), &key("b")).is_some());
    }
}
