//! Offline STT with CMU pocketsphinx, run as a subprocess (`pocketsphinx_continuous`).
//!
//! A subprocess rather than libpocketsphinx: no maintained safe Rust binding exists for the
//! Debian library, the workspace forbids `unsafe`, and a decoder per process keeps one
//! session's recognition from blocking another's thread. The utterance is written to a
//! WAV in the temp dir (the pod's `/tmp` emptyDir) and removed afterwards.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::Command;

use super::{ErrorKind, ProviderError, SpeechToText};
use crate::pipeline::audio::{Pcm, encode_wav};

const NAME: &str = "pocketsphinx";

/// pocketsphinx_continuous with its model files.
#[derive(Clone, Debug)]
pub struct Pocketsphinx {
    /// Binary to run.
    pub program: String,
    /// Extra model arguments (`-hmm`, `-lm`, `-dict`) from options; empty uses the
    /// package's en-US model.
    pub model_args: Vec<String>,
    /// Longest one utterance may take.
    pub timeout: Duration,
}

impl Pocketsphinx {
    /// From stage options `hmm`, `lm`, `dict` (paths) when given.
    pub fn from_options(options: &std::collections::BTreeMap<String, String>) -> Self {
        let mut model_args = Vec::new();
        for key in ["hmm", "lm", "dict"] {
            if let Some(v) = options.get(key) {
                model_args.push(format!("-{key}"));
                model_args.push(v.clone());
            }
        }
        Self {
            program: options
                .get("program")
                .cloned()
                .unwrap_or_else(|| "pocketsphinx_continuous".into()),
            model_args,
            timeout: Duration::from_secs(30),
        }
    }

    async fn run(&self, audio: &[i16]) -> Result<String, ProviderError> {
        let path: PathBuf = std::env::temp_dir().join(format!(
            "voice-stt-{}.wav",
            crate::connections::random_id(12)
        ));
        let wav = encode_wav(&Pcm {
            rate: 16_000,
            samples: audio.to_vec(),
        });
        tokio::fs::write(&path, wav).await.map_err(|e| {
            ProviderError::new(
                NAME,
                ErrorKind::Config,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        let output = Command::new(&self.program)
            .arg("-infile")
            .arg(&path)
            .arg("-logfn")
            .arg("/dev/null")
            .args(&self.model_args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        let _ = tokio::fs::remove_file(&path).await;
        let output = output.map_err(|e| {
            ProviderError::new(
                NAME,
                ErrorKind::Config,
                format!("cannot run {}: {e}", self.program),
            )
        })?;
        if !output.status.success() {
            let err = String::from_utf8_lossy(&output.stderr);
            return Err(ProviderError::new(
                NAME,
                ErrorKind::Unavailable,
                format!(
                    "{} exited with {}: {}",
                    self.program,
                    output.status,
                    err.trim()
                ),
            ));
        }
        // One line per utterance pocketsphinx segmented the audio into.
        let text = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(text)
    }
}

impl SpeechToText for Pocketsphinx {
    fn name(&self) -> &'static str {
        NAME
    }

    fn transcribe<'a>(&'a self, audio: &'a [i16]) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.run(audio))
                .await
                .map_err(|_| {
                    ProviderError::new(NAME, ErrorKind::Timeout, "pocketsphinx took too long")
                })?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::audio::parse_wav;

    #[tokio::test]
    async fn recognises_the_weather_fixture() {
        let pcm = parse_wav(include_bytes!("../../../tests/fixtures/weather-16k.wav"))
            .unwrap_or_else(|e| panic!("{e}"));
        let stt = Pocketsphinx::from_options(&Default::default());
        let text = stt
            .transcribe(&pcm.samples)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        println!("pocketsphinx heard: {text:?}");
        // pocketsphinx is imperfect on synthetic speech (it hears "please do not aware
        // that" or "we are not aware that"): assert on the words it keeps getting right.
        let robust = ["please", "aware", "about", "weather", "tell"];
        assert!(
            robust
                .iter()
                .any(|w| text.split_whitespace().any(|t| t == *w)),
            "{text:?}"
        );
        let silence = vec![0i16; 16_000];
        let text = stt
            .transcribe(&silence)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(text.trim().is_empty(), "silence heard as {text:?}");
    }
}
