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
    /// Namespace of the control channel's CA Secret (default: the Lease namespace, i.e. the
    /// operator's own).
    #[arg(long, env = "CONTROL_CA_NAMESPACE")]
    pub control_ca_namespace: Option<String>,
    /// Labels of the operator's pods (`k=v,k=v`), which each backend's NetworkPolicy admits
    /// to the workers' control port; the chart sets its selector labels.
    #[arg(
        long,
        env = "OPERATOR_POD_LABELS",
        default_value = "app.kubernetes.io/name=voice-operator",
        value_parser = parse_labels
    )]
    pub operator_pod_labels: std::collections::BTreeMap<String, String>,
    /// `/healthz` fails when a controller of the leader has not made progress for this many
    /// seconds (its heartbeat is stale), so Kubernetes restarts it and the standby leads.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_SECONDS", default_value_t = 60)]
    pub heartbeat_timeout_seconds: u64,
    /// Seconds a rotated join-token signing key is staged (workers verify with it, nothing is
    /// signed with it) before it signs: at least the time the kubelet takes to update a mounted
    /// Secret (its sync period plus its cache TTL, a minute each by default).
    #[arg(
        long,
        env = "SIGNING_KEY_PROPAGATION_SECONDS",
        default_value_t = crate::signing_keys::DEFAULT_PROPAGATION.as_secs()
    )]
    pub signing_key_propagation_seconds: u64,
    /// Seconds a SIGTERM waits for the controllers to stop before the process exits anyway
    /// (code 1, the Lease kept until it expires). Keep it below the pod's
    /// `terminationGracePeriodSeconds` (30 in the chart), so the operator says which
    /// controller hung instead of being killed without a word.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 20)]
    pub shutdown_timeout_seconds: u64,
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

    /// Where the control channel's CA Secret lives: the operator's namespace.
    pub fn control_ca_namespace(&self) -> String {
        self.control_ca_namespace
            .clone()
            .unwrap_or_else(|| self.lease_namespace())
    }

    /// Lease duration.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds.max(2))
    }

    /// Age after which a controller's heartbeat is stale.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_seconds.max(1))
    }

    /// How long a clean shutdown may take before the process exits anyway.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds.max(1))
    }

    /// Lease renew period (kept below the duration).
    pub fn lease_renew(&self) -> Duration {
        Duration::from_secs(self.lease_renew_seconds.max(1)).min(self.lease_duration() / 2)
    }
}

/// Parses `k=v,k=v` into labels, naming the variable on a malformed entry.
fn parse_labels(raw: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_owned(), v.to_owned());
            }
            _ => return Err(format!("OPERATOR_POD_LABELS: {pair:?} is not key=value")),
        }
    }
    if labels.is_empty() {
        return Err("OPERATOR_POD_LABELS: at least one key=value is needed".to_owned());
    }
    Ok(labels)
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
        assert_eq!(c.shutdown_timeout(), Duration::from_secs(20));
        assert_eq!(
            c.operator_pod_labels
                .get("app.kubernetes.io/name")
                .map(String::as_str),
            Some("voice-operator")
        );
    }

    #[test]
    fn operator_pod_labels_parse_and_bad_ones_name_the_variable() {
        let c = Config::try_parse_from([
            "voice-operator",
            "--operator-pod-labels",
            "a=1, b=2",
            "--lease-namespace",
            "ops",
        ])
        .expect("parses");
        assert_eq!(c.operator_pod_labels.len(), 2);
        assert_eq!(c.control_ca_namespace(), "ops");
        let err = Config::try_parse_from(["voice-operator", "--operator-pod-labels", "nope"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("OPERATOR_POD_LABELS"), "{err}");
    }
}
