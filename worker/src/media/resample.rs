//! 48 kHz → 16 kHz for the pipeline's listeners (VAD, STT), which hear 16 kHz while the
//! media runs at 48 kHz. The ratio is exactly 3, so this is a small fixed filter that keeps
//! its state across calls (no clicks between frames). WebSocket clients at other rates are
//! resampled by the general [`Resampler`](crate::pipeline::audio::Resampler).

/// Taps of the decimation low-pass.
const DOWN_TAPS: usize = 48;

/// 48 kHz → 16 kHz: a 48-tap windowed-sinc low-pass at 7.2 kHz (the speech band kept
/// flat, everything a 16 kHz stream cannot carry removed), then one sample in three. STT and
/// VAD listen to this output, so aliasing here costs recognised words.
#[derive(Debug)]
pub struct Downsample3 {
    taps: [f32; DOWN_TAPS],
    history: [f32; DOWN_TAPS],
    at: usize,
    phase: usize,
}

impl Default for Downsample3 {
    fn default() -> Self {
        let cutoff = 7_200.0 / 24_000.0;
        let mut taps = [0f32; DOWN_TAPS];
        let centre = (DOWN_TAPS as f64 - 1.0) / 2.0;
        for (k, tap) in taps.iter_mut().enumerate() {
            let d = k as f64 - centre;
            let x = std::f64::consts::PI * cutoff * d;
            let sinc = if x.abs() < 1e-9 { 1.0 } else { x.sin() / x };
            let window = 0.5 * (1.0 + (std::f64::consts::PI * d / (centre + 1.0)).cos());
            *tap = (sinc * window) as f32;
        }
        let sum: f32 = taps.iter().sum();
        taps.iter_mut().for_each(|t| *t /= sum);
        Self {
            taps,
            history: [0.0; DOWN_TAPS],
            at: 0,
            phase: 0,
        }
    }
}

impl Downsample3 {
    /// Appends one output sample per three input samples to `out` (the phase carries
    /// over, so input lengths need not be multiples of three).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        out.reserve(input.len() / 3 + 1);
        for &sample in input {
            self.history[self.at] = f32::from(sample);
            self.at = (self.at + 1) % DOWN_TAPS;
            if self.phase == 0 {
                // history[at] is now the oldest sample.
                let mut y = 0f32;
                for (k, tap) in self.taps.iter().enumerate() {
                    y += tap * self.history[(self.at + k) % DOWN_TAPS];
                }
                out.push(clamp(y.round() as i32));
            }
            self.phase = (self.phase + 1) % 3;
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
    fn decimation_attenuates_what_16_khz_cannot_carry() {
        // 16 kHz would alias onto 0 Hz at a 16 kHz output rate; the filter has a zero there.
        let input = tone(48_000.0, 16_000.0, 4_800);
        let mut out = Vec::new();
        Downsample3::default().process(&input, &mut out);
        assert!(rms(&out[10..]) < 0.05 * rms(&input), "{}", rms(&out[10..]));
    }
}
