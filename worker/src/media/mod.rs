//! Audio on its way through a session: Opus frames in and out, the receive-side jitter
//! buffer, the speech-to-speech provider (today the diagnostic `echo`) and resampling
//! for WebSocket clients that speak 16 kHz.
//!
//! Everything here is plain, synchronous Rust over sample buffers: the transports own
//! the clocks and the sockets, so these pieces are unit-tested without either.

pub mod echo;
pub mod jitter;
pub mod opus_codec;
pub mod resample;

use std::time::Duration;

/// The pipeline's sample rate: Opus's native 48 kHz.
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in one 20 ms mono frame at [`SAMPLE_RATE`].
pub const FRAME_SAMPLES: usize = 960;

/// The frame period: every transport sends one frame per period.
pub const FRAME_PERIOD: Duration = Duration::from_millis(20);

/// One 20 ms mono frame of PCM16 at 48 kHz.
pub type Frame = [i16; FRAME_SAMPLES];
