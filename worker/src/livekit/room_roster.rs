//! Who is in a LiveKit room: the identities behind participant and track ids, so the agent
//! can tell the session's user's track from anyone else's.

use std::collections::HashMap;

use livekit_protocol as lk;

/// Who the room's participants are, by server id.
#[derive(Default)]
pub struct Roster {
    /// Participant sid → identity.
    identities: HashMap<String, String>,
    /// Track sid → participant identity.
    tracks: HashMap<String, String>,
}

impl Roster {
    /// Records a participant and its tracks (from the join response or an update).
    pub fn learn(&mut self, participant: &lk::ParticipantInfo) {
        self.identities
            .insert(participant.sid.clone(), participant.identity.clone());
        for track in &participant.tracks {
            self.tracks
                .insert(track.sid.clone(), participant.identity.clone());
        }
    }

    /// The identity behind a subscribed track: LiveKit names the stream
    /// `<participant sid>|<track sid>` and the track by its sid.
    pub fn owner(&self, stream_id: &str, track_id: &str) -> Option<&str> {
        self.tracks
            .get(track_id)
            .or_else(|| {
                let participant = stream_id.split('|').next()?;
                self.identities.get(participant)
            })
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_is_known_by_its_sid_or_by_its_stream_s_participant() {
        let mut roster = Roster::default();
        roster.learn(&lk::ParticipantInfo {
            sid: "PA_1".into(),
            identity: "alice".into(),
            tracks: vec![lk::TrackInfo {
                sid: "TR_1".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(roster.owner("PA_x|TR_1", "TR_1"), Some("alice"));
        assert_eq!(roster.owner("PA_1|TR_2", "TR_2"), Some("alice"));
        assert_eq!(roster.owner("PA_2|TR_3", "TR_3"), None);
    }
}
