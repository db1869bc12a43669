//! Worker configuration from flags or the pod's environment.
//!
//! The operator sets the environment variables on each worker pod; flags exist for
//! running a worker by hand. Every value names its variable, so a bad pod spec fails
//! with an error that points at the variable to fix.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;

/// Everything the worker reads at start.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "voice-worker",
    version,
    about = "voice-operator data-plane worker"
)]
pub struct Config {
    /// Address both servers bind to: the pod IP in a cluster, loopback by default.
    #[arg(long, env = "POD_IP", value_name = "POD_IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub pod_ip: IpAddr,

    /// Port of the WorkerControl gRPC server (and grpc.health.v1).
    #[arg(
        long,
        env = "GRPC_PORT",
        value_name = "GRPC_PORT",
        default_value_t = 50051
    )]
    pub grpc_port: u16,

    /// Port of the HTTP server: /healthz, /readyz, /metrics.
    #[arg(
        long,
        env = "HTTP_PORT",
        value_name = "HTTP_PORT",
        default_value_t = 8080
    )]
    pub http_port: u16,

    /// UDP port shared by every WebRTC peer connection of this worker (the UDP mux).
    #[arg(
        long,
        env = "UDP_PORT",
        value_name = "UDP_PORT",
        default_value_t = 50000
    )]
    pub udp_port: u16,

    /// TCP port of the ICE-TCP listener shared by every peer connection (passive candidates,
    /// RFC 6544), for clients that cannot send UDP; unset: no listener and no TCP candidate.
    /// The operator sets it to the UDP port's number.
    #[arg(long, env = "TCP_MEDIA_PORT", value_name = "TCP_MEDIA_PORT")]
    pub tcp_media_port: Option<u16>,

    /// Address handed to clients in ICE candidates: the pod IP by default, the node IP
    /// with hostNetwork, or a public IP in front of a 1:1 NAT.
    #[arg(long, env = "ADVERTISE_IP", value_name = "ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,

    /// STUN/TURN servers handed to WebRTC clients (`Link: rel="ice-server"` headers and the
    /// demo page), so a client behind a NAT can reach the advertised address: the backend's
    /// `iceServers` as JSON (the operator sets this, Secret keys by reference), or
    /// comma-separated URLs without credentials.
    #[arg(long, env = "ICE_SERVERS", value_name = "ICE_SERVERS", value_parser = parse_ice_servers)]
    pub ice_servers: Option<IceServerSpecs>,

    /// Web origins whose pages may call the WHIP endpoints (CORS), comma-separated, e.g.
    /// `https://app.example.com`. None by default: only same-origin pages can.
    #[arg(
        long,
        env = "ALLOWED_ORIGINS",
        value_name = "ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub allowed_origins: Vec<String>,

    /// Check loopback, private and link-local ICE candidates that clients signal (off by
    /// default; see `transport::candidate_policy`).
    #[arg(
        long,
        env = "ALLOW_PRIVATE_CANDIDATES",
        value_name = "ALLOW_PRIVATE_CANDIDATES"
    )]
    pub allow_private_candidates: bool,

    /// Key that signs session join tokens (the operator mounts it from a Secret).
    /// Without it every offer and upgrade is refused with 503.
    #[arg(
        long,
        env = "SESSION_SIGNING_KEY",
        value_name = "SESSION_SIGNING_KEY",
        hide_env_values = true
    )]
    pub session_signing_key: Option<String>,

    /// The backend's join-token key set (`keys.json` of its signing-key Secret), re-read every
    /// second so a rotated key is used without a restart; once read it replaces
    /// `SESSION_SIGNING_KEY` and tokens are checked with the key their `kid` names.
    #[arg(
        long,
        env = "SESSION_SIGNING_KEYS_FILE",
        value_name = "SESSION_SIGNING_KEYS_FILE"
    )]
    pub session_signing_keys_file: Option<std::path::PathBuf>,

    /// Largest SDP offer accepted, in bytes; a larger body is refused with 413.
    #[arg(
        long,
        env = "MAX_OFFER_BYTES",
        value_name = "MAX_OFFER_BYTES",
        default_value_t = 64 * 1024
    )]
    pub max_offer_bytes: usize,

    /// Seconds a client gets to send a request's headers, and then its body; a client
    /// slower than that (a slow-loris) is disconnected.
    #[arg(
        long,
        env = "HTTP_REQUEST_TIMEOUT_SECONDS",
        value_name = "HTTP_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub http_request_timeout_seconds: u64,

    /// Seconds a WebRTC client gets from its offer to a connected peer (ICE and DTLS)
    /// before the attempt is abandoned and the session may be offered again.
    #[arg(
        long,
        env = "CONNECT_TIMEOUT_SECONDS",
        value_name = "CONNECT_TIMEOUT_SECONDS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub connect_timeout_seconds: u64,

    /// Most HTTP connections open at once (signaling, WebSocket media, probes, scrapes);
    /// a connection past it is answered 503 `TooManyConnections` and closed.
    #[arg(
        long,
        env = "MAX_HTTP_CONNECTIONS",
        value_name = "MAX_HTTP_CONNECTIONS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_http_connections: u32,

    /// Most HTTP connections open at once from one remote IP address. Behind an ingress or
    /// load balancer every client shares its address: raise it to the worker's expected
    /// WebSocket sessions plus headroom.
    #[arg(
        long,
        env = "MAX_HTTP_CONNECTIONS_PER_ADDRESS",
        value_name = "MAX_HTTP_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_http_connections_per_address: u32,

    /// Seconds one WebSocket send may take; a client that stops reading is cut after it.
    #[arg(
        long,
        env = "WS_SEND_TIMEOUT_SECONDS",
        value_name = "WS_SEND_TIMEOUT_SECONDS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub ws_send_timeout_seconds: u64,

    /// Seconds between the server's WebSocket pings.
    #[arg(
        long,
        env = "WS_PING_INTERVAL_SECONDS",
        value_name = "WS_PING_INTERVAL_SECONDS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub ws_ping_interval_seconds: u64,

    /// Seconds a WebSocket ping may go unanswered before the connection is closed (1001).
    #[arg(
        long,
        env = "WS_PONG_TIMEOUT_SECONDS",
        value_name = "WS_PONG_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub ws_pong_timeout_seconds: u64,

    /// Most sessions this worker holds at once (VoiceBackend spec.workers.sessionsPerWorker).
    #[arg(
        long,
        env = "SESSIONS_PER_WORKER",
        value_name = "SESSIONS_PER_WORKER",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub sessions_per_worker: u32,

    /// How long a drain waits for sessions to end before ending them itself; also the
    /// deadline of a Drain call that asks for 0 seconds.
    #[arg(
        long,
        env = "DRAIN_TIMEOUT_SECONDS",
        value_name = "DRAIN_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    pub drain_timeout_seconds: u64,

    /// Name of this pod, for logs.
    #[arg(long, env = "POD_NAME", value_name = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Namespace of this pod, for logs.
    #[arg(long, env = "POD_NAMESPACE", value_name = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// The VoiceBackend this worker serves, for logs.
    #[arg(long, env = "BACKEND_NAME", value_name = "BACKEND_NAME")]
    pub backend_name: Option<String>,

    /// The backend's pipeline configuration as JSON (`{"pipeline", "agent", "audio"}` from
    /// the VoiceBackend spec): the only source of providers, endpoints and Secret names;
    /// sessions add only their typed overrides. Unset, sessions run the diagnostic
    /// speech-to-speech `echo`.
    #[arg(long = "pipeline", env = "VOICE_PIPELINE", value_name = "VOICE_PIPELINE", value_parser = parse_pipeline)]
    pub pipeline: Option<serde_json::Value>,

    /// The backend's `spec.providerConfig` as JSON: for the built-in worker `logLevel` (the
    /// log filter when `RUST_LOG` is unset) and `jitterBufferMs` (receive-side jitter buffer
    /// depth, 20–500, default 40).
    #[arg(
        long = "provider-config",
        env = "VOICE_PROVIDER_CONFIG",
        value_name = "VOICE_PROVIDER_CONFIG",
        value_parser = crate::provider_config::ProviderConfig::parse,
        default_value = "{}"
    )]
    pub provider_config: crate::provider_config::ProviderConfig,

    /// Directory with the control channel's TLS files (`ca.crt`: the CAs whose client
    /// certificates may call; `tls.crt`/`tls.key`: this worker's serving certificate), a
    /// Secret volume in a pod. Re-read when they change, so rotation drops no connection.
    #[arg(long, env = "CONTROL_TLS_DIR", value_name = "CONTROL_TLS_DIR")]
    pub control_tls_dir: Option<std::path::PathBuf>,

    /// Serve the control gRPC port without TLS. Only for a worker run by hand outside a
    /// cluster: then anyone who reaches the port can call it. Without this flag a worker
    /// with no `CONTROL_TLS_DIR` refuses to start.
    #[arg(long, env = "CONTROL_INSECURE", value_name = "CONTROL_INSECURE")]
    pub control_insecure: bool,

    /// Certificate chain (PEM) to serve signaling with over HTTPS/WSS instead of plain HTTP;
    /// needs `TLS_KEY_FILE`. Re-read every second, so a renewed certificate is served
    /// without a restart.
    #[arg(
        long,
        env = "TLS_CERT_FILE",
        value_name = "TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) of `TLS_CERT_FILE`'s first certificate.
    #[arg(
        long,
        env = "TLS_KEY_FILE",
        value_name = "TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// Session events buffered per subscriber before a slow subscriber is cut off.
    #[arg(
        long,
        env = "EVENT_BUFFER",
        value_name = "EVENT_BUFFER",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub event_buffer: u16,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "LOG_JSON", value_name = "LOG_JSON")]
    pub log_json: bool,
}

