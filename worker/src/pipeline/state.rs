//! The session's PipelineState machine (seed: Idle → Listening → Processing → Speaking →
//! Listening, Error from any state), as a pure function of what happened.
//!
//! The transition table itself lives in `voice_crds::states`, shared with the operator; this
//! module decides *which* transition an input means and never emits one that table forbids.

use voice_crds::PipelineState;

/// Something that happened to the session's pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The client's media connection came up.
    Connected,
    /// The user started speaking.
    UserSpeech,
    /// The user's turn ended; STT/agent/TTS (or S2S) work on the reply.
    TurnEnded,
    /// The first frame of the reply is being played.
    ReplyAudio,
    /// The reply finished playing, or the turn produced nothing to say.
    ReplyDone,
    /// The user spoke over the reply; it was cut off.
    BargeIn,
    /// A stage failed, with the provider's message.
    Failed(String),
}

/// One state change, to report upward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The state before.
    pub from: PipelineState,
    /// The state after.
    pub to: PipelineState,
    /// Why, when `to` is `Error`.
    pub detail: String,
}

/// The current state and the rules for moving on.
#[derive(Clone, Debug, Default)]
pub struct StateMachine {
    state: PipelineState,
}

impl StateMachine {
    /// A machine in `Idle`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> PipelineState {
        self.state
    }

    /// Applies `input`; returns the changes it caused, in order (an `Error` session that
    /// hears a new turn end goes `Error → Listening → Processing`). Inputs that mean nothing
    /// in the current state (a stray `ReplyDone` while listening) change nothing.
    pub fn apply(&mut self, input: &Input) -> Vec<Change> {
        use PipelineState::*;
        let path: &[PipelineState] = match (self.state, input) {
            (_, Input::Failed(_)) => &[Error],
            (Idle | Error, Input::Connected | Input::UserSpeech) => &[Listening],
            (Idle | Error, Input::TurnEnded) => &[Listening, Processing],
            (Listening, Input::TurnEnded) => &[Processing],
            (Processing, Input::ReplyAudio) => &[Speaking],
            (Listening | Idle | Error, Input::ReplyAudio) => &[Listening, Processing, Speaking],
            (Processing | Speaking, Input::ReplyDone | Input::BargeIn) => &[Listening],
            _ => &[],
        };
        let detail = match input {
            Input::Failed(message) => message.clone(),
            _ => String::new(),
        };
        let mut changes = Vec::new();
        for &next in path {
            if next == self.state && !matches!(input, Input::Failed(_)) {
                continue;
            }
            if !self.state.can_transition_to(next) {
                // The table above only walks allowed edges; refusing here keeps that true
                // even if someone edits one of them.
                tracing::warn!(from = ?self.state, to = ?next, "refusing a pipeline transition the seed forbids");
                break;
            }
            if next == self.state && next == Error && detail.is_empty() {
                continue;
            }
            changes.push(Change {
                from: self.state,
                to: next,
                detail: if next == Error {
                    detail.clone()
                } else {
                    String::new()
                },
            });
            self.state = next;
        }
        changes
    }
}

/// The state as the worker's control API names it.
pub fn to_proto(state: PipelineState) -> voice_proto::worker::v1::PipelineState {
    use voice_proto::worker::v1::PipelineState as P;
    match state {
        PipelineState::Idle => P::Idle,
        PipelineState::Listening => P::Listening,
        PipelineState::Processing => P::Processing,
        PipelineState::Speaking => P::Speaking,
        PipelineState::Error => P::Error,
    }
}

/// The state as clients see it in text frames (`LISTENING`, ...).
pub fn label(state: PipelineState) -> &'static str {
    match state {
        PipelineState::Idle => "IDLE",
        PipelineState::Listening => "LISTENING",
        PipelineState::Processing => "PROCESSING",
        PipelineState::Speaking => "SPEAKING",
        PipelineState::Error => "ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PipelineState::*;
    use proptest::prelude::*;

    fn states(machine: &mut StateMachine, inputs: &[Input]) -> Vec<PipelineState> {
        inputs
            .iter()
            .flat_map(|i| machine.apply(i))
            .map(|c| c.to)
            .collect()
    }

    #[test]
    fn a_turn_walks_the_seed_cycle() {
        let mut m = StateMachine::new();
        let seen = states(
            &mut m,
            &[
                Input::Connected,
                Input::UserSpeech,
                Input::TurnEnded,
                Input::ReplyAudio,
                Input::ReplyDone,
            ],
        );
        assert_eq!(seen, [Listening, Processing, Speaking, Listening]);
    }

    #[test]
    fn barge_in_returns_to_listening_and_errors_recover_on_the_next_turn() {
        let mut m = StateMachine::new();
        m.apply(&Input::Connected);
        m.apply(&Input::TurnEnded);
        m.apply(&Input::ReplyAudio);
        assert_eq!(states(&mut m, &[Input::BargeIn]), [Listening]);
        let failed = m.apply(&Input::Failed("stt: 503 overloaded".into()));
        assert_eq!(failed[0].detail, "stt: 503 overloaded");
        assert_eq!(m.state(), Error);
        assert_eq!(states(&mut m, &[Input::TurnEnded]), [Listening, Processing]);
    }

    proptest! {
        /// Whatever happens, in any order, every reported change is one the seed allows and
        /// the changes chain (each starts where the previous ended).
        #[test]
        fn every_change_is_allowed_and_chained(inputs in proptest::collection::vec(0u8..7, 0..60)) {
            let mut m = StateMachine::new();
            let mut at = m.state();
            for i in inputs {
                let input = match i {
                    0 => Input::Connected,
                    1 => Input::UserSpeech,
                    2 => Input::TurnEnded,
                    3 => Input::ReplyAudio,
                    4 => Input::ReplyDone,
                    5 => Input::BargeIn,
                    _ => Input::Failed("x".into()),
                };
                for change in m.apply(&input) {
                    prop_assert_eq!(change.from, at);
                    prop_assert!(change.from.can_transition_to(change.to), "{:?}", change);
                    prop_assert_eq!(change.detail.is_empty(), change.to != Error);
                    at = change.to;
                }
                prop_assert_eq!(m.state(), at);
            }
        }
    }
}
