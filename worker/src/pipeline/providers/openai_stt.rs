//! STT over an OpenAI-compatible transcription API (`POST /audio/transcriptions`,
//! multipart with a WAV file), which also serves whisper.cpp and faster-whisper servers.

use futures::future::BoxFuture;

use super::{ErrorKind, HttpTarget, ProviderError, SpeechToText};
use crate::pipeline::audio::{Pcm, encode_wav};

const NAME: &str = "openai-stt";

/// A transcription endpoint.
#[derive(Clone, Debug)]
pub struct OpenAiStt {
    /// Where and which model.
    pub target: HttpTarget,
    /// BCP 47 language hint (`language` option), if any.
    pub language: Option<String>,
}

impl OpenAiStt {
    async fn run(&self, audio: &[i16]) -> Result<String, ProviderError> {
        let wav = encode_wav(&Pcm {
            rate: 16_000,
            samples: audio.to_vec(),
        });
        let file = reqwest::multipart::Part::bytes(wav)
            .file_name("audio.wav")
            .mime_str("audio/wav")
            .map_err(|e| ProviderError::new(NAME, ErrorKind::Config, e.to_string()))?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", self.target.model.clone())
            .text("response_format", "json");
        if let Some(language) = &self.language {
            form = form.text("language", language.clone());
        }
        let response = self
            .target
            .send(
                NAME,
                self.target.post("audio/transcriptions").multipart(form),
            )
            .await?;
        let body = tokio::time::timeout(self.target.timeout, response.bytes())
            .await
            .map_err(|_| {
                ProviderError::new(NAME, ErrorKind::Timeout, "the transcription body stalled")
            })?
            .map_err(|e| super::http_error(NAME, &e))?;
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                NAME,
                ErrorKind::Malformed,
                format!("the answer is not JSON: {e}"),
            )
        })?;
        value
            .get("text")
            .and_then(|t| t.as_str())
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| {
                ProviderError::new(NAME, ErrorKind::Malformed, "the answer has no \"text\"")
            })
    }
}

impl SpeechToText for OpenAiStt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn transcribe<'a>(&'a self, audio: &'a [i16]) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(self.run(audio))
    }
}