impl Config {
    /// Where the gRPC server listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.pod_ip, self.grpc_port)
    }

    /// Where the HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.pod_ip, self.http_port)
    }

    /// Where the WebRTC UDP mux listens.
    pub fn udp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.pod_ip, self.udp_port)
    }

    /// Where the ICE-TCP listener listens, when it runs.
    pub fn tcp_media_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.pod_ip, self.tcp_media_port?))
    }

    /// The address put in ICE candidates.
    pub fn advertised_ip(&self) -> IpAddr {
        self.advertise_ip.unwrap_or(self.pod_ip)
    }

    /// The per-request HTTP timeout, as a duration.
    pub fn http_request_timeout(&self) -> Duration {
        Duration::from_secs(self.http_request_timeout_seconds)
    }

    /// How long a WebRTC connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds)
    }

    /// Send timeout, ping interval and pong deadline of WebSocket connections.
    pub fn websocket_timing(&self) -> crate::transport::ws_rules::Timing {
        crate::transport::ws_rules::Timing {
            send_timeout: Duration::from_secs(self.ws_send_timeout_seconds),
            ping_interval: Duration::from_secs(self.ws_ping_interval_seconds),
            pong_timeout: Duration::from_secs(self.ws_pong_timeout_seconds),
        }
    }

    /// The HTTP connection caps.
    pub fn http_limits(&self) -> crate::server::ConnectionLimits {
        crate::server::ConnectionLimits {
            total: usize::try_from(self.max_http_connections).unwrap_or(usize::MAX),
            per_address: usize::try_from(self.max_http_connections_per_address)
                .unwrap_or(usize::MAX),
        }
    }

    /// The default drain deadline, as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_seconds)
    }
}

