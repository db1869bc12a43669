//! The receive-side jitter buffer: RTP packets in arrival order, Opus payloads out in
//! sequence order, one pull per playout step.
//!
//! It waits for `target` packets before starting playout, reports a gap as a loss (so
//! the decoder conceals it), drops packets that arrive after their turn, and when a
//! burst leaves it holding far more than `target` (after a network stall) it skips
//! ahead instead of keeping the extra delay for the rest of the call.

use std::collections::BTreeMap;

use bytes::Bytes;

/// What one pull yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Playout {
    /// The next packet's payload.
    Packet(Bytes),
    /// The next packet is missing but later ones are here: conceal one frame.
    Lost,
    /// Nothing to play: not started yet, or ran dry (then it re-buffers to `target`).
    Empty,
}

/// What became of a pushed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered for playout.
    Accepted,
    /// Its turn had passed, or it was already buffered: dropped.
    Late,
    /// The buffer was full, so the oldest packet was dropped to make room.
    Overflow,
}

/// A sequence-ordered buffer of one RTP stream.
#[derive(Debug)]
pub struct JitterBuffer {
    packets: BTreeMap<u64, Bytes>,
    /// Extended (unwrapped) sequence number of the next packet to play.
    next: Option<u64>,
    /// Highest extended sequence number seen, the reference for unwrapping.
    highest: Option<u64>,
    target: usize,
    capacity: usize,
    playing: bool,
}

/// How far past `target` the buffer may grow before it skips ahead.
const SKIP_AHEAD_SLACK: usize = 4;

impl JitterBuffer {
    /// Starts playout once `target` packets are buffered; holds at most `capacity`.
    pub fn new(target: usize, capacity: usize) -> Self {
        let target = target.max(1);
        Self {
            packets: BTreeMap::new(),
            next: None,
            highest: None,
            target,
            capacity: capacity.max(target + SKIP_AHEAD_SLACK + 1),
            playing: false,
        }
    }

