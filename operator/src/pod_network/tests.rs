//! The ICE-TCP media port as rendered: worker environment, container (and host) ports, and
//! the backend's Service.

use serde_json::json;
use voice_crds::VoiceBackend;

use super::*;

fn backend(network: serde_json::Value) -> VoiceBackend {
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceBackend",
        "metadata": {"name": "assistant", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "provider": "builtin",
            "pipeline": {
                "type": "STT_TTS",
                "stt": {"provider": "openai", "credentialsSecretRef": {"name": "openai", "key": "api-key"}},
                "tts": {"provider": "espeak"}
            },
            "agent": {"type": "Echo"},
            "workers": {"sessionsPerWorker": 4, "drainTimeout": "60s", "network": network}
        }
    }))
    .expect("backend")
}

fn env_value(network: &WorkerNetwork, name: &str) -> Option<String> {
    env(network)
        .expect("env")
        .into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value)
}

fn tcp_ports(network: &WorkerNetwork) -> Vec<(String, i32, Option<i32>)> {
    ports(network)
        .into_iter()
        .filter(|p| p.protocol.as_deref() == Some("TCP"))
        .map(|p| (p.name.unwrap_or_default(), p.container_port, p.host_port))
        .collect()
}

#[test]
fn the_tcp_media_port_is_the_udp_ports_number_and_reaches_the_worker() {
    let default = backend(json!({})).spec.workers.network;
    assert_eq!(
        env_value(&default, "TCP_MEDIA_PORT").as_deref(),
        Some("50000")
    );
    assert!(tcp_ports(&default).contains(&(WEBRTC_TCP_PORT_NAME.to_owned(), 50000, None)));

    let custom = backend(json!({"udpPort": 40000})).spec.workers.network;
    assert_eq!(
        env_value(&custom, "TCP_MEDIA_PORT").as_deref(),
        Some("40000")
    );
    assert_eq!(env_value(&custom, "UDP_PORT").as_deref(), Some("40000"));
}

#[test]
fn node_ip_workers_hold_the_tcp_media_port_on_the_node_too() {
    let network = backend(json!({"advertise": "NodeIP", "udpPort": 41000}))
        .spec
        .workers
        .network;
    assert!(
        tcp_ports(&network).contains(&(WEBRTC_TCP_PORT_NAME.to_owned(), 41000, Some(41000))),
        "{:?}",
        tcp_ports(&network)
    );
}

#[test]
fn a_udp_port_on_the_http_or_grpc_number_turns_ice_tcp_off_instead_of_colliding() {
    for taken in [HTTP_PORT, GRPC_PORT] {
        let network = backend(json!({"udpPort": taken})).spec.workers.network;
        assert_eq!(tcp_media_port(&network), None);
        assert_eq!(env_value(&network, "TCP_MEDIA_PORT"), None);
        let names: Vec<String> = tcp_ports(&network).into_iter().map(|p| p.0).collect();
        assert_eq!(names, ["grpc", "http"]);
    }
}

#[test]
fn the_backends_service_names_the_tcp_media_port() {
    let ports: Vec<(Option<String>, i32, Option<String>)> =
        crate::backend_children::service_ports(&backend(json!({"udpPort": 40000})))
            .into_iter()
            .map(|p| {
                let target = match p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                        Some(s)
                    }
                    _ => None,
                };
                assert_eq!(p.protocol.as_deref(), Some("TCP"));
                (p.name, p.port, target)
            })
            .collect();
    let name = Some(WEBRTC_TCP_PORT_NAME.to_owned());
    assert!(
        ports.contains(&(name.clone(), 40000, name)),
        "the Service has no ICE-TCP port targeting the container's: {ports:?}"
    );
    assert_eq!(ports.len(), 3, "{ports:?}");
}
