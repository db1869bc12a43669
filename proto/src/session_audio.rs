//! The part of a session's `spec.audio` a worker uses on a WebSocket: the PCM16 rate a client
//! gets when it names none, and the largest message it may send (`bufferSize`). The operator
//! has already checked the format against the transport and the provider; the worker checks
//! the numbers again, as it does every number it is sent.

use serde::{Deserialize, Serialize};

/// PCM16 rates a WebSocket client may use, in Hz (`?rate=`, or the session's default).
pub const PCM_RATES: [u32; 4] = [8_000, 16_000, 24_000, 48_000];

/// The largest `bufferSize` a worker honours: ten seconds of 48 kHz PCM16. The schema allows
/// 16 MiB, but every connection may hold one message of this size in memory, so a session
/// asking for more is refused at admission instead of costing its worker that much per call.
pub const MAX_BUFFER_BYTES: u32 = 960_000;

/// What a WebSocket did before sessions could say: 48 kHz and a one-second message limit.
/// The operator sends [`SessionAudio`] only when a session differs, so a worker that predates
/// the field still takes the sessions it can serve.
pub const DEFAULT: SessionAudio = SessionAudio {
    sample_rate: 48_000,
    buffer_bytes: 96_000,
};

/// A session's WebSocket audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAudio {
    /// PCM16 rate of the WebSocket when the client sends no `rate` (`spec.audio.sampleRate`).
    pub sample_rate: u32,
    /// Largest inbound WebSocket message, in bytes (`spec.audio.bufferSize`).
    pub buffer_bytes: u32,
}

impl Default for SessionAudio {
    fn default() -> Self {
        DEFAULT
    }
}

/// Bytes of one 20 ms PCM16 mono frame at `rate`: the smallest useful message, so the
/// smallest `bufferSize` a WebSocket session may ask for.
pub fn frame_bytes(rate: u32) -> u32 {
    rate / 50 * 2
}

impl SessionAudio {
    /// Why these numbers cannot be served, naming the field; `None` when they can.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !PCM_RATES.contains(&self.sample_rate) {
            return Some((
                "audio.sampleRate",
                format!(
                    "{} Hz is not one of {PCM_RATES:?} (PCM16 rates of a WebSocket)",
                    self.sample_rate
                ),
            ));
        }
        let min = frame_bytes(self.sample_rate);
        if !(min..=MAX_BUFFER_BYTES).contains(&self.buffer_bytes) {
            return Some((
                "audio.bufferBytes",
                format!(
                    "{} bytes is outside {min}..={MAX_BUFFER_BYTES} (one 20 ms frame at {} Hz up to ten seconds at 48 kHz)",
                    self.buffer_bytes, self.sample_rate
                ),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_buffer_bounds_are_checked() {
        assert_eq!(DEFAULT.problem(), None);
        for rate in PCM_RATES {
            let smallest = SessionAudio {
                sample_rate: rate,
                buffer_bytes: frame_bytes(rate),
            };
            assert_eq!(smallest.problem(), None, "{rate}");
            let smaller = SessionAudio {
                buffer_bytes: frame_bytes(rate) - 1,
                ..smallest
            };
            assert_eq!(smaller.problem().map(|p| p.0), Some("audio.bufferBytes"));
        }
        assert_eq!(frame_bytes(8_000), 320);
        assert_eq!(frame_bytes(48_000), 1_920);
        let odd = SessionAudio {
            sample_rate: 44_100,
            ..DEFAULT
        };
        assert_eq!(odd.problem().map(|p| p.0), Some("audio.sampleRate"));
        let huge = SessionAudio {
            buffer_bytes: MAX_BUFFER_BYTES + 1,
            ..DEFAULT
        };
        assert_eq!(huge.problem().map(|p| p.0), Some("audio.bufferBytes"));
    }
}
