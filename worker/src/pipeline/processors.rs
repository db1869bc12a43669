//! Custom audio processors (the seed's CustomProcessor / AudioProcessor) and the noise
//! suppression stage: in-place transforms of one 48 kHz frame, run before VAD.

use voice_crds::{CustomProcessor, StageProvider};

use crate::media::Frame;

/// An in-place transform of one frame.
pub trait AudioProcessor: Send {
    /// The implementation's name, for logs.
    fn name(&self) -> &str;
    /// Transforms `frame` in place.
    fn process(&mut self, frame: &mut Frame);
}

/// A processor the worker does not know, or bad options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcessorError {
    /// No implementation by that name.
    #[error("unknown {stage} implementation {name:?} (known: {known})")]
    Unknown {
        /// Which stage asked for it.
        stage: &'static str,
        /// The name asked for.
        name: String,
        /// What exists.
        known: &'static str,
    },
    /// An option did not parse.
    #[error("{processor}: option {key}={value:?} is not a number")]
    BadOption {
        /// The processor.
        processor: String,
        /// The option key.
        key: String,
        /// Its value.
        value: String,
    },
}

/// Multiplies by a fixed gain (option `gainDb`, default 0 dB), saturating.
#[derive(Debug)]
pub struct Gain {
    name: String,
    factor: f32,
}

impl Gain {
    /// A gain of `db` decibels.
    pub fn new(name: &str, db: f32) -> Self {
        Self {
            name: name.to_owned(),
            factor: 10f32.powf(db / 20.0),
        }
    }
}

impl AudioProcessor for Gain {
    fn name(&self) -> &str {
        &self.name
    }
    fn process(&mut self, frame: &mut Frame) {
        for s in frame.iter_mut() {
            *s = (f32::from(*s) * self.factor)
                .round()
                .clamp(-32_768.0, 32_767.0) as i16;
        }
    }
}

/// One-pole high-pass (option `cutoffHz`, default 100 Hz): removes hum and DC.
#[derive(Debug)]
pub struct HighPass {
    name: String,
    alpha: f32,
    prev_in: f32,
    prev_out: f32,
}

impl HighPass {
    /// A high-pass at `cutoff` Hz for 48 kHz audio.
    pub fn new(name: &str, cutoff: f32) -> Self {
        let rc = 1.0 / (2.0 * std::f32::consts::PI * cutoff.max(1.0));
        let dt = 1.0 / 48_000.0;
        Self {
            name: name.to_owned(),
            alpha: rc / (rc + dt),
            prev_in: 0.0,
            prev_out: 0.0,
        }
    }
}

impl AudioProcessor for HighPass {
    fn name(&self) -> &str {
        &self.name
    }
    fn process(&mut self, frame: &mut Frame) {
        for s in frame.iter_mut() {
            let x = f32::from(*s);
            let y = self.alpha * (self.prev_out + x - self.prev_in);
            self.prev_in = x;
            self.prev_out = y;
            *s = y.clamp(-32_768.0, 32_767.0) as i16;
        }
    }
}

/// Noise gate (noise suppression provider `gate`): frames whose RMS is below
/// `thresholdDb` dBFS (default -50) are attenuated by `reductionDb` (default 30 dB).
/// Not a spectral denoiser: it silences the noise floor between words, which is what keeps
/// a noisy line from looking like speech to VAD.
#[derive(Debug)]
pub struct NoiseGate {
    threshold: f32,
    reduction: f32,
}

impl AudioProcessor for NoiseGate {
    fn name(&self) -> &str {
        "gate"
    }
    fn process(&mut self, frame: &mut Frame) {
        let energy: f32 = frame.iter().map(|&s| f32::from(s).powi(2)).sum();
        let rms = (energy / frame.len() as f32).sqrt();
        if rms < self.threshold {
            for s in frame.iter_mut() {
                *s = (f32::from(*s) * self.reduction) as i16;
            }
        }
    }
}

fn option(
    processor: &str,
    options: &std::collections::BTreeMap<String, String>,
    key: &str,
    default: f32,
) -> Result<f32, ProcessorError> {
    match options.get(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ProcessorError::BadOption {
            processor: processor.to_owned(),
            key: key.to_owned(),
            value: v.clone(),
        }),
    }
}

/// Builds one custom processor.
pub fn build(spec: &CustomProcessor) -> Result<Box<dyn AudioProcessor>, ProcessorError> {
    match spec.processor.as_str() {
        "gain" => Ok(Box::new(Gain::new(
            &spec.name,
            option(&spec.name, &spec.options, "gainDb", 0.0)?,
        ))),
        "highpass" => Ok(Box::new(HighPass::new(
            &spec.name,
            option(&spec.name, &spec.options, "cutoffHz", 100.0)?,
        ))),
        other => Err(ProcessorError::Unknown {
            stage: "customProcessors",
            name: other.to_owned(),
            known: "gain, highpass",
        }),
    }
}

/// Builds the noise suppression stage.
pub fn build_noise(spec: &StageProvider) -> Result<Box<dyn AudioProcessor>, ProcessorError> {
    match spec.provider.as_str() {
        "gate" => {
            let db = option("gate", &spec.options, "thresholdDb", -50.0)?;
            let reduction = option("gate", &spec.options, "reductionDb", 30.0)?;
            Ok(Box::new(NoiseGate {
                threshold: 32_768.0 * 10f32.powf(db / 20.0),
                reduction: 10f32.powf(-reduction.abs() / 20.0),
            }))
        }
        "rnnoise" => {
            let mix = option("rnnoise", &spec.options, "mix", 1.0)?;
            Ok(Box::new(super::denoise::RnnNoise::new(mix)))
        }
        other => Err(ProcessorError::Unknown {
            stage: "noiseCancellation",
            name: other.to_owned(),
            known: "rnnoise, gate",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::FRAME_SAMPLES;

    fn spec(name: &str, processor: &str, options: &[(&str, &str)]) -> CustomProcessor {
        CustomProcessor {
            name: name.into(),
            processor: processor.into(),
            order: 0,
            enabled: true,
            options: options
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn gain_scales_and_saturates() {
        let mut g = build(&spec("boost", "gain", &[("gainDb", "6.0206")]))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut frame = [1_000i16; FRAME_SAMPLES];
        frame[0] = 30_000;
        g.process(&mut frame);
        assert_eq!(frame[1], 2_000);
        assert_eq!(frame[0], i16::MAX);
    }

    #[test]
    fn highpass_removes_dc() {
        let mut h = build(&spec("hp", "highpass", &[])).unwrap_or_else(|e| panic!("{e}"));
        let mut frame = [5_000i16; FRAME_SAMPLES];
        for _ in 0..20 {
            frame = [5_000i16; FRAME_SAMPLES];
            h.process(&mut frame);
        }
        assert!(
            frame[FRAME_SAMPLES - 1].abs() < 50,
            "{}",
            frame[FRAME_SAMPLES - 1]
        );
    }

    #[test]
    fn unknown_processors_and_bad_options_are_named() {
        let err = build(&spec("x", "reverb", &[])).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("reverb"), "{err}");
        let err = build(&spec("g", "gain", &[("gainDb", "loud")]))
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("gainDb"), "{err}");
    }
}
