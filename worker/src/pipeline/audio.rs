//! Audio helpers the providers share: WAV in and out, and resampling between the rates
//! engines speak (espeak-ng 22.05 kHz, OpenAI 24 kHz, pocketsphinx 16 kHz) and the
//! pipeline's 48 kHz.

/// Mono PCM16 samples with their rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcm {
    /// Samples per second.
    pub rate: u32,
    /// Mono samples.
    pub samples: Vec<i16>,
}

/// Why a WAV could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WavError {
    /// Not RIFF/WAVE, or a chunk runs past the end.
    #[error("not a WAV file: {0}")]
    Malformed(&'static str),
    /// Not 16-bit PCM.
    #[error("unsupported WAV format (need 16-bit PCM, got format {format} with {bits} bits)")]
    Unsupported {
        /// WAVE format tag.
        format: u16,
        /// Bits per sample.
        bits: u16,
    },
}

/// Reads a 16-bit PCM WAV (any channel count: channels are averaged to mono). A `data`
/// chunk whose size field is a streaming placeholder (0 or 0xFFFFFFFF) runs to the end.
pub fn parse_wav(bytes: &[u8]) -> Result<Pcm, WavError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::Malformed("missing RIFF/WAVE header"));
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut at = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32_at(at + 4) as usize;
        let body = at + 8;
        if id == b"fmt " {
            if body + 16 > bytes.len() {
                return Err(WavError::Malformed("short fmt chunk"));
            }
            format = Some((
                u16_at(body),
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 14),
            ));
        } else if id == b"data" {
            let (tag, channels, rate, bits) =
                format.ok_or(WavError::Malformed("data before fmt"))?;
            if tag != 1 || bits != 16 {
                return Err(WavError::Unsupported { format: tag, bits });
            }
            // A rate no audio has would divide by zero or overflow further on (found by
            // `cargo xtask fuzz wav`).
            if !(1_000..=384_000).contains(&rate) {
                return Err(WavError::Malformed("sample rate outside 1–384 kHz"));
            }
            let end = if size == 0 || size == u32::MAX as usize {
                bytes.len()
            } else {
                (body + size).min(bytes.len())
            };
            let channels = usize::from(channels.max(1));
            let samples = bytes[body..end]
                .chunks_exact(2 * channels)
                .map(|frame| {
                    let sum: i32 = frame
                        .chunks_exact(2)
                        .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
                        .sum();
                    (sum / channels as i32) as i16
                })
                .collect();
            return Ok(Pcm { rate, samples });
        }
        at = body + size + (size & 1);
    }
    Err(WavError::Malformed("no data chunk"))
}

/// A canonical 44-byte-header mono PCM16 WAV.
pub fn encode_wav(pcm: &Pcm) -> Vec<u8> {
    let data_len = (pcm.samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + pcm.samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&pcm.rate.to_le_bytes());
    out.extend_from_slice(&pcm.rate.saturating_mul(2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in &pcm.samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Half the length of the interpolation kernel, in input samples.
const HALF: usize = 16;
/// Kernel phases tabulated between two input samples.
const PHASES: usize = 256;

/// Streaming windowed-sinc resampler for any pair of rates (32 taps, Hann window, cut off
/// at 90% of the lower Nyquist). Linear interpolation is not enough here: its images alias
/// into the speech band on the way down to 16 kHz and cost pocketsphinx whole words.
#[derive(Clone, Debug)]
pub struct Resampler {
    step: f64,
    table: Vec<f32>,
    history: Vec<f32>,
    /// Input index of `history[0]`.
    base: u64,
    /// Input samples seen.
    seen: u64,
    /// Input position of the next output sample.
    next: f64,
    passthrough: bool,
}

impl Resampler {
    /// From `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Self {
        let (from, to) = (f64::from(from.max(1)), f64::from(to.max(1)));
        let cutoff = 0.9 * (to / from).min(1.0);
        let mut table = Vec::with_capacity(PHASES * 2 * HALF);
        for phase in 0..PHASES {
            let frac = phase as f64 / PHASES as f64;
            let taps: Vec<f64> = (0..2 * HALF)
                .map(|k| {
                    let d = k as f64 - (HALF as f64 - 1.0) - frac;
                    let x = std::f64::consts::PI * cutoff * d;
                    let sinc = if x.abs() < 1e-9 { 1.0 } else { x.sin() / x };
                    let window = 0.5 * (1.0 + (std::f64::consts::PI * d / HALF as f64).cos());
                    sinc * window.max(0.0)
                })
                .collect();
            let sum: f64 = taps.iter().sum();
            table.extend(taps.iter().map(|t| (t / sum) as f32));
        }
        Self {
            step: from / to,
            table,
            history: Vec::new(),
            base: 0,
            seen: 0,
            next: 0.0,
            passthrough: from == to,
        }
    }

    /// Appends the resampled `input` to `out`; state carries across calls. Output lags
    /// input by 16 input samples until [`Resampler::flush`].
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.passthrough {
            out.extend_from_slice(input);
            return;
        }
        self.history.extend(input.iter().map(|&x| f32::from(x)));
        self.seen += input.len() as u64;
        self.emit(out);
    }

    /// Pushes out what the kernel still holds (padding with silence).
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        if !self.passthrough {
            self.process(&[0; HALF], out);
        }
    }

    fn emit(&mut self, out: &mut Vec<i16>) {
        loop {
            let center = self.next.floor() as u64;
            if center + HALF as u64 >= self.seen {
                break;
            }
            let frac = self.next - center as f64;
            let phase = ((frac * PHASES as f64) as usize).min(PHASES - 1);
            let taps = &self.table[phase * 2 * HALF..(phase + 1) * 2 * HALF];
            let mut y = 0f32;
            for (k, t) in taps.iter().enumerate() {
                // Input index center - (HALF - 1) + k; before the start counts as silence.
                let index = (center + k as u64).checked_sub(HALF as u64 - 1);
                if let Some(i) = index.and_then(|i| i.checked_sub(self.base)) {
                    y += self.history[i as usize] * t;
                }
            }
            out.push(y.round().clamp(-32_768.0, 32_767.0) as i16);
            self.next += self.step;
        }
        let keep_from = (self.next.floor() as u64).saturating_sub(HALF as u64);
        if keep_from > self.base {
            let drop = ((keep_from - self.base) as usize).min(self.history.len());
            self.history.drain(..drop);
            self.base += drop as u64;
        }
    }
}

