//! Turn detection: the user's turn ends after `silenceTimeout` of non-speech following
//! speech (the seed's TurnDetectionState, kept per session).
//!
//! Pure: it sees one VAD decision per frame and the frame's media time, and reads no clock.

use std::time::Duration;

/// The seed's TurnDetectionState.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnDetectionState {
    /// Listening for user speech (false while a finished turn is being answered).
    pub is_listening: bool,
    /// Media time of the last frame VAD called speech, in the current turn.
    pub last_speech_time: Option<Duration>,
    /// Non-speech after speech has lasted `silence_timeout`: the turn is over.
    pub turn_end_detected: bool,
}

/// What one frame meant for the turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    /// Nothing new.
    None,
    /// Speech began (after `onset` consecutive speech frames).
    SpeechStarted,
    /// The first non-speech frame after speech: VAD's end of speech (a turn may still
    /// continue if speech resumes before the timeout).
    SpeechPaused,
    /// Speech resumed after a pause, within the timeout: the same turn goes on.
    SpeechResumed,
    /// `silence_timeout` of non-speech after speech: the turn ended.
    TurnEnded,
}

/// Silence-timeout turn detector.
#[derive(Clone, Debug)]
pub struct TurnDetector {
    silence_timeout: Duration,
    onset: u32,
    run: u32,
    in_speech: bool,
    paused: bool,
    state: TurnDetectionState,
}

impl TurnDetector {
    /// Ends a turn after `silence_timeout`; speech starts after `onset` speech frames in a
    /// row (1 reacts at once, more ignores clicks).
    pub fn new(silence_timeout: Duration, onset: u32) -> Self {
        Self {
            silence_timeout,
            onset: onset.max(1),
            run: 0,
            in_speech: false,
            paused: false,
            state: TurnDetectionState {
                is_listening: true,
                ..TurnDetectionState::default()
            },
        }
    }

    /// The silence that ends a turn.
    pub fn silence_timeout(&self) -> Duration {
        self.silence_timeout
    }

    /// The seed's view of this detector.
    pub fn state(&self) -> &TurnDetectionState {
        &self.state
    }

    /// Whether the user is in a turn (spoke, and the turn has not ended).
    pub fn in_turn(&self) -> bool {
        self.in_speech
    }

    /// Feeds the VAD decision of the frame at media time `now`.
    pub fn observe(&mut self, now: Duration, speech: bool) -> TurnEvent {
        self.run = if speech { self.run + 1 } else { 0 };
        if !self.in_speech {
            if self.run >= self.onset {
                self.in_speech = true;
                self.paused = false;
                self.state.turn_end_detected = false;
                self.state.is_listening = true;
                self.state.last_speech_time = Some(now);
                return TurnEvent::SpeechStarted;
            }
            return TurnEvent::None;
        }
        if speech {
            self.state.last_speech_time = Some(now);
            if self.paused {
                self.paused = false;
                return TurnEvent::SpeechResumed;
            }
            return TurnEvent::None;
        }
        let last = self.state.last_speech_time.unwrap_or(now);
        if now.saturating_sub(last) >= self.silence_timeout {
            self.in_speech = false;
            self.paused = false;
            self.state.turn_end_detected = true;
            self.state.is_listening = false;
            return TurnEvent::TurnEnded;
        }
        if !self.paused {
            self.paused = true;
            return TurnEvent::SpeechPaused;
        }
        TurnEvent::None
    }

    /// The media time of the last speech when the user is pausing inside a turn.
    pub fn paused_since(&self) -> Option<Duration> {
        if self.in_speech && self.paused {
            self.state.last_speech_time
        } else {
            None
        }
    }

    /// Ends the turn now if the user is pausing (a semantic detector decided before the
    /// silence timeout); otherwise nothing happens.
    pub fn end_turn(&mut self) -> TurnEvent {
        if self.paused_since().is_none() {
            return TurnEvent::None;
        }
        self.in_speech = false;
        self.paused = false;
        self.state.turn_end_detected = true;
        self.state.is_listening = false;
        TurnEvent::TurnEnded
    }

    /// The reply to the last turn is done (or was cut off): listen again.
    pub fn listen(&mut self) {
        self.state.is_listening = true;
        self.state.turn_end_detected = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FRAME: Duration = Duration::from_millis(20);

    fn run(detector: &mut TurnDetector, pattern: &[bool]) -> Vec<(usize, TurnEvent)> {
        pattern
            .iter()
            .enumerate()
            .map(|(i, &s)| (i, detector.observe(FRAME * i as u32, s)))
            .filter(|(_, e)| *e != TurnEvent::None)
            .collect()
    }

    #[test]
    fn a_turn_ends_exactly_one_timeout_after_the_last_speech() {
        let mut d = TurnDetector::new(Duration::from_millis(100), 2);
        // 5 frames of speech, then silence.
        let pattern: Vec<bool> = (0..20).map(|i| (2..7).contains(&i)).collect();
        let events = run(&mut d, &pattern);
        assert_eq!(
            events,
            [
                (3, TurnEvent::SpeechStarted),
                (7, TurnEvent::SpeechPaused),
                // Last speech at frame 6 (120 ms); 100 ms later is frame 11.
                (11, TurnEvent::TurnEnded),
            ]
        );
        assert!(d.state().turn_end_detected);
        assert!(!d.state().is_listening);
        d.listen();
        assert!(d.state().is_listening && !d.state().turn_end_detected);
    }

    #[test]
    fn a_short_pause_keeps_the_turn_and_a_click_is_not_speech() {
        let mut d = TurnDetector::new(Duration::from_millis(100), 2);
        let mut pattern = vec![true; 4];
        pattern.extend([false; 3]);
        pattern.extend([true; 2]);
        let events = run(&mut d, &pattern);
        assert_eq!(
            events,
            [
                (1, TurnEvent::SpeechStarted),
                (4, TurnEvent::SpeechPaused),
                (7, TurnEvent::SpeechResumed),
            ]
        );
        let mut d = TurnDetector::new(Duration::from_millis(100), 2);
        assert!(run(&mut d, &[true, false, true, false, false]).is_empty());
    }

    proptest! {
        /// For any VAD pattern: a turn ends only after speech started, and only once the
        /// non-speech since the last speech frame reaches the timeout.
        #[test]
        fn turns_end_only_after_speech_and_the_full_timeout(pattern in proptest::collection::vec(any::<bool>(), 0..300), timeout_frames in 1u32..20) {
            let timeout = FRAME * timeout_frames;
            let mut d = TurnDetector::new(timeout, 1);
            let mut started = false;
            let mut last_speech: Option<usize> = None;
            for (i, &s) in pattern.iter().enumerate() {
                let event = d.observe(FRAME * i as u32, s);
                if s { last_speech = Some(i); }
                match event {
                    TurnEvent::SpeechStarted => { prop_assert!(!started); started = true; }
                    TurnEvent::TurnEnded => {
                        prop_assert!(started);
                        let last = last_speech.unwrap_or(0);
                        prop_assert_eq!(i - last, timeout_frames as usize);
                        started = false;
                    }
                    _ => {}
                }
            }
        }
    }
}
