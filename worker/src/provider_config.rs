//! The backend's `spec.providerConfig` as the built-in worker reads it (`VOICE_PROVIDER_CONFIG`).
//!
//! The operator checked it against the provider's `configSchema` before any pod existed; the
//! built-in provider's schema lists `logLevel` and `jitterBufferMs`, and this is where each
//! takes effect. A key this worker does not know is named in the start-up log rather than
//! dropped in silence (a provider with its own image and schema reads its own keys).

use std::time::Duration;

/// RTP packets of 20 ms: the jitter buffer's depth is counted in them.
const PACKET: Duration = Duration::from_millis(20);
/// The jitter buffer's depth without `jitterBufferMs`: two packets.
const DEFAULT_JITTER: Duration = Duration::from_millis(40);

/// What `providerConfig` sets for the built-in worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderConfig {
    /// `logLevel`: the log filter when `RUST_LOG` is unset.
    pub log_level: Option<String>,
    /// `jitterBufferMs`: how much audio the receive side holds before playout.
    pub jitter_buffer: Duration,
    /// Keys this worker does not use, for the start-up log.
    pub unused: Vec<String>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            log_level: None,
            jitter_buffer: DEFAULT_JITTER,
            unused: Vec::new(),
        }
    }
}

impl ProviderConfig {
    /// Reads `VOICE_PROVIDER_CONFIG` (a JSON object); errors name the variable and the key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| format!("VOICE_PROVIDER_CONFIG is not valid JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or("VOICE_PROVIDER_CONFIG must be a JSON object (the backend's providerConfig)")?;
        let mut config = Self::default();
        for (key, value) in object {
            match key.as_str() {
                "logLevel" => {
                    let level = value
                        .as_str()
                        .filter(|l| matches!(*l, "error" | "warn" | "info" | "debug" | "trace"));
                    let level = level.ok_or_else(|| {
                        format!(
                            "VOICE_PROVIDER_CONFIG logLevel {value}: use error, warn, info, debug or trace"
                        )
                    })?;
                    config.log_level = Some(level.to_owned());
                }
                "jitterBufferMs" => {
                    let ms = value.as_u64().filter(|ms| (20..=500).contains(ms));
                    let ms = ms.ok_or_else(|| {
                        format!(
                            "VOICE_PROVIDER_CONFIG jitterBufferMs {value}: use a whole number of milliseconds from 20 to 500"
                        )
                    })?;
                    config.jitter_buffer = Duration::from_millis(ms);
                }
                other => config.unused.push(other.to_owned()),
            }
        }
        Ok(config)
    }

    /// The jitter buffer's depth in 20 ms packets, rounded up (at least one).
    pub fn jitter_packets(&self) -> usize {
        let packets = self.jitter_buffer.as_millis().div_ceil(PACKET.as_millis());
        usize::try_from(packets).unwrap_or(usize::MAX).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_keys_take_effect_and_others_are_listed() {
        let config = ProviderConfig::parse(
            r#"{"logLevel": "debug", "jitterBufferMs": 130, "region": "eu"}"#,
        )
        .unwrap();
        assert_eq!(config.log_level.as_deref(), Some("debug"));
        assert_eq!(config.jitter_buffer, Duration::from_millis(130));
        assert_eq!(
            config.jitter_packets(),
            7,
            "130 ms is 6.5 packets, rounded up"
        );
        assert_eq!(config.unused, ["region"]);
    }

    #[test]
    fn without_keys_the_defaults_hold() {
        let config = ProviderConfig::parse("{}").unwrap();
        assert_eq!(config, ProviderConfig::default());
        assert_eq!(config.jitter_packets(), 2);
    }

    #[test]
    fn bad_values_name_the_variable_key_and_fix() {
        for (raw, words) in [
            ("[1]", "must be a JSON object"),
            ("{", "not valid JSON"),
            (
                r#"{"logLevel": "loud"}"#,
                "use error, warn, info, debug or trace",
            ),
            (r#"{"jitterBufferMs": 5}"#, "from 20 to 500"),
            (r#"{"jitterBufferMs": "100"}"#, "jitterBufferMs"),
        ] {
            let err = ProviderConfig::parse(raw).unwrap_err();
            assert!(err.contains("VOICE_PROVIDER_CONFIG"), "{raw}: {err}");
            assert!(err.contains(words), "{raw}: {err}");
        }
    }
}
