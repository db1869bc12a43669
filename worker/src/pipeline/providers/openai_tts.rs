//! TTS over an OpenAI-compatible speech API (`POST /audio/speech` with
//! `response_format: pcm`: raw 24 kHz PCM16, streamed as it is synthesized), resampled to
//! 48 kHz chunk by chunk so the first audio goes out before synthesis ends.

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{
    BodyLimit, HttpTarget, MAX_SPEECH_BYTES, MAX_STREAM_DURATION, ProviderError, TextToSpeech,
};
use crate::media::SAMPLE_RATE;
use crate::pipeline::audio::Resampler;

const NAME: &str = "openai-tts";

/// The rate of `response_format: pcm`.
const PCM_RATE: u32 = 24_000;

/// A speech endpoint.
#[derive(Clone, Debug)]
pub struct OpenAiTts {
    /// Where and which model.
    pub target: HttpTarget,
    /// The voice (`voice` option, default `alloy`).
    pub voice: String,
}

impl OpenAiTts {
    async fn run(&self, text: &str, audio: mpsc::Sender<Vec<i16>>) -> Result<(), ProviderError> {
        let body = serde_json::json!({
            "model": self.target.model,
            "input": text,
            "voice": self.voice,
            "response_format": "pcm",
        });
        let request = self
            .target
            .post("audio/speech")
            .header("content-type", "application/json")
            .body(body.to_string());
        let mut response = self.target.send(NAME, request).await?;
        let mut resampler = Resampler::new(PCM_RATE, SAMPLE_RATE);
        let mut carry: Option<u8> = None;
        // An endless audio stream fails at MAX_SPEECH_BYTES instead of speaking forever.
        let mut limit = BodyLimit::new(MAX_SPEECH_BYTES, MAX_STREAM_DURATION);
        while let Some(chunk) = self.target.chunk(NAME, &mut response, &mut limit).await? {
            let mut bytes: Vec<u8> = carry.take().into_iter().collect();
            bytes.extend_from_slice(&chunk);
            if bytes.len() % 2 == 1 {
                carry = bytes.pop();
            }
            let samples = crate::pipeline::audio::samples_from_le(&bytes);
            let mut out = Vec::with_capacity(samples.len() * 2 + 2);
            resampler.process(&samples, &mut out);
            if audio.send(out).await.is_err() {
                return Ok(()); // cancelled: dropping the response aborts the request
            }
        }
        let mut tail = Vec::new();
        resampler.flush(&mut tail);
        let _ = audio.send(tail).await;
        Ok(())
    }
}

impl TextToSpeech for OpenAiTts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn synthesize<'a>(
        &'a self,
        text: &'a str,
        audio: mpsc::Sender<Vec<i16>>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.run(text, audio))
    }
}
