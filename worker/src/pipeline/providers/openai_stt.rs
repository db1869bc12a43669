//! STT over an OpenAI-compatible transcription API (`POST /audio/transcriptions`,
//! multipart with a WAV file), which also serves whisper.cpp and faster-whisper servers.

use futures::future::BoxFuture;

use super::{ErrorKind, HttpTarget, MAX_JSON_BODY_BYTES, ProviderError, SpeechToText};
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
        let body = self
            .target
            .body(NAME, response, MAX_JSON_BODY_BYTES)
            .await?;
        // Only `text` is read: the other fields (durations, log-probabilities) are skipped
        // without being converted, so an out-of-range number there cannot matter.
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                NAME,
                ErrorKind::Malformed,
                format!("the answer is not JSON with a \"text\" string: {e}"),
            )
        })?;
        Ok(answer.text.trim().to_owned())
    }
}

/// The part of a transcription answer the worker uses.
#[derive(serde::Deserialize)]
struct Answer {
    text: String,
}

impl SpeechToText for OpenAiStt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn transcribe<'a>(&'a self, audio: &'a [i16]) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(self.run(audio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_numbers_beside_the_text_are_skipped_and_nan_is_not_json() {
        let answer: Result<Answer, _> =
            serde_json::from_str(r#"{"text":" hi ","duration":1e999,"p":[-1e400]}"#);
        assert_eq!(answer.map(|a| a.text).ok().as_deref(), Some(" hi "));
        assert!(serde_json::from_str::<Answer>(r#"{"text":"hi","duration":NaN}"#).is_err());
        assert!(serde_json::from_str::<Answer>(r#"{"duration":1}"#).is_err());
    }
}
