//! Voice activity detection on 16 kHz audio.
//!
//! The detector is earshot's (a small pure-Rust network whose weights ship inside the crate:
//! no download, nothing unsafe of ours, and `Send` so a session's pipeline can move between
//! threads). It scores 16 ms windows; a 20 ms frame counts as speech when any window that
//! completed in it scores at or above the threshold chosen by `aggressiveness` (0 = least,
//! 3 = most aggressive at calling audio non-speech), as WebRTC's VAD modes do.

use earshot::Detector;

/// Samples per detector window at 16 kHz (16 ms).
const WINDOW: usize = 256;

/// Decides, frame by frame, whether someone speaks.
pub trait VoiceActivity: Send {
    /// Feeds 16 kHz mono samples (any length); true if speech was heard in them.
    fn is_speech(&mut self, samples: &[i16]) -> bool;
}

/// earshot with a threshold per aggressiveness level.
pub struct EarshotVad {
    detector: Box<Detector>,
    pending: Vec<i16>,
    threshold: f32,
    last: bool,
}

impl std::fmt::Debug for EarshotVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarshotVad")
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

/// The score threshold of an aggressiveness level (clamped to 0..=3).
pub fn threshold(aggressiveness: i32) -> f32 {
    match aggressiveness.clamp(0, 3) {
        0 => 0.3,
        1 => 0.45,
        2 => 0.6,
        _ => 0.8,
    }
}

impl EarshotVad {
    /// A detector at `aggressiveness` 0..=3.
    pub fn new(aggressiveness: i32) -> Self {
        Self {
            detector: Detector::default_boxed(),
            pending: Vec::with_capacity(2 * WINDOW),
            threshold: threshold(aggressiveness),
            last: false,
        }
    }
}

impl VoiceActivity for EarshotVad {
    fn is_speech(&mut self, samples: &[i16]) -> bool {
        self.pending.extend_from_slice(samples);
        let mut windows = 0;
        let mut speech = false;
        while self.pending.len() >= WINDOW {
            let score = self.detector.predict_i16(&self.pending[..WINDOW]);
            self.pending.drain(..WINDOW);
            windows += 1;
            speech |= score >= self.threshold;
        }
        if windows > 0 {
            self.last = speech;
        }
        // A frame too short to complete a window keeps the previous decision.
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The espeak-ng fixture as samples (44-byte canonical WAV header skipped).
    pub(crate) fn speech() -> Vec<i16> {
        let wav = include_bytes!("../../tests/fixtures/weather-16k.wav");
        wav[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn spoken_words_are_speech_and_the_silence_around_them_is_not() {
        let mut vad = EarshotVad::new(2);
        let mut audio = vec![0i16; 16_000];
        audio.extend(speech());
        audio.extend(vec![0i16; 16_000]);
        let decisions: Vec<bool> = audio.chunks(320).map(|f| vad.is_speech(f)).collect();
        let speech_frames = decisions.iter().filter(|&&s| s).count();
        assert!(speech_frames > 40, "only {speech_frames} speech frames");
        assert!(
            !decisions[..45].iter().any(|&s| s),
            "speech in the leading silence"
        );
        assert!(
            !decisions[decisions.len() - 30..].iter().any(|&s| s),
            "speech in the trailing silence"
        );
    }

    #[test]
    fn silence_is_not_speech_at_any_level() {
        for level in 0..=3 {
            let mut vad = EarshotVad::new(level);
            let silence = vec![0i16; 320];
            assert!((0..50).all(|_| !vad.is_speech(&silence)), "level {level}");
        }
    }

    #[test]
    fn thresholds_rise_with_aggressiveness() {
        assert!((0..3).all(|l| threshold(l) < threshold(l + 1)));
        assert_eq!(threshold(9), threshold(3));
    }
}
