//! Opus at 48 kHz mono, 20 ms frames, through libopus (the `opus` crate, which builds
//! libopus 1.5 from its bundled source). Every call is timed into the codec histogram.

use std::time::Instant;

use super::{FRAME_SAMPLES, Frame, SAMPLE_RATE};
use crate::metrics::MediaMetrics;

/// Bits per second the encoder aims for: wideband speech with headroom.
const BITRATE: i32 = 32_000;

/// Largest Opus packet the encoder may produce (RFC 6716 allows up to 1275 bytes).
const MAX_PACKET: usize = 1_275;

/// Most samples one received packet can decode to (120 ms at 48 kHz).
const MAX_DECODED: usize = 5_760;

/// Why a codec call failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libopus refused to create an encoder or decoder.
    #[error("cannot create the Opus {0}")]
    Create(&'static str, #[source] opus::Error),
    /// Encoding a frame failed.
    #[error("Opus encoding failed")]
    Encode(#[source] opus::Error),
    /// A received packet could not be decoded (corrupt or not Opus).
    #[error("Opus decoding failed")]
    Decode(#[source] opus::Error),
}

impl CodecError {
    /// Stable CamelCase reason, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::Create(..) => "CodecCreateFailed",
            CodecError::Encode(_) => "EncodeFailed",
            CodecError::Decode(_) => "DecodeFailed",
        }
    }
}

/// Encodes 20 ms mono frames.
pub struct FrameEncoder {
    inner: opus::Encoder,
    packet: Vec<u8>,
    metrics: MediaMetrics,
}

impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder").finish_non_exhaustive()
    }
}

impl FrameEncoder {
    /// A VoIP-tuned encoder with in-band FEC, so the far end can repair a lost packet.
    pub fn new(metrics: MediaMetrics) -> Result<Self, CodecError> {
        let create = |e| CodecError::Create("encoder", e);
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(create)?;
        inner
            .set_bitrate(opus::Bitrate::Bits(BITRATE))
            .map_err(create)?;
        inner.set_inband_fec(true).map_err(create)?;
        inner.set_packet_loss_perc(5).map_err(create)?;
        Ok(Self {
            inner,
            packet: vec![0; MAX_PACKET],
            metrics,
        })
    }

    /// Encodes one frame; the packet is valid until the next call.
    pub fn encode(&mut self, frame: &Frame) -> Result<&[u8], CodecError> {
        let started = Instant::now();
        let len = self
            .inner
            .encode(frame, &mut self.packet)
            .map_err(CodecError::Encode)?;
        self.metrics.observe_codec("encode", started.elapsed());
        Ok(&self.packet[..len])
    }
}

/// Decodes received packets, concealing lost ones.
pub struct FrameDecoder {
    inner: opus::Decoder,
    pcm: Vec<i16>,
    metrics: MediaMetrics,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder").finish_non_exhaustive()
    }
}

impl FrameDecoder {
    /// A mono decoder: a stereo stream (browsers signal `opus/48000/2`) is downmixed.
    pub fn new(metrics: MediaMetrics) -> Result<Self, CodecError> {
        let inner = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
            .map_err(|e| CodecError::Create("decoder", e))?;
        Ok(Self {
            inner,
            pcm: vec![0; MAX_DECODED],
            metrics,
        })
    }

    /// Decodes `packet`, or conceals one lost 20 ms frame when it is `None`. The samples
    /// are valid until the next call.
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<&[i16], CodecError> {
        let started = Instant::now();
        let len = match packet {
            Some(packet) => self.inner.decode(packet, &mut self.pcm, false),
            // An empty input asks libopus for packet-loss concealment of that length.
            None => self
                .inner
                .decode(&[], &mut self.pcm[..FRAME_SAMPLES], false),
        }
        .map_err(CodecError::Decode)?;
        self.metrics.observe_codec("decode", started.elapsed());
        Ok(&self.pcm[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn metrics() -> MediaMetrics {
        Metrics::new()
            .unwrap_or_else(|e| panic!("{e}"))
            .media()
            .clone()
    }

    #[test]
    fn a_tone_survives_encode_and_decode() {
        let mut encoder = FrameEncoder::new(metrics()).unwrap_or_else(|e| panic!("{e}"));
        let mut decoder = FrameDecoder::new(metrics()).unwrap_or_else(|e| panic!("{e}"));
        let mut energy = 0f64;
        for n in 0..10 {
            let mut frame = [0i16; FRAME_SAMPLES];
            for (i, sample) in frame.iter_mut().enumerate() {
                let t = (n * FRAME_SAMPLES + i) as f64 / f64::from(SAMPLE_RATE);
                *sample = (8_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16;
            }
            let packet = encoder
                .encode(&frame)
                .unwrap_or_else(|e| panic!("{e}"))
                .to_vec();
            assert!(!packet.is_empty() && packet.len() < 400, "{}", packet.len());
            let pcm = decoder
                .decode(Some(&packet))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(pcm.len(), FRAME_SAMPLES);
            if n >= 5 {
                energy += pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
            }
        }
        let rms = (energy / (5.0 * FRAME_SAMPLES as f64)).sqrt();
        assert!(rms > 3_000.0, "the tone came back too quiet: rms {rms}");
    }

    #[test]
    fn a_lost_packet_is_concealed_and_garbage_is_an_error_not_a_panic() {
        let mut decoder = FrameDecoder::new(metrics()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            decoder.decode(None).map(<[i16]>::len).unwrap_or_default(),
            FRAME_SAMPLES
        );
        // A TOC byte announcing a code-3 packet with an impossible frame count.
        let garbage = [0xff_u8, 0xff, 0xff, 0xff];
        let err = decoder.decode(Some(&garbage)).map(|_| ()).unwrap_err();
        assert_eq!(err.reason(), "DecodeFailed");
    }
}