/// The backend's ICE servers as the operator passes them (`spec.workers.network.iceServers`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IceServerSpecs(pub Vec<voice_crds::IceServer>);

/// Reads `ICE_SERVERS`: a JSON array of the spec's entries, or comma-separated URLs.
fn parse_ice_servers(raw: &str) -> Result<IceServerSpecs, String> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        return serde_json::from_str(raw)
            .map(IceServerSpecs)
            .map_err(|e| format!("ICE_SERVERS is not a JSON list of ICE servers: {e}"));
    }
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = urls.iter().find(|u| {
        !["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|scheme| u.starts_with(scheme))
    }) {
        return Err(format!(
            "ICE_SERVERS entry {bad:?} must start with stun:, stuns:, turn: or turns:"
        ));
    }
    Ok(IceServerSpecs(
        urls.into_iter()
            .map(|url| voice_crds::IceServer {
                urls: vec![url],
                username_secret_ref: None,
                credential_secret_ref: None,
                auth_secret_ref: None,
            })
            .collect(),
    ))
}

/// Checks that an `ALLOWED_ORIGINS` entry is an origin: scheme, host, optional port.
fn parse_origin(raw: &str) -> Result<String, String> {
    let origin = raw.trim();
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match host {
        Some(host)
            if !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)) =>
        {
            Ok(origin.to_owned())
        }
        _ => Err(format!(
            "ALLOWED_ORIGINS entry {origin:?} is not an origin such as https://app.example.com (scheme and host, optional port, nothing after)"
        )),
    }
}

