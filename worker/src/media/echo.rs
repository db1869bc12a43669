//! The diagnostic speech-to-speech provider `echo`: what comes in goes back out.
//!
//! It stays in the product for diagnostics and load tests: a session running `echo`
//! exercises every transport, codec and pacing path with no model behind it.

use std::collections::VecDeque;

use super::{FRAME_SAMPLES, Frame};

/// A speech-to-speech provider as the media loop sees it: PCM frames in, PCM frames out,
/// never blocking (a provider that waits on a network does so on its own task).
pub trait SpeechToSpeech: Send {
    /// The provider's name, for logs.
    fn name(&self) -> &'static str;

    /// Hands one received 20 ms frame to the provider; returns how many samples it had
    /// to drop because its output queue was full.
    fn push(&mut self, frame: &Frame) -> usize;

    /// Fills `out` with the next frame to send; false when the provider has nothing to
    /// say (the caller sends silence, so the stream's timing never stops).
    fn pull(&mut self, out: &mut Frame) -> bool;

    /// The client's media connection is up (a pipeline starts listening).
    fn connected(&mut self) {}

    /// The caller pressed a key (a DTMF digit: `0`–`9`, `*`, `#`, `A`–`D`); false when the
    /// provider has no use for key presses (the transport then only counts them).
    fn dtmf(&mut self, _digit: char) -> bool {
        false
    }

    /// The next text event for the client (JSON: state changes, transcripts, latency
    /// figures), which transports send as data-channel messages or WebSocket text frames.
    fn next_event(&mut self) -> Option<String> {
        None
    }
}

/// Returns every frame it is given, in order, through a bounded queue.
#[derive(Debug)]
pub struct Echo {
    queue: VecDeque<i16>,
    limit: usize,
}

impl Echo {
    /// An echo that holds at most `max_frames` frames it has not sent back yet; more
    /// than that means the sender stalled, and the oldest audio is dropped first.
    pub fn new(max_frames: usize) -> Self {
        let limit = max_frames.max(1) * FRAME_SAMPLES;
        Self {
            queue: VecDeque::with_capacity(limit),
            limit,
        }
    }
}

impl SpeechToSpeech for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn push(&mut self, frame: &Frame) -> usize {
        self.queue.extend(frame.iter().copied());
        let excess = self.queue.len().saturating_sub(self.limit);
        self.queue.drain(..excess);
        excess
    }

    fn pull(&mut self, out: &mut Frame) -> bool {
        if self.queue.len() < FRAME_SAMPLES {
            return false;
        }
        for (slot, sample) in out.iter_mut().zip(self.queue.drain(..FRAME_SAMPLES)) {
            *slot = sample;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(value: i16) -> Frame {
        [value; FRAME_SAMPLES]
    }

    #[test]
    fn returns_frames_in_order_then_nothing() {
        let mut echo = Echo::new(4);
        assert_eq!(echo.push(&frame(1)), 0);
        assert_eq!(echo.push(&frame(2)), 0);
        let mut out = frame(0);
        assert!(echo.pull(&mut out));
        assert_eq!(out[0], 1);
        assert!(echo.pull(&mut out));
        assert_eq!(out[FRAME_SAMPLES - 1], 2);
        assert!(!echo.pull(&mut out), "nothing left to say");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_audio_and_says_how_much() {
        let mut echo = Echo::new(2);
        echo.push(&frame(1));
        echo.push(&frame(2));
        assert_eq!(echo.push(&frame(3)), FRAME_SAMPLES);
        let mut out = frame(0);
        assert!(echo.pull(&mut out));
        assert_eq!(out[0], 2, "frame 1 was dropped");
    }
}
