//! The seed's state machines: backend connection, health, session pipeline and persistence.
//!
//! The transition tables live here, beside the types, so the operator and the worker enforce
//! the same rules and tests can check them without a cluster.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A backend's connection to its workers (seed ConnectionState).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum ConnectionState {
    /// Not connected: no worker answers (also the state after the last worker went away).
    #[default]
    Disconnected,
    /// Workers are starting; no health check has succeeded yet.
    Connecting,
    /// At least one worker answers its health checks.
    Connected,
    /// Workers answered before and are being re-established after a failure.
    Reconnecting,
    /// The backend cannot serve (rejected configuration or every worker failing).
    Error,
}

impl ConnectionState {
    /// Whether the seed's state diagram allows moving from `self` to `next`.
    ///
    /// `[Initial] → Connecting → Connected → Disconnected`, `Connected → Error →
    /// Reconnecting → Connected`. Staying in the same state is always allowed, and any state may
    /// fall to `Error` or `Disconnected` (a backend can be rejected or lose every worker at any
    /// time); `Disconnected` may start `Connecting` again.
    pub fn can_transition_to(self, next: ConnectionState) -> bool {
        use ConnectionState::*;
        self == next
            || matches!(
                (self, next),
                (_, Error)
                    | (_, Disconnected)
                    | (Disconnected, Connecting)
                    | (Connecting, Connected)
                    | (Error, Reconnecting)
                    | (Connected, Reconnecting)
                    | (Reconnecting, Connected)
                    | (Error, Connecting)
            )
    }
}

/// A backend's health as folded from its workers' checks (seed HealthStatus).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum HealthStatus {
    /// No health check has completed yet.
    #[default]
    Unknown,
    /// Every ready worker passes its checks and the backend has the workers it wants.
    Healthy,
    /// Serving, but some workers fail checks, are missing, or latency exceeds its target.
    Degraded,
    /// Not serving: no worker passes its checks.
    Unhealthy,
}

/// A session's position in the voice pipeline (seed PipelineState).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum PipelineState {
    /// Reserved or connected, not yet processing audio.
    #[default]
    Idle,
    /// Listening for user speech.
    Listening,
    /// Turning the user's speech into a reply (STT, agent, TTS or S2S).
    Processing,
    /// Playing the agent's reply.
    Speaking,
    /// A stage failed; the next user turn retries.
    Error,
}

impl PipelineState {
    /// Whether the seed's diagram allows moving from `self` to `next`.
    ///
    /// `Idle → Listening → Processing → Speaking → Listening`, any state → `Error`. Barge-in
    /// moves `Speaking → Listening` early, and a turn that produced nothing to say goes
    /// `Processing → Listening`; `Error` recovers to `Listening` on the next turn.
    pub fn can_transition_to(self, next: PipelineState) -> bool {
        use PipelineState::*;
        self == next
            || matches!(
                (self, next),
                (_, Error)
                    | (Idle, Listening)
                    | (Listening, Processing)
                    | (Processing, Speaking)
                    | (Processing, Listening)
                    | (Speaking, Listening)
                    | (Error, Listening)
            )
    }
}

/// Whether a session's state is kept (seed PersistenceStatus, FR-025/FR-026).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum PersistenceStatus {
    /// The session is live: its context persists across operator restarts and worker loss.
    #[default]
    Active,
    /// The session ended: its state is ephemeral and is deleted after its TTL.
    Completed,
}

/// Lifecycle phase of a VoiceSession.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum SessionPhase {
    /// Waiting for admission (a cap is full or no worker is ready); see `status.queuePosition`.
    #[default]
    Pending,
    /// Admitted onto a worker; the client may connect with its join token.
    Active,
    /// Ended normally (hang-up, timeout, deletion of its backend).
    Completed,
    /// Ended in failure (queue timeout, worker lost with no capacity, invalid backend).
    Failed,
}

impl SessionPhase {
    /// Whether the session has ended (its slot is free and its state is ephemeral).
    pub fn is_finished(self) -> bool {
        matches!(self, SessionPhase::Completed | SessionPhase::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_follows_seed_diagram() {
        use ConnectionState::*;
        for (from, to) in [
            (Disconnected, Connecting),
            (Connecting, Connected),
            (Connected, Disconnected),
            (Connected, Error),
            (Error, Reconnecting),
            (Reconnecting, Connected),
        ] {
            assert!(
                from.can_transition_to(to),
                "{from:?} -> {to:?} must be allowed"
            );
        }
        assert!(!Connecting.can_transition_to(Reconnecting));
        assert!(!Disconnected.can_transition_to(Connected));
    }

    #[test]
    fn pipeline_follows_seed_diagram() {
        use PipelineState::*;
        for s in [Idle, Listening, Processing, Speaking] {
            assert!(s.can_transition_to(Error));
        }
        assert!(Idle.can_transition_to(Listening));
        assert!(Speaking.can_transition_to(Listening));
        assert!(!Idle.can_transition_to(Speaking));
        assert!(!Listening.can_transition_to(Speaking));
    }
}
