//! Command-line configuration of the operator process.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Flags (and environment variables) of `voice-operator`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "voice-operator",
    version,
    about = "Kubernetes operator for real-time voice AI backends"
)]
pub struct Config {
    /// Address of the HTTP server with /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,
    /// Watch VoiceBackends and pods in this namespace only (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Manage only VoiceProviders matching this label selector (all when unset).
    #[arg(long, env = "PROVIDER_SELECTOR")]
    pub provider_selector: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "voice-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: `POD_NAMESPACE`, else `default`).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the Lease holds without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How often the leader renews the Lease, in seconds.
    #[arg(long, default_value_t = 5)]
    pub lease_renew_seconds: u64,
    /// `/healthz` fails when a controller of the leader has not made progress for this many
    /// seconds (its heartbeat is stale), so Kubernetes restarts it and the standby leads.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_SECONDS", default_value_t = 60)]
    pub heartbeat_timeout_seconds: u64,
    /// Log JSON lines instead of text.
    #[arg(long, env = "LOG_JSON")]
    pub log_json: bool,
}

impl Config {
    /// The Lease namespace: the flag, else `POD_NAMESPACE`, else `default`.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "default".to_owned())
    }

    /// Lease duration.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds.max(2))
    }

    /// Age after which a controller's heartbeat is stale.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_seconds.max(1))
    }

    /// Lease renew period (kept below the duration).
    pub fn lease_renew(&self) -> Duration {
        Duration::from_secs(self.lease_renew_seconds.max(1)).min(self.lease_duration() / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::try_parse_from(["voice-operator"]).expect("parses");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:8081");
        assert_eq!(c.lease_name, "voice-operator");
        assert_eq!(c.lease_duration(), Duration::from_secs(15));
        assert_eq!(c.lease_renew(), Duration::from_secs(5));
        assert_eq!(c.heartbeat_timeout(), Duration::from_secs(60));
    }
}
