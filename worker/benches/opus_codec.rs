//! The codec-only bound of an echo session: Opus encode and decode of one 20 ms mono frame
//! through the worker's own wrapper (`media::opus_codec`, libopus 1.5), as frames per second
//! and sessions per core (one decode and one encode per session every 20 ms). Prints figures;
//! asserts nothing about time.
//!
//! `cargo bench -p voice-worker --bench opus_codec`

use std::hint::black_box;
use std::time::Instant;

use voice_worker::media::opus_codec::{FrameDecoder, FrameEncoder};
use voice_worker::media::{FRAME_SAMPLES, Frame};
use voice_worker::metrics::Metrics;

/// Frames per measured pass: 20 s of audio.
const FRAMES: usize = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::new()?.media().clone();
    for (name, signal) in [("1 kHz tone", tone as fn(usize) -> Frame), ("noise", noise)] {
        let frames: Vec<Frame> = (0..FRAMES).map(signal).collect();
        let mut encoder = FrameEncoder::new(metrics.clone())?;
        let mut decoder = FrameDecoder::new(metrics.clone())?;
        // One pass to warm caches and the encoder's state, then the measured pass.
        let mut packets = Vec::with_capacity(FRAMES);
        for frame in &frames {
            black_box(encoder.encode(frame)?);
        }
        let started = Instant::now();
        for frame in &frames {
            packets.push(encoder.encode(black_box(frame))?.to_vec());
        }
        let encode = started.elapsed().as_secs_f64() / FRAMES as f64;
        let started = Instant::now();
        for packet in &packets {
            black_box(decoder.decode(Some(black_box(packet)))?);
        }
        let decode = started.elapsed().as_secs_f64() / FRAMES as f64;
        let bytes = packets.iter().map(Vec::len).sum::<usize>() as f64 / FRAMES as f64;
        println!(
            "{name}: encode {:.1} µs, decode {:.1} µs per 20 ms frame ({bytes:.0} bytes); \
             {:.0} encodes/s, {:.0} decodes/s per core; codec bound {:.0} echo sessions per core",
            encode * 1e6,
            decode * 1e6,
            1.0 / encode,
            1.0 / decode,
            0.020 / (encode + decode)
        );
    }
    Ok(())
}

fn tone(n: usize) -> Frame {
    let mut frame: Frame = [0; FRAME_SAMPLES];
    for (i, sample) in frame.iter_mut().enumerate() {
        let t = (n * FRAME_SAMPLES + i) as f64 / 48_000.0;
        *sample = (10_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16;
    }
    frame
}

/// Deterministic white noise: the hardest input for the encoder.
fn noise(n: usize) -> Frame {
    let mut state = (n as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut frame: Frame = [0; FRAME_SAMPLES];
    for sample in &mut frame {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *sample = (state >> 16) as i16 / 4;
    }
    frame
}
