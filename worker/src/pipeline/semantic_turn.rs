//! Semantic turn detection on top of the silence rule (`turnDetection.provider:
//! smart-turn`): once a pause has lasted [`SemanticTurn::ask_after`], the session asks the
//! end-of-turn model whether the user is done. "Complete" ends the turn at once; "not yet",
//! an error or no answer leaves it to `silenceTimeout`, which stays the upper bound.
//!
//! The question runs off the media loop; its answer is polled on the next frames and only
//! counts for the pause it was asked about.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::providers::ProviderError;
use super::providers::smart_turn::SmartTurn;

/// One session's asker.
#[derive(Debug)]
pub struct SemanticTurn {
    model: Arc<SmartTurn>,
    /// Probability at or above which the turn counts as complete.
    threshold: f32,
    /// Pause length before asking: shorter pauses are gaps inside words.
    ask_after: Duration,
    /// The pause (its last speech time) already asked about.
    asked_for: Option<Duration>,
    pending: Option<oneshot::Receiver<Result<f32, ProviderError>>>,
}

impl SemanticTurn {
    /// Asks `model` after pauses of `ask_after`; complete at `threshold`.
    pub fn new(model: Arc<SmartTurn>, threshold: f32, ask_after: Duration) -> Self {
        Self {
            model,
            threshold,
            ask_after,
            asked_for: None,
            pending: None,
        }
    }

    /// The pause length before the model is asked.
    pub fn ask_after(&self) -> Duration {
        self.ask_after
    }

    /// Called on every frame of a pause that started after the speech at `last_speech`
    /// (media time `now`, `audio` the turn so far at 16 kHz): true when the model has
    /// answered that the turn is complete.
    pub fn on_pause(&mut self, now: Duration, last_speech: Duration, audio: &[i16]) -> bool {
        if self.asked_for != Some(last_speech) && now.saturating_sub(last_speech) >= self.ask_after
        {
            self.asked_for = Some(last_speech);
            let (tx, rx) = oneshot::channel();
            let model = self.model.clone();
            let audio = audio.to_vec();
            tokio::spawn(async move {
                let _ = tx.send(model.complete(audio).await);
            });
            self.pending = Some(rx);
        }
        let Some(pending) = self.pending.as_mut() else {
            return false;
        };
        match pending.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => false,
            Err(oneshot::error::TryRecvError::Closed) => {
                self.pending = None;
                false
            }
            Ok(Ok(probability)) => {
                self.pending = None;
                tracing::debug!(probability, "smart-turn answered");
                probability >= self.threshold
            }
            Ok(Err(e)) => {
                self.pending = None;
                tracing::warn!(%e, "smart-turn failed; the silence rule decides");
                false
            }
        }
    }

    /// Speech resumed or the turn ended: an answer still on its way no longer counts.
    pub fn reset(&mut self) {
        self.pending = None;
        self.asked_for = None;
    }
}
