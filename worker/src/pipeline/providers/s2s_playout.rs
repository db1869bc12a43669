//! Reply audio of a network speech-to-speech provider (`openai-realtime`, `pipecat`) on its way
//! to the client: the provider sends it in bursts, the client must get one 20 ms frame per
//! period, so it waits here and leaves on the media loop's clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::media::{FRAME_PERIOD, FRAME_SAMPLES, Frame, SAMPLE_RATE};

/// Reply audio held at 48 kHz: ten seconds; beyond that the oldest goes.
const MAX_PLAYOUT: usize = 10 * SAMPLE_RATE as usize;

/// Queued reply samples (48 kHz mono) and when the next frame is due.
#[derive(Debug, Default)]
pub struct Playout {
    queue: VecDeque<i16>,
    next_due: Option<Instant>,
}

impl Playout {
    /// Samples queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops everything queued (barge-in, failure).
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    /// Queues `samples`; true when the queue overflowed and its oldest audio went.
    pub fn extend(&mut self, samples: Vec<i16>) -> bool {
        self.queue.extend(samples);
        let excess = self.queue.len().saturating_sub(MAX_PLAYOUT);
        self.queue.drain(..excess);
        excess > 0
    }

    /// Fills `out` with the next frame (zero-padded) if one is due at `now`; returns the
    /// samples taken, 0 when it is not time yet. After a stall it catches up by at most two
    /// frames rather than bursting.
    pub fn take_due(&mut self, now: Instant, out: &mut Frame) -> usize {
        if self
            .next_due
            .is_some_and(|due| now + Duration::from_millis(2) < due)
        {
            return 0;
        }
        let base = self
            .next_due
            .map_or(now, |due| due.max(now - 2 * FRAME_PERIOD));
        self.next_due = Some(base.max(now - FRAME_PERIOD) + FRAME_PERIOD);
        out.fill(0);
        let n = self.queue.len().min(FRAME_SAMPLES);
        for (slot, s) in out.iter_mut().zip(self.queue.drain(..n)) {
            *slot = s;
        }
        n
    }
}
