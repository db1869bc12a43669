//! Offline TTS with espeak-ng, run as a subprocess (`espeak-ng --stdout`).
//!
//! A subprocess rather than libespeak-ng: there is no maintained safe Rust binding, the
//! workspace forbids `unsafe`, and the C library keeps global state (one voice, one
//! callback) that would serialise every session of the worker through one lock. A process
//! per sentence costs a few milliseconds and isolates sessions. The WAV on stdout is
//! streamed: audio goes downstream as espeak-ng produces it.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;

use super::{ErrorKind, ProviderError, TextToSpeech};
use crate::media::SAMPLE_RATE;
use crate::pipeline::audio::Resampler;

const NAME: &str = "espeak";

/// espeak-ng with a voice and a speed.
#[derive(Clone, Debug)]
pub struct Espeak {
    /// Binary to run (`espeak-ng`).
    pub program: String,
    /// `-v` voice, e.g. `en-us`.
    pub voice: String,
    /// `-s` words per minute.
    pub speed: u32,
    /// Longest a sentence may take to synthesize.
    pub timeout: Duration,
}

impl Espeak {
    /// From stage options `voice` (default `en-us`) and `speed` (default 175).
    pub fn from_options(options: &std::collections::BTreeMap<String, String>) -> Self {
        Self {
            program: options
                .get("program")
                .cloned()
                .unwrap_or_else(|| "espeak-ng".into()),
            voice: options
                .get("voice")
                .cloned()
                .unwrap_or_else(|| "en-us".into()),
            speed: options
                .get("speed")
                .and_then(|s| s.parse().ok())
                .unwrap_or(175),
            timeout: Duration::from_secs(20),
        }
    }

    async fn run(&self, text: &str, audio: mpsc::Sender<Vec<i16>>) -> Result<(), ProviderError> {
        let mut child = Command::new(&self.program)
            .arg("--stdout")
            .arg("-v")
            .arg(&self.voice)
            .arg("-s")
            .arg(self.speed.to_string())
            // Text after `--` so a reply starting with `-` is never read as a flag.
            .arg("--")
            .arg(text)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ProviderError::new(
                    NAME,
                    ErrorKind::Config,
                    format!("cannot run {}: {e}", self.program),
                )
            })?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| ProviderError::new(NAME, ErrorKind::Unavailable, "no stdout"))?;
        let mut header = [0u8; 44];
        stdout.read_exact(&mut header).await.map_err(|e| {
            ProviderError::new(
                NAME,
                ErrorKind::Malformed,
                format!("no WAV header on stdout: {e}"),
            )
        })?;
        if &header[..4] != b"RIFF" || &header[36..40] != b"data" {
            return Err(ProviderError::new(
                NAME,
                ErrorKind::Malformed,
                "stdout is not a canonical WAV",
            ));
        }
        let rate = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
        let mut resampler = Resampler::new(rate, SAMPLE_RATE);
        let mut buf = vec![0u8; 8_192];
        let mut carry: Option<u8> = None;
        loop {
            let n = stdout
                .read(&mut buf)
                .await
                .map_err(|e| ProviderError::new(NAME, ErrorKind::Unavailable, e.to_string()))?;
            if n == 0 {
                break;
            }
            let mut bytes: Vec<u8> = carry.take().into_iter().collect();
            bytes.extend_from_slice(&buf[..n]);
            if bytes.len() % 2 == 1 {
                carry = bytes.pop();
            }
            let samples = crate::pipeline::audio::samples_from_le(&bytes);
            let mut out = Vec::with_capacity(samples.len() * 3);
            resampler.process(&samples, &mut out);
            if audio.send(out).await.is_err() {
                return Ok(()); // the turn was cancelled; kill_on_drop ends espeak-ng
            }
        }
        let mut tail = Vec::new();
        resampler.flush(&mut tail);
        if audio.send(tail).await.is_err() {
            return Ok(());
        }
        let status = child
            .wait()
            .await
            .map_err(|e| ProviderError::new(NAME, ErrorKind::Unavailable, e.to_string()))?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err).await;
            }
            return Err(ProviderError::new(
                NAME,
                ErrorKind::Unavailable,
                format!("espeak-ng exited with {status}: {}", err.trim()),
            ));
        }
        Ok(())
    }
}

impl TextToSpeech for Espeak {
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
                .map_err(|_| {
                    ProviderError::new(NAME, ErrorKind::Timeout, "espeak-ng took too long")
                })?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn speaks_at_48_khz_and_a_missing_binary_is_a_config_error() {
        let tts = Espeak::from_options(&Default::default());
        let (tx, mut rx) = mpsc::channel(1_024);
        let job = tokio::spawn(async move {
            tts.synthesize("hello there", tx)
                .await
                .map_err(|e| e.to_string())
        });
        let mut samples = Vec::new();
        while let Some(chunk) = rx.recv().await {
            samples.extend(chunk);
        }
        assert_eq!(job.await.ok(), Some(Ok(())));
        // "hello there" takes most of a second at 48 kHz and is not silent.
        assert!(samples.len() > 20_000, "{}", samples.len());
        assert!(samples.iter().any(|&s| s.abs() > 3_000));

        let mut broken = Espeak::from_options(&Default::default());
        broken.program = "/nonexistent/espeak-ng".into();
        let (tx, _rx) = mpsc::channel(4);
        let err = broken.synthesize("hi", tx).await.unwrap_err();
        assert_eq!(err.reason(), "ProviderMisconfigured");
    }
}
