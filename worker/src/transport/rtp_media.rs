//! The media loop of one WebRTC session, on a 20 ms clock: received Opus packets go
//! through the jitter buffer and the decoder into the speech-to-speech provider
//! (`echo`), and every tick one encoded frame goes out — the provider's, or silence —
//! so the stream is paced (one packet per tick, never a burst) and its RTP timestamps
//! follow the clock (they advance by 960 per tick, across silence and late ticks).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rtc::rtp;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;

use crate::media::echo::SpeechToSpeech;
use crate::media::jitter::{JitterBuffer, Playout, Pushed};
use crate::media::opus_codec::{CodecError, FrameDecoder, FrameEncoder};
use crate::media::{FRAME_PERIOD, FRAME_SAMPLES, Frame};
use crate::metrics::MediaMetrics;

/// Packets the jitter buffer holds at most: a second.
const JITTER_CAPACITY: usize = 50;

/// Where the loop sends: the local track, its SSRC and the negotiated Opus payload type.
pub struct RtpOut {
    /// The track bound to the answer's audio sender.
    pub track: Arc<TrackLocalStaticRTP>,
    /// SSRC of the outgoing stream.
    pub ssrc: u32,
    /// Payload type the offer chose for Opus.
    pub payload_type: u8,
}

/// Runs until `stop` fires; returns early only if libopus cannot be set up.
pub async fn run(
    mut rtp_in: mpsc::Receiver<(u16, Bytes)>,
    out: RtpOut,
    jitter_packets: usize,
    metrics: MediaMetrics,
    stop: CancellationToken,
    mut provider: Box<dyn SpeechToSpeech>,
    events: Option<mpsc::Sender<String>>,
) -> Result<(), CodecError> {
    let mut decoder = FrameDecoder::new(metrics.clone())?;
    let mut encoder = FrameEncoder::new(metrics.clone())?;
    provider.connected();
    let mut jitter = JitterBuffer::new(jitter_packets, JITTER_CAPACITY);
    let mut pcm_in: VecDeque<i16> = VecDeque::with_capacity(4 * FRAME_SAMPLES);
    let mut sequence = u16::from_be_bytes(seed::<2>());
    let timestamp_base = u32::from_be_bytes(seed::<4>());
    let mut was_talking = false;

    let start = Instant::now();
    let mut ticks = tokio::time::interval(FRAME_PERIOD);
    // A late tick is skipped, not made up for with a burst; its slot shows up as a
    // timestamp gap, which the receiver conceals like a loss.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_slot: Option<u64> = None;
    loop {
        let tick = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            tick = ticks.tick() => tick,
        };
        let slot = slot_of(tick.into_std().saturating_duration_since(start));
        if let Some(last) = last_slot
            && slot > last + 1
        {
            metrics.count_late_ticks(slot - last - 1);
        }
        last_slot = Some(slot);

        while let Ok((seq, payload)) = rtp_in.try_recv() {
            match jitter.push(seq, payload) {
                Pushed::Accepted => {}
                Pushed::Late => metrics.count_dropped("jitter_late"),
                Pushed::Overflow => metrics.count_dropped("jitter_overflow"),
            }
        }
        while pcm_in.len() < FRAME_SAMPLES {
            let decoded = match jitter.pop() {
                Playout::Packet(payload) => decoder.decode(Some(&payload)),
                Playout::Lost => decoder.decode(None),
                Playout::Empty => break,
            };
            match decoded {
                Ok(pcm) => pcm_in.extend(pcm.iter().copied()),
                Err(e) => {
                    metrics.count_dropped("decode_error");
                    tracing::debug!(reason = e.reason(), error = %e, "dropping an undecodable packet");
                }
            }
        }
        if pcm_in.len() >= FRAME_SAMPLES {
            let mut frame: Frame = [0; FRAME_SAMPLES];
            for (slot, sample) in frame.iter_mut().zip(pcm_in.drain(..FRAME_SAMPLES)) {
                *slot = sample;
            }
            if provider.push(&frame) > 0 {
                metrics.count_dropped("provider_queue_full");
            }
        }

        let mut frame: Frame = [0; FRAME_SAMPLES];
        let talking = provider.pull(&mut frame);
        // Pipeline events (states, transcripts) go to the client's events data channel.
        while let Some(event) = provider.next_event() {
            if events
                .as_ref()
                .is_some_and(|tx| tx.try_send(event).is_err())
            {
                metrics.count_dropped("pipeline_event_queue_full");
            }
        }
        let payload = Bytes::copy_from_slice(encoder.encode(&frame)?);
        let header = rtp::header::Header {
            version: 2,
            // RFC 3551 §4.1: the marker flags the first packet of a talkspurt.
            marker: talking && !was_talking,
            payload_type: out.payload_type,
            sequence_number: sequence,
            timestamp: rtp_timestamp(timestamp_base, slot),
            ssrc: out.ssrc,
            ..Default::default()
        };
        was_talking = talking;
        sequence = sequence.wrapping_add(1);
        metrics.count_packet("webrtc", "out", payload.len());
        if let Err(e) = out.track.write_rtp(rtp::Packet { header, payload }).await {
            metrics.count_dropped("rtp_out_failed");
            tracing::debug!(error = %e, "sending RTP failed");
        }
    }
}

/// The 20 ms slot an instant `elapsed` after the start falls in (rounded, so a tick a
/// few microseconds early or late keeps its slot).
fn slot_of(elapsed: std::time::Duration) -> u64 {
    let period = FRAME_PERIOD.as_micros();
    u64::try_from((elapsed.as_micros() + period / 2) / period).unwrap_or(u64::MAX)
}

/// The RTP timestamp of slot `slot`: 960 samples (20 ms at 48 kHz) per slot, wrapping.
fn rtp_timestamp(base: u32, slot: u64) -> u32 {
    // Truncation is the RTP timestamp's own wrap-around (RFC 3550 §5.1).
    base.wrapping_add((slot.wrapping_mul(FRAME_SAMPLES as u64)) as u32)
}

/// Random starting values for sequence numbers and timestamps (RFC 3550 §5.1).
fn seed<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Predictable starting values only weaken RFC 3550's plaintext-attack hedge (SRTP
    // encrypts anyway), so a failure of the OS generator is not worth failing a call.
    let _ = getrandom::fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_rounded_to_the_nearest_tick() {
        assert_eq!(slot_of(Duration::ZERO), 0);
        assert_eq!(slot_of(Duration::from_micros(19_900)), 1);
        assert_eq!(slot_of(Duration::from_micros(20_300)), 1);
        assert_eq!(slot_of(Duration::from_millis(60)), 3);
    }

    #[test]
    fn timestamps_advance_960_per_slot_and_wrap() {
        assert_eq!(rtp_timestamp(0, 1), 960);
        assert_eq!(rtp_timestamp(u32::MAX, 1), 959);
        // A skipped tick leaves a gap of exactly one frame.
        assert_eq!(rtp_timestamp(10, 5) - rtp_timestamp(10, 3), 1_920);
    }
}