/// Checks that `VOICE_PIPELINE` holds JSON, naming the variable in the error.
fn parse_pipeline(raw: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(raw).map_err(|e| format!("VOICE_PIPELINE is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("voice-worker").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_bind_loopback_on_the_documented_ports() {
        let config = parse(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.grpc_addr().to_string(), "127.0.0.1:50051");
        assert_eq!(config.http_addr().to_string(), "127.0.0.1:8080");
        assert_eq!(config.sessions_per_worker, 1);
        assert_eq!(config.udp_addr().to_string(), "127.0.0.1:50000");
        assert_eq!(config.max_offer_bytes, 65_536);
        assert_eq!(
            config.http_limits(),
            crate::server::ConnectionLimits {
                total: 1024,
                per_address: 256
            }
        );
        assert_eq!(
            config.websocket_timing(),
            crate::transport::ws_rules::Timing::default()
        );
        assert!(config.session_signing_key.is_none());
    }

    #[test]
    fn the_advertised_address_defaults_to_the_pod_ip() {
        let config = parse(&["--pod-ip", "10.1.2.3"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.advertised_ip().to_string(), "10.1.2.3");
        let config = parse(&["--pod-ip", "10.1.2.3", "--advertise-ip", "203.0.113.7"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.advertised_ip().to_string(), "203.0.113.7");
    }

    #[test]
    fn bad_pipeline_json_names_the_variable() {
        let err = parse(&["--pipeline", "{not json"]).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("VOICE_PIPELINE"), "{err}");
    }

    #[test]
    fn pipeline_json_is_kept() {
        let config = parse(&["--pipeline", r#"{"type":"S2S"}"#]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.pipeline, Some(serde_json::json!({"type": "S2S"})));
    }

    #[test]
    fn zero_sessions_per_worker_is_refused_naming_the_variable() {
        let err = parse(&["--sessions-per-worker", "0"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("SESSIONS_PER_WORKER"), "{err}");
    }

    #[test]
    fn zero_connection_caps_and_timeouts_are_refused_naming_the_variable() {
        for (flag, variable) in [
            (
                "--max-http-connections-per-address",
                "MAX_HTTP_CONNECTIONS_PER_ADDRESS",
            ),
            ("--ws-pong-timeout-seconds", "WS_PONG_TIMEOUT_SECONDS"),
        ] {
            let err = parse(&[flag, "0"]).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(variable), "{err}");
        }
    }

    #[test]
    fn control_tls_is_read_from_a_directory_or_explicitly_off() {
        let config = parse(&["--control-tls-dir", "/var/run/voice/control-tls"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.control_tls_dir.as_deref(),
            Some(std::path::Path::new("/var/run/voice/control-tls"))
        );
        assert!(!config.control_insecure);
        let config = parse(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.control_tls_dir.is_none() && !config.control_insecure);
    }

    #[test]
    fn tls_needs_both_files_and_is_off_by_default() {
        let config = parse(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.tls_cert_file.is_none() && config.tls_key_file.is_none());
        let config = parse(&[
            "--tls-cert-file",
            "/c/tls.crt",
            "--tls-key-file",
            "/c/tls.key",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.tls_key_file.as_deref(),
            Some(std::path::Path::new("/c/tls.key"))
        );
        let err = parse(&["--tls-cert-file", "/c/tls.crt"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("TLS_KEY_FILE"), "{err}");
    }

    #[test]
    fn ice_servers_are_json_from_the_operator_or_urls_by_hand() {
        let config = parse(&[
            "--ice-servers",
            r#"[{"urls":["turn:t:3478"],"authSecretRef":{"name":"turn","key":"s"}}]"#,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let specs = config.ice_servers.unwrap_or_default().0;
        assert_eq!(specs[0].urls, vec!["turn:t:3478".to_owned()]);
        assert_eq!(
            specs[0].auth_secret_ref.as_ref().map(|r| r.key.as_str()),
            Some("s")
        );
        let config =
            parse(&["--ice-servers", "stun:a:3478,stun:b:3478"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.ice_servers.unwrap_or_default().0.len(), 2);
        let err = parse(&["--ice-servers", "http://x"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("ICE_SERVERS"), "{err}");
    }

    #[test]
    fn allowed_origins_must_be_origins() {
        let config = parse(&[
            "--allowed-origins",
            "https://app.example.com,http://127.0.0.1:3000",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.allowed_origins.len(), 2);
        assert!(!config.allow_private_candidates);
        let err = parse(&["--allowed-origins", "https://app.example.com/x"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("ALLOWED_ORIGINS"), "{err}");
    }

    #[test]
    fn bad_pod_ip_names_the_variable() {
        let err = parse(&["--pod-ip", "not-an-ip"]).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("POD_IP"), "{err}");
    }
}
