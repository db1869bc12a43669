//! Decimation from the 48 kHz media rate by an integer factor: 3 for the pipeline's
//! listeners (VAD, STT hear 16 kHz), and 2, 3 or 6 for WebSocket clients at 24, 16 or
//! 8 kHz. Each is a fixed windowed-sinc low-pass that keeps its state across calls (no
//! clicks between frames), then one sample in `factor`. The way up is the general
//! [`Resampler`](crate::pipeline::audio::Resampler); the way down gets this longer filter
//! because its aliasing lands in what STT and callers hear (16 taps per factor: 48 at
//! 16 kHz, where the 32-tap resampler cost pocketsphinx the reply's words in the
//! end-to-end test).

/// Filter taps per unit of decimation factor.
const TAPS_PER_FACTOR: usize = 16;

/// 48 kHz → 48 kHz / `factor`: a windowed-sinc low-pass at 90% of the output's Nyquist
/// (the speech band kept flat, everything the output cannot carry removed), then one
/// sample in `factor`.
#[derive(Debug)]
pub struct Decimator {
    factor: usize,
    taps: Vec<f32>,
    history: Vec<f32>,
    at: usize,
    phase: usize,
}

/// The pipeline's 48 → 16 kHz for VAD and STT.
pub type Downsample3 = Decimator;

impl Default for Decimator {
    /// Factor 3: 48 → 16 kHz.
    fn default() -> Self {
        Self::new(3)
    }
}

impl Decimator {
    /// Keeps one sample in `factor` (1 passes samples through).
    pub fn new(factor: usize) -> Self {
        let factor = factor.max(1);
        let len = TAPS_PER_FACTOR * factor;
        let cutoff = 0.9 / factor as f64;
        let centre = (len as f64 - 1.0) / 2.0;
        let mut taps: Vec<f32> = (0..len)
            .map(|k| {
                let d = k as f64 - centre;
                let x = std::f64::consts::PI * cutoff * d;
                let sinc = if x.abs() < 1e-9 { 1.0 } else { x.sin() / x };
                let window = 0.5 * (1.0 + (std::f64::consts::PI * d / (centre + 1.0)).cos());
                (sinc * window) as f32
            })
            .collect();
        let sum: f32 = taps.iter().sum();
        taps.iter_mut().for_each(|t| *t /= sum);
        Self {
            factor,
            history: vec![0.0; len],
            taps,
            at: 0,
            phase: 0,
        }
    }

    /// Appends one output sample per `factor` input samples to `out` (the phase carries
    /// over, so input lengths need not be multiples of the factor).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.factor == 1 {
            out.extend_from_slice(input);
            return;
        }
        let len = self.taps.len();
        out.reserve(input.len() / self.factor + 1);
        for &sample in input {
            self.history[self.at] = f32::from(sample);
            self.at = (self.at + 1) % len;
            if self.phase == 0 {
                // history[at] is now the oldest sample.
                let mut y = 0f32;
                for (k, tap) in self.taps.iter().enumerate() {
                    y += tap * self.history[(self.at + k) % len];
                }
                out.push(clamp(y.round() as i32));
            }
            self.phase = (self.phase + 1) % self.factor;
        }
    }
}

fn clamp(x: i32) -> i16 {
    i16::try_from(x.clamp(i32::from(i16::MIN), i32::from(i16::MAX))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: f64, hz: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (10_000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn decimation_keeps_length_and_a_speech_tone() {
        let input = tone(48_000.0, 1_000.0, 4_800);
        let mut down = Downsample3::default();
        let mut back = Vec::new();
        // Odd chunk sizes: state must carry over between calls.
        for chunk in input.chunks(11) {
            down.process(chunk, &mut back);
        }
        assert_eq!(back.len(), 1_600);
        let ratio = rms(&back[100..]) / rms(&input[300..]);
        assert!((0.85..1.05).contains(&ratio), "gain {ratio}");
    }

    #[test]
    fn every_websocket_factor_keeps_length_and_tone_and_removes_what_it_cannot_carry() {
        for (factor, out_rate) in [(2, 24_000.0), (3, 16_000.0), (6, 8_000.0)] {
            let input = tone(48_000.0, 1_000.0, 4_800);
            let mut back = Vec::new();
            let mut down = Decimator::new(factor);
            for chunk in input.chunks(7) {
                down.process(chunk, &mut back);
            }
            assert_eq!(back.len(), 4_800 / factor, "factor {factor}");
            let ratio = rms(&back[100..]) / rms(&input[600..]);
            assert!(
                (0.85..1.05).contains(&ratio),
                "factor {factor}: gain {ratio}"
            );
            // A tone just above the output's Nyquist would alias into the band.
            let above = tone(48_000.0, out_rate * 0.55, 4_800);
            let mut aliased = Vec::new();
            Decimator::new(factor).process(&above, &mut aliased);
            assert!(rms(&aliased[100..]) < 0.1 * rms(&above), "factor {factor}");
        }
        let mut same = Vec::new();
        Decimator::new(1).process(&[1, 2, 3], &mut same);
        assert_eq!(same, [1, 2, 3]);
    }

    #[test]
    fn decimation_attenuates_what_16_khz_cannot_carry() {
        // 16 kHz would alias onto 0 Hz at a 16 kHz output rate; the filter has a zero there.
        let input = tone(48_000.0, 16_000.0, 4_800);
        let mut out = Vec::new();
        Downsample3::default().process(&input, &mut out);
        assert!(rms(&out[10..]) < 0.05 * rms(&input), "{}", rms(&out[10..]));
    }
}
