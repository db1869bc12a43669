//! The media-network part of a worker pod, rendered from `spec.workers.network`: the
//! environment the worker reads (UDP and ICE-TCP ports, advertised address, ICE servers, CORS origins,
//! private candidates), the container ports and, for `advertise: NodeIP`, host ports and
//! the scheduling rule that keeps two workers of one backend off the same node.
//!
//! NodeIP puts the pod on the host network, so its HTTP, gRPC and media ports are ports of the
//! node. Each is declared as a `hostPort` (the scheduler's NodePorts filter then refuses a
//! node where any pod already holds one of them, whatever its backend), and a required pod
//! anti-affinity on `kubernetes.io/hostname` among the backend's workers says the same in
//! words a reader of the pod spec sees: one worker of this backend per node.
//!
//! With `tls`, the named `kubernetes.io/tls` Secret is a volume at [`SIGNALING_TLS_DIR`] and the
//! worker gets `TLS_CERT_FILE`/`TLS_KEY_FILE` there: a volume, not environment variables,
//! because the kubelet refreshes a mounted Secret in place and the worker reloads it.

use k8s_openapi::api::core::v1::{
    Affinity, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use voice_crds::{AdvertiseMode, WorkerNetwork};

use crate::pod_template::{GRPC_PORT, HTTP_PORT, selector_labels};

/// The UDP port of a worker's WebRTC mux when `udpPort` is unset.
pub const DEFAULT_UDP_PORT: i32 = 50000;

/// Name of the ICE-TCP container port, which the backend's Service targets.
pub const WEBRTC_TCP_PORT_NAME: &str = "webrtc-tcp";

/// The node label the NodeIP anti-affinity spreads workers over.
pub const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";

/// Where the worker pod mounts the backend's signaling certificate Secret (`network.tls`).
pub const SIGNALING_TLS_DIR: &str = "/var/run/voice/signaling-tls";
/// Name of that Secret's volume in the worker pod.
const SIGNALING_TLS_VOLUME: &str = "signaling-tls";

/// The UDP port every answer of the backend's workers names.
pub fn udp_port(network: &WorkerNetwork) -> i32 {
    network.udp_port.unwrap_or(DEFAULT_UDP_PORT)
}

/// The worker's ICE-TCP port: the UDP port's number over TCP, so one number is "the media
/// port" in firewall rules and NetworkPolicies. None (ICE-TCP off) when that number is the
/// HTTP or gRPC port, which TCP already uses.
pub fn tcp_media_port(network: &WorkerNetwork) -> Option<i32> {
    Some(udp_port(network)).filter(|port| ![GRPC_PORT, HTTP_PORT].contains(port))
}

/// The environment variables that carry `network` to the worker (`worker/src/config.rs`).
///
/// ICE servers go as the spec's own JSON: URLs plus Secret *references*; the referenced keys
/// reach the pod as `VOICE_SECRET_*` variables from the Secrets (the pod template's
/// `secret_refs` loop), so no credential passes through the operator or the pod spec.
pub fn env(network: &WorkerNetwork) -> Result<Vec<EnvVar>, serde_json::Error> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![value("UDP_PORT", udp_port(network).to_string())];
    if let Some(port) = tcp_media_port(network) {
        env.push(value("TCP_MEDIA_PORT", port.to_string()));
    }
    match network.advertise {
        AdvertiseMode::PodIP => {}
        AdvertiseMode::NodeIP => env.push(EnvVar {
            name: "ADVERTISE_IP".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.hostIP".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
        }),
        AdvertiseMode::Explicit => {
            if let Some(address) = &network.address {
                env.push(value("ADVERTISE_IP", address.clone()));
            }
        }
    }
    if !network.ice_servers.is_empty() {
        env.push(value(
            "ICE_SERVERS",
            serde_json::to_string(&network.ice_servers)?,
        ));
    }
    if !network.allowed_origins.is_empty() {
        env.push(value("ALLOWED_ORIGINS", network.allowed_origins.join(",")));
    }
    env.push(value(
        "ALLOW_PRIVATE_CANDIDATES",
        network.allow_private_candidates.to_string(),
    ));
    if network.tls.is_some() {
        env.push(value(
            "TLS_CERT_FILE",
            format!("{SIGNALING_TLS_DIR}/tls.crt"),
        ));
        env.push(value(
            "TLS_KEY_FILE",
            format!("{SIGNALING_TLS_DIR}/tls.key"),
        ));
    }
    Ok(env)
}

/// The worker container's ports; with NodeIP each is also a host port (on the host network
/// a host port must equal its container port).
pub fn ports(network: &WorkerNetwork) -> Vec<ContainerPort> {
    let on_node = network.advertise == AdvertiseMode::NodeIP;
    let port = |name: &str, port: i32, protocol: &str| ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        host_port: on_node.then_some(port),
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    };
    let mut ports = vec![
        port("grpc", GRPC_PORT, "TCP"),
        port("http", HTTP_PORT, "TCP"),
        port("webrtc", udp_port(network), "UDP"),
    ];
    ports.extend(tcp_media_port(network).map(|p| port(WEBRTC_TCP_PORT_NAME, p, "TCP")));
    ports
}

/// With NodeIP, a required anti-affinity: no node runs two workers of `backend`.
pub fn affinity(backend: &str, network: &WorkerNetwork) -> Option<Affinity> {
    (network.advertise == AdvertiseMode::NodeIP).then(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(backend)),
                    match_expressions: None,
                }),
                topology_key: HOSTNAME_TOPOLOGY_KEY.to_owned(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    })
}

/// Whether the worker serves signaling over TLS (`https://`, `wss://`, HTTPS probes).
pub fn serves_tls(network: &WorkerNetwork) -> bool {
    network.tls.is_some()
}

/// With `tls`, the certificate Secret's volume (not optional: without the Secret the pod
/// stays in `ContainerCreating` with a `FailedMount` event naming it, as a worker that
/// would silently fall back to plain HTTP would break every client's `https://` URL).
pub fn tls_volume(network: &WorkerNetwork) -> Option<Volume> {
    network.tls.as_ref().map(|tls| Volume {
        name: SIGNALING_TLS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tls.secret_name.clone()),
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    })
}

/// With `tls`, where the worker container sees that Secret (read-only).
pub fn tls_mount(network: &WorkerNetwork) -> Option<VolumeMount> {
    network.tls.as_ref().map(|_| VolumeMount {
        name: SIGNALING_TLS_VOLUME.to_owned(),
        mount_path: SIGNALING_TLS_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    })
}

#[cfg(test)]
mod tests;
