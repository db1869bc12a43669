//! Semantic end of turn with smart-turn v3.2 (`smart-turn-v3.2-cpu.onnx`, shipped in the
//! PyPI wheel `pipecat-ai` 1.14), run in the worker's speech process: given the user's
//! audio up to a pause, the probability that the turn is complete.

use std::path::PathBuf;
use std::time::Duration;

use super::speech_process::{self, read_reply, write_frame};
use super::whisper::{INSTALL_FIX, MissingModel};
use super::{ErrorKind, ProviderError};

const NAME: &str = "smart-turn";

/// The model under the models dir.
pub const DEFAULT_MODEL: &str = "smart-turn-v3.2-cpu.onnx";

/// The model hears the last 8 s.
const WINDOW: usize = 8 * 16_000;

/// smart-turn through the speech process.
#[derive(Clone, Debug)]
pub struct SmartTurn {
    /// The speech venv's python.
    pub python: PathBuf,
    /// The ONNX model.
    pub model: PathBuf,
    /// Longest one question may take before the silence rule decides alone.
    pub timeout: Duration,
}

impl SmartTurn {
    /// The model at `$VOICE_MODELS_DIR/smart-turn-v3.2-cpu.onnx`, checked to exist.
    pub fn from_default() -> Result<Self, MissingModel> {
        let model = speech_process::models_dir().join(DEFAULT_MODEL);
        if !model.is_file() {
            return Err(MissingModel {
                what: "the smart-turn model",
                path: model.display().to_string(),
                fix: INSTALL_FIX,
            });
        }
        let python = speech_process::default_python();
        if !python.is_file() {
            return Err(MissingModel {
                what: "the speech venv's python (VOICE_SPEECH_PYTHON)",
                path: python.display().to_string(),
                fix: INSTALL_FIX,
            });
        }
        Ok(Self {
            python,
            model,
            timeout: Duration::from_secs(5),
        })
    }

    /// Loads the model into the speech process in the background.
    pub fn preload(&self) {
        speech_process::preload_in_background(
            NAME,
            self.python.clone(),
            "smart-turn",
            self.model.clone(),
        );
    }

    /// The probability (0–1) that the user finished their turn with `audio` (16 kHz).
    pub async fn complete(&self, audio: Vec<i16>) -> Result<f32, ProviderError> {
        tokio::time::timeout(self.timeout, self.ask(audio))
            .await
            .map_err(|_| ProviderError::new(NAME, ErrorKind::Timeout, "smart-turn took too long"))?
    }

    async fn ask(&self, audio: Vec<i16>) -> Result<f32, ProviderError> {
        let mut stream = speech_process::connect(NAME, &self.python).await?;
        let request = serde_json::json!({"op": "turn", "model": self.model});
        write_frame(NAME, &mut stream, request.to_string().as_bytes()).await?;
        let tail = &audio[audio.len().saturating_sub(WINDOW)..];
        let bytes: Vec<u8> = tail.iter().flat_map(|s| s.to_le_bytes()).collect();
        write_frame(NAME, &mut stream, &bytes).await?;
        write_frame(NAME, &mut stream, &[]).await?;
        let reply = read_reply(NAME, &mut stream).await?;
        reply
            .get("complete")
            .and_then(serde_json::Value::as_f64)
            .filter(|p| (0.0..=1.0).contains(p))
            .map(|p| p as f32)
            .ok_or_else(|| {
                ProviderError::new(NAME, ErrorKind::Malformed, format!("bad reply {reply}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::media::SAMPLE_RATE;
    use crate::pipeline::audio::Resampler;
    use crate::pipeline::providers::TextToSpeech;
    use crate::pipeline::providers::piper::Piper;

    /// `text` in Piper's voice at 16 kHz, rendered without noise: Piper otherwise samples
    /// its durations and timbre, and how unfinished one rendering of an unfinished
    /// sentence sounds to the model varied from 0.4 to 0.96 between renderings.
    async fn spoken(text: &str) -> Vec<i16> {
        let options = BTreeMap::from([
            ("noiseScale".to_owned(), "0".to_owned()),
            ("noiseWScale".to_owned(), "0".to_owned()),
        ]);
        let tts = Piper::from_stage(None, &options).unwrap_or_else(|e| panic!("{e}"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1_024);
        let text = text.to_owned();
        let job = tokio::spawn(async move { tts.synthesize(&text, tx).await.is_ok() });
        let mut wide = Vec::new();
        while let Some(chunk) = rx.recv().await {
            wide.extend(chunk);
        }
        assert!(job.await.unwrap_or(false), "piper failed");
        let mut narrow = Vec::new();
        Resampler::new(SAMPLE_RATE, 16_000).process(&wide, &mut narrow);
        narrow
    }

    #[tokio::test]
    async fn a_noiseless_rendering_is_the_same_every_time() {
        let first = spoken("I want to book a table for").await;
        assert!(first.len() > 16_000, "{} samples", first.len());
        assert_eq!(first, spoken("I want to book a table for").await);
    }

    /// The worker asks some time after its VAD's last speech frame, which varies; the
    /// answer must not, or an unfinished sentence ends early whenever the VAD trails.
    #[tokio::test]
    async fn the_answer_does_not_depend_on_how_long_the_pause_was_when_asked() {
        let model = SmartTurn::from_default().unwrap_or_else(|e| panic!("{e}"));
        let mut scores = Vec::new();
        // Noiseless renderings of other unfinished sentences score higher ("I want to book
        // a table for" 0.74, "I would like to order a" 0.82): the model is far from sure
        // of every one, and this test is about the pause, not about the model's judgment.
        for text in [
            "Please set an alarm for six thirty.",
            "What is the weather in",
            "Tell me the way to the",
        ] {
            let speech = spoken(text).await;
            let mut asked = Vec::new();
            for silence_ms in [200, 400, 1_000] {
                let mut audio = speech.clone();
                audio.extend(std::iter::repeat_n(0, silence_ms * 16));
                asked.push(
                    model
                        .complete(audio)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
            let (low, high) = asked
                .iter()
                .fold((1f32, 0f32), |(l, h), &p| (l.min(p), h.max(p)));
            assert!(high - low < 0.02, "{text:?} scored {asked:?}");
            scores.push((text, low, high));
        }
        println!("{scores:?}");
        let finished_low = scores[0].1;
        assert!(finished_low > 0.9, "the finished sentence: {scores:?}");
        for (text, _, high) in &scores[1..] {
            assert!(
                *high < finished_low - 0.2,
                "{text:?} scored as high as the finished sentence: {scores:?}"
            );
        }
    }
}
