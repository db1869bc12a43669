//! Who is connected to a session: `status.connection` and, in a multi-user session,
//! `status.connections`, as the live-status writer keeps them from the worker's `Connected`,
//! `Disconnected` and `Ping` events.
//!
//! The rules, pure so they are tested without a cluster:
//! - a worker names who connected by the userID in their join token; an empty name is
//!   `spec.user` (a token minted before sessions had participants), and a name the session
//!   does not list is refused, so a worker cannot grow the status with names of its own;
//! - in a multi-user session, `connections` holds one entry per userID in the order they
//!   connected (a reconnect replaces the entry and moves it last), and `connection` is
//!   `spec.user`'s entry while `spec.user` is connected, else the first entry (the
//!   participant connected longest);
//! - a session of one user keeps only `connection`, as before participants existed.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use voice_crds::{UserConnectionStatus, VoiceSessionSpec};

/// Who may connect to a session, from its spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    user: String,
    participants: BTreeSet<String>,
}

impl Members {
    /// The people of `spec`: `spec.user` and `spec.participants`.
    pub fn of(spec: &VoiceSessionSpec) -> Members {
        Members {
            user: spec.user.user_id.clone(),
            participants: spec
                .participants
                .iter()
                .map(|p| p.user_id.clone())
                .collect(),
        }
    }

    /// Whether the session has participants beside `spec.user`.
    pub fn multi_user(&self) -> bool {
        !self.participants.is_empty()
    }

    /// The userID a worker's `participant` stands for: empty is `spec.user`; `None` for a
    /// name the session does not list.
    pub fn resolve(&self, participant: &str) -> Option<String> {
        if participant.is_empty() || participant == self.user {
            return Some(self.user.clone());
        }
        self.participants
            .contains(participant)
            .then(|| participant.to_owned())
    }

    /// The speaker label of a transcript line: a listed userID in a multi-user session,
    /// otherwise none (a session of one user needs no label, and an unknown name is not
    /// repeated into status).
    pub fn speaker(&self, speaker: &str) -> Option<String> {
        if !self.multi_user() || speaker.is_empty() {
            return None;
        }
        self.resolve(speaker)
    }
}

/// The writer-owned connection fields of one session's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    /// `status.connection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<UserConnectionStatus>,
    /// `status.connections` (multi-user sessions only). Written by the live-status writer
    /// alone, so its whole list is that field manager's: an empty list is omitted and so
    /// removed from status.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<UserConnectionStatus>,
}

impl Presence {
    /// `connection` came up (its `user_id` already resolved). Returns whether it is now
    /// `status.connection`.
    pub fn connect(&mut self, members: &Members, connection: UserConnectionStatus) -> bool {
        if !members.multi_user() {
            self.connection = Some(connection);
            return true;
        }
        let id = connection.connection_id.clone();
        self.connections.retain(|c| c.user_id != connection.user_id);
        self.connections.push(connection);
        self.elect(members);
        self.connection
            .as_ref()
            .is_some_and(|c| c.connection_id == id)
    }

    /// The connection `connection_id` went away while the session goes on. Returns the entry
    /// it removed; `None` for a connection already replaced by a reconnect (or unknown), and
    /// in a session of one user, whose only connection ends the session instead (`Ended`).
    pub fn disconnect(
        &mut self,
        members: &Members,
        connection_id: &str,
    ) -> Option<UserConnectionStatus> {
        if !members.multi_user() {
            return None;
        }
        let at = self
            .connections
            .iter()
            .position(|c| c.connection_id == connection_id)?;
        let gone = self.connections.remove(at);
        self.elect(members);
        Some(gone)
    }

    /// The worker heard from the session's clients at `now`: a ping carries no connection,
    /// so every listed connection was heard from.
    pub fn ping(&mut self, now: &Time) {
        for c in self
            .connection
            .iter_mut()
            .chain(self.connections.iter_mut())
        {
            c.last_ping = Some(now.clone());
        }
    }

    /// The session ended: nobody is connected.
    pub fn clear(&mut self) {
        self.connection = None;
        self.connections.clear();
    }

    /// How many are connected.
    pub fn count(&self) -> usize {
        self.connections
            .len()
            .max(usize::from(self.connection.is_some()))
    }

    fn elect(&mut self, members: &Members) {
        self.connection = self
            .connections
            .iter()
            .find(|c| c.user_id.as_deref() == Some(members.user.as_str()))
            .or_else(|| self.connections.first())
            .cloned();
    }
}

#[cfg(test)]
mod tests;
