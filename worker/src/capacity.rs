//! The slot ledger: how many sessions this worker holds, and whether it may take one more.
//!
//! Plain Rust over plain structs, with time passed in as an argument, so that the
//! capacity invariants can be property-tested without a runtime, a clock or a network.
//! The gRPC server and the drain supervisor translate calls into these methods.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// What the operator asks the worker to hold for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRequest {
    /// `namespace/name` of the VoiceSession; the ledger key.
    pub session_id: String,
    /// `metadata.uid` of the VoiceSession; tells a recreated session from the old one.
    pub uid: String,
    /// Key id of the session's join token, when one was issued.
    pub token_key_id: Option<String>,
    /// The session's overrides and persisted conversation, parsed once at reservation.
    /// Never a provider, endpoint or Secret name: those come only from `VOICE_PIPELINE`.
    pub config: voice_proto::session_config::SessionConfig,
}

/// A session that holds a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// What was asked for when the slot was reserved.
    pub request: SessionRequest,
    /// When the slot was reserved.
    pub reserved_at: SystemTime,
    /// When the client's media connection came up; `None` while only reserved.
    pub connected_at: Option<SystemTime>,
}

impl Session {
    /// Whether the client has connected yet.
    pub fn is_connected(&self) -> bool {
        self.connected_at.is_some()
    }
}

/// A successful reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// A new slot was taken.
    New,
    /// The same session (same uid) already held a slot: a retry, nothing changed.
    Existing,
}

/// Why a reservation was refused. Each variant has a stable reason for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every slot is held.
    #[error("worker is full: all {capacity} session slots are held")]
    Full {
        /// The worker's capacity.
        capacity: u32,
    },
    /// The worker drains and takes no new sessions.
    #[error("worker is draining and accepts no new sessions")]
    Draining,
    /// The session id is held by another incarnation (different uid).
    #[error("session is held under another uid ({held_uid}); release it first")]
    Conflict {
        /// The uid that holds the slot.
        held_uid: String,
    },
}

impl Refusal {
    /// Stable CamelCase reason, for events, logs and the `result` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full { .. } => "Full",
            Refusal::Draining => "Draining",
            Refusal::Conflict { .. } => "Conflict",
        }
    }
}

/// The outcome of a release; every variant is a success for an idempotent caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    /// The slot was freed; here is what it held.
    Freed(Box<Session>),
    /// No such session was held.
    NotFound,
    /// The id is held under another uid, which this release must not free.
    UidMismatch {
        /// The uid that holds the slot.
        held_uid: String,
    },
}

/// The slot ledger of one worker.
#[derive(Clone, Debug)]
pub struct Ledger {
    capacity: u32,
    sessions: BTreeMap<String, Session>,
    drain_deadline: Option<SystemTime>,
}

impl Ledger {
    /// An empty ledger with `capacity` slots (0 refuses everything as full).
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            sessions: BTreeMap::new(),
            drain_deadline: None,
        }
    }

    /// Most sessions held at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots held, reserved or connected.
    pub fn held(&self) -> u32 {
        // The map never grows past `capacity: u32`, so this cannot truncate.
        u32::try_from(self.sessions.len()).unwrap_or(u32::MAX)
    }

    /// Sessions whose client has connected.
    pub fn connected(&self) -> u32 {
        let n = self.sessions.values().filter(|s| s.is_connected()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Sessions holding a slot whose client has not connected yet.
    pub fn reserved_only(&self) -> u32 {
        self.held() - self.connected()
    }

    /// When draining, the moment remaining sessions are ended.
    pub fn drain_deadline(&self) -> Option<SystemTime> {
        self.drain_deadline
    }

    /// Whether new reservations are refused.
    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// The session held under `session_id`, if any.
    pub fn get(&self, session_id: &str) -> Option<&Session> {
        self.sessions.get(session_id)
    }

    /// Held sessions in id order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Holds a slot for `request`.
    ///
    /// A retry with the same id and uid succeeds as [`Reserved::Existing`] even while
    /// draining or full, because the slot is already held: refusing it would make the
    /// operator place the session elsewhere and leak this slot.
    pub fn reserve(
        &mut self,
        request: SessionRequest,
        now: SystemTime,
    ) -> Result<Reserved, Refusal> {
        if let Some(held) = self.sessions.get(&request.session_id) {
            return if held.request.uid == request.uid {
                Ok(Reserved::Existing)
            } else {
                Err(Refusal::Conflict {
                    held_uid: held.request.uid.clone(),
                })
            };
        }
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        if self.held() >= self.capacity {
            return Err(Refusal::Full {
                capacity: self.capacity,
            });
        }
        let session = Session {
            request,
            reserved_at: now,
            connected_at: None,
        };
        self.sessions
            .insert(session.request.session_id.clone(), session);
        Ok(Reserved::New)
    }

    /// Frees the slot of `session_id` if it is held under `uid`.
    pub fn release(&mut self, session_id: &str, uid: &str) -> Released {
        match self.sessions.get(session_id) {
            None => Released::NotFound,
            Some(held) if held.request.uid != uid => Released::UidMismatch {
                held_uid: held.request.uid.clone(),
            },
            Some(_) => match self.sessions.remove(session_id) {
                Some(session) => Released::Freed(Box::new(session)),
                None => Released::NotFound,
            },
        }
    }

    /// Replaces the metadata of `session_id` held under `uid`; false if no such session is
    /// held (nothing changes).
    pub fn set_metadata(
        &mut self,
        session_id: &str,
        uid: &str,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        match self.sessions.get_mut(session_id) {
            Some(held) if held.request.uid == uid => {
                held.request.config.metadata = Some(metadata);
                true
            }
            _ => false,
        }
    }

    /// Records that the client of a held session connected; false if no such session
    /// (same id and uid) is held. Called by the media transports.
    pub fn mark_connected(&mut self, session_id: &str, uid: &str, now: SystemTime) -> bool {
        match self.sessions.get_mut(session_id) {
            Some(held) if held.request.uid == uid => {
                held.connected_at.get_or_insert(now);
                true
            }
            _ => false,
        }
    }

    /// Starts draining (or keeps draining) and returns the deadline in force: the
    /// earlier of the current one and `deadline`, so a later, laxer call cannot
    /// postpone a shutdown already promised.
    pub fn drain(&mut self, deadline: SystemTime) -> SystemTime {
        let effective = match self.drain_deadline {
            Some(current) if current <= deadline => current,
            _ => deadline,
        };
        self.drain_deadline = Some(effective);
        effective
    }

    /// Ends every session still held once the drain deadline has passed, and returns
    /// them so the caller can report their end. Does nothing before the deadline or
    /// when not draining.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Session> {
        match self.drain_deadline {
            Some(deadline) if now >= deadline => {
                std::mem::take(&mut self.sessions).into_values().collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