/// Resamples a whole buffer.
pub fn resample(pcm: &Pcm, to: u32) -> Vec<i16> {
    let mut out =
        Vec::with_capacity(pcm.samples.len() * to as usize / pcm.rate.max(1) as usize + 1);
    let mut r = Resampler::new(pcm.rate, to);
    r.process(&pcm.samples, &mut out);
    r.flush(&mut out);
    out
}

/// Little-endian PCM16 bytes to samples (an odd trailing byte is ignored).
pub fn samples_from_le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trips_and_garbage_is_refused() {
        let pcm = Pcm {
            rate: 16_000,
            samples: vec![1, -2, 300, i16::MIN, i16::MAX],
        };
        assert_eq!(parse_wav(&encode_wav(&pcm)), Ok(pcm));
        assert!(parse_wav(b"RIFF0000WAVE").is_err());
        assert!(parse_wav(b"hello").is_err());
        // Rates no audio has are refused by name, not carried on to a division or overflow.
        for rate in [0, 999, 384_001, u32::MAX] {
            let wav = encode_wav(&Pcm {
                rate,
                samples: vec![1, 2],
            });
            assert_eq!(
                parse_wav(&wav),
                Err(WavError::Malformed("sample rate outside 1–384 kHz")),
                "{rate}"
            );
        }
    }

    #[test]
    fn resampling_keeps_duration_and_a_tone() {
        let tone: Vec<i16> = (0..22_050)
            .map(|i| {
                (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 22_050.0).sin()) as i16
            })
            .collect();
        let mut out = Vec::new();
        let mut r = Resampler::new(22_050, 48_000);
        for chunk in tone.chunks(333) {
            r.process(chunk, &mut out);
        }
        r.flush(&mut out);
        assert!((out.len() as i64 - 48_000).abs() <= 3, "{}", out.len());
        // Zero crossings: 440 Hz for one second has 880 of them.
        let crossings = out.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        assert!((870..=890).contains(&crossings), "{crossings}");
        // Unity gain in the passband.
        let rms = |x: &[i16]| {
            (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
        };
        let ratio = rms(&out[1_000..47_000]) / rms(&tone[1_000..21_000]);
        assert!((0.97..1.03).contains(&ratio), "gain {ratio}");
    }

    #[test]
    fn going_down_removes_what_the_lower_rate_cannot_carry() {
        // 10 kHz at 48 kHz would alias to 6 kHz at 16 kHz.
        let tone: Vec<i16> = (0..48_000)
            .map(|i| {
                (8_000.0 * (2.0 * std::f64::consts::PI * 10_000.0 * i as f64 / 48_000.0).sin())
                    as i16
            })
            .collect();
        let out = resample(
            &Pcm {
                rate: 48_000,
                samples: tone,
            },
            16_000,
        );
        let peak = out[100..]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap_or(0);
        assert!(peak < 400, "aliased peak {peak} (input peak 8000)");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes (a client's or a provider's WAV) parse or fail cleanly, never panic.
        #[test]
        fn parse_wav_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), header in any::<bool>()) {
            let mut input = if header { b"RIFF\0\0\0\0WAVEfmt ".to_vec() } else { Vec::new() };
            input.extend(bytes);
            let _ = parse_wav(&input);
        }
    }
}
