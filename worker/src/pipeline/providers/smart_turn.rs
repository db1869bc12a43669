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
