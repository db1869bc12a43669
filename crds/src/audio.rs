//! Audio formats (the seed's AudioBuffers and AudioFormat).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An audio codec carried between a client and a worker.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Opus (RFC 6716) at 48 kHz: the WebRTC codec.
    Opus,
    /// Raw 16-bit little-endian PCM: WebSocket bridges and telephony.
    Pcm,
    /// G.711 μ-law at 8000 Hz: phone calls (the `twilio` transport). The worker decodes it
    /// to PCM for the pipeline.
    Pcmu,
}

impl Codec {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::Pcm => "pcm",
            Codec::Pcmu => "pcmu",
        }
    }
}

/// Audio format and buffering of a session's input and output streams.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.codec != 'opus' || self.sampleRate == 48000").message("codec opus runs at sampleRate 48000; use 48000 or codec pcm"),
    validation = Rule::new("self.codec != 'pcmu' || self.sampleRate == 8000").message("codec pcmu (G.711 μ-law) runs at sampleRate 8000; use 8000 or codec pcm"),
)]
pub struct AudioFormat {
    /// Codec on the wire: `opus` (WebRTC), `pcm` (16-bit PCM, WebSocket) or `pcmu` (G.711 μ-law at 8000 Hz, the twilio transport); a session's must be the one its transport carries and one its provider lists in supportedCodecs (checked at admission).
    #[serde(default = "default_codec")]
    pub codec: Codec,
    /// Sample rate in Hz. Opus always runs at 48000; PCM may use 8000, 16000, 24000 or 48000, and is then the WebSocket's default rate (stated as ?rate= in status.endpoint.url).
    #[serde(default = "default_sample_rate")]
    #[x_kube(validation = Rule::new("self in [8000, 16000, 24000, 48000]").message("sampleRate must be one of 8000, 16000, 24000 or 48000 (Hz)"))]
    pub sample_rate: i32,
    /// Number of channels: 1 (mono) or 2 (stereo). The built-in worker's pipeline is mono, so a session asking for 2 waits with AudioFormatNotSupported.
    #[serde(default = "default_channels")]
    #[schemars(range(min = 1, max = 2))]
    pub channels: i32,
    /// Largest message a WebSocket session accepts, in bytes (the seed's AudioBuffers.BufferSize): from one 20 ms frame at sampleRate up to 960000, checked at admission. WebRTC sessions have no buffer it sizes (their jitter buffer follows the provider config's jitterBufferMs).
    #[serde(default = "default_buffer_size")]
    #[schemars(range(min = 1, max = 16777216))]
    pub buffer_size: i32,
}

impl Default for AudioFormat {
    fn default() -> Self {
        Self {
            codec: default_codec(),
            sample_rate: default_sample_rate(),
            channels: default_channels(),
            buffer_size: default_buffer_size(),
        }
    }
}

fn default_codec() -> Codec {
    Codec::Opus
}
fn default_sample_rate() -> i32 {
    48000
}
fn default_channels() -> i32 {
    1
}
/// One second of 48 kHz mono PCM16: enough to absorb a scheduling hiccup without adding delay.
fn default_buffer_size() -> i32 {
    96000
}