    /// Packets buffered.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Adds a packet with RTP sequence number `seq`.
    pub fn push(&mut self, seq: u16, payload: Bytes) -> Pushed {
        let ext = self.unwrap(seq);
        if self.next.is_some_and(|next| ext < next) || self.packets.contains_key(&ext) {
            return Pushed::Late;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.packets.insert(ext, payload);
        if self.packets.len() > self.capacity {
            if let Some((oldest, _)) = self.packets.pop_first() {
                self.next = Some(oldest + 1);
            }
            return Pushed::Overflow;
        }
        Pushed::Accepted
    }

    /// The next step of playout.
    pub fn pop(&mut self) -> Playout {
        if !self.playing {
            if self.packets.len() < self.target {
                return Playout::Empty;
            }
            self.playing = true;
            self.next = self.packets.keys().next().copied();
        }
        if self.packets.len() > self.target + SKIP_AHEAD_SLACK {
            // Keep `target` packets: drop the oldest extra delay in one go.
            while self.packets.len() > self.target {
                self.packets.pop_first();
            }
            self.next = self.packets.keys().next().copied();
        }
        let Some(next) = self.next else {
            return Playout::Empty;
        };
        if let Some(payload) = self.packets.remove(&next) {
            self.next = Some(next + 1);
            return Playout::Packet(payload);
        }
        if self.packets.is_empty() {
            // Ran dry: the sender paused or the network stalled. Re-buffer.
            self.playing = false;
            return Playout::Empty;
        }
        self.next = Some(next + 1);
        Playout::Lost
    }

    /// Maps a 16-bit sequence number to the extended number closest to the highest seen.
    fn unwrap(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            // Start in the middle of the space so an early wrap backwards cannot underflow.
            return (1 << 32) + u64::from(seq);
        };
        let cycle = highest & !0xffff;
        let candidates = [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)]
            .map(|base| base + u64::from(seq));
        candidates
            .into_iter()
            .min_by_key(|c| c.abs_diff(highest))
            .unwrap_or(cycle + u64::from(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn reorders_and_waits_for_the_target_depth() {
        let mut jb = JitterBuffer::new(2, 50);
        assert_eq!(jb.push(11, p(11)), Pushed::Accepted);
        assert_eq!(jb.pop(), Playout::Empty, "one packet is below the target");
        jb.push(10, p(10));
        assert_eq!(jb.pop(), Playout::Packet(p(10)));
        assert_eq!(jb.pop(), Playout::Packet(p(11)));
        assert_eq!(jb.pop(), Playout::Empty, "ran dry");
    }

    #[test]
    fn a_gap_is_a_loss_and_a_straggler_is_late() {
        let mut jb = JitterBuffer::new(1, 50);
        jb.push(1, p(1));
        jb.push(3, p(3));
        assert_eq!(jb.pop(), Playout::Packet(p(1)));
        assert_eq!(jb.pop(), Playout::Lost);
        assert_eq!(jb.push(2, p(2)), Pushed::Late);
        assert_eq!(jb.pop(), Playout::Packet(p(3)));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut jb = JitterBuffer::new(1, 50);
        jb.push(65_535, p(1));
        jb.push(0, p(2));
        jb.push(1, p(3));
        assert_eq!(jb.pop(), Playout::Packet(p(1)));
        assert_eq!(jb.pop(), Playout::Packet(p(2)));
        assert_eq!(jb.pop(), Playout::Packet(p(3)));
    }

    #[test]
    fn a_burst_after_a_stall_is_skipped_down_to_the_target() {
        let mut jb = JitterBuffer::new(2, 50);
        for seq in 0..12 {
            jb.push(seq, p(seq as u8));
        }
        assert_eq!(jb.pop(), Playout::Packet(p(10)));
        assert_eq!(jb.len(), 1);
    }

    proptest! {
        /// Whatever arrives, in any order, playout never yields a packet twice and the buffer
        /// stays within its capacity. Packets are told apart by a payload of their own, not by
        /// sequence number: a sender that jumps by half the sequence space moves the unwrap to
        /// another cycle, and the same 16-bit number then names a new packet.
        #[test]
        fn playout_never_repeats_a_packet_and_is_bounded(seqs in proptest::collection::vec(any::<u16>(), 0..300)) {
            let mut jb = JitterBuffer::new(3, 20);
            let mut played = std::collections::HashSet::new();
            for (i, seq) in seqs.iter().enumerate() {
                let id = u32::try_from(i).unwrap_or(u32::MAX);
                jb.push(*seq, Bytes::copy_from_slice(&id.to_be_bytes()));
                prop_assert!(jb.len() <= 20);
                if i % 2 == 0
                    && let Playout::Packet(b) = jb.pop()
                {
                    let got = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    prop_assert!(played.insert(got), "packet {} played twice", got);
                }
            }
        }

        /// A sender that moves forward with reordering and loss (each packet up to 20 behind
        /// or 40 ahead of the one before, across the 16-bit wrap): playout never goes back.
        #[test]
        fn playout_never_goes_back(start in any::<u16>(), steps in proptest::collection::vec(-20i32..=40, 0..300)) {
            let mut jb = JitterBuffer::new(3, 20);
            let mut seq = start;
            let mut last: Option<u16> = None;
            for (i, step) in steps.iter().enumerate() {
                seq = seq.wrapping_add_signed(i16::try_from(*step).unwrap_or(0));
                jb.push(seq, Bytes::copy_from_slice(&seq.to_be_bytes()));
                if i % 2 == 0
                    && let Playout::Packet(b) = jb.pop()
                {
                    let got = u16::from_be_bytes([b[0], b[1]]);
                    if let Some(prev) = last {
                        // Forward in wrapping order: a difference in the upper half is backwards.
                        prop_assert!(got.wrapping_sub(prev) > 0 && got.wrapping_sub(prev) < 0x8000, "{} after {}", got, prev);
                    }
                    last = Some(got);
                }
            }
        }
    }
}
