//! The backend's NetworkPolicy: which TCP ports it opens to anyone.

use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use serde_json::json;

use super::*;

fn backend(workers: serde_json::Value) -> VoiceBackend {
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceBackend",
        "metadata": {"name": "assistant", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "provider": "builtin",
            "pipeline": {"type": "STT_TTS", "stt": {"provider": "openai"}, "tts": {"provider": "espeak"}},
            "agent": {"type": "Echo"},
            "workers": workers
        }
    }))
    .expect("backend")
}

/// The second rule's ports as `(protocol, from, to)`.
fn open_ports(backend: &VoiceBackend) -> Vec<(String, i32, i32)> {
    let policy = network_policy(backend, &OperatorPods::default()).expect("policy");
    let rules = policy.spec.and_then(|s| s.ingress).expect("ingress rules");
    assert_eq!(rules.len(), 2);
    assert!(rules[1].from.is_none(), "the open rule admits anyone");
    rules[1]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p: NetworkPolicyPort| {
            let from = match p.port {
                Some(IntOrString::Int(n)) => n,
                other => panic!("numeric port expected, got {other:?}"),
            };
            (
                p.protocol.unwrap_or_default(),
                from,
                p.end_port.unwrap_or(from),
            )
        })
        .collect()
}

/// Every TCP port the open rule leaves out, after checking its ranges are valid.
fn closed_tcp(ports: &[(String, i32, i32)]) -> Vec<i32> {
    let mut tcp: Vec<_> = ports.iter().filter(|p| p.0 == "TCP").collect();
    for (_, from, to) in &tcp {
        assert!(1 <= *from && from <= to && *to <= 65_535, "{from}..={to}");
    }
    tcp.sort_by_key(|p| p.1);
    let mut closed = Vec::new();
    let mut next = 1;
    for (_, from, to) in tcp {
        assert!(*from >= next, "ranges overlap at {from}");
        closed.extend(next..*from);
        next = to + 1;
    }
    closed.extend(next..=65_535);
    closed
}

#[test]
fn without_a_bot_only_the_control_port_is_left_out() {
    let ports = open_ports(&backend(json!({})));
    assert_eq!(
        ports,
        vec![
            ("TCP".to_owned(), 1, GRPC_PORT - 1),
            ("TCP".to_owned(), GRPC_PORT + 1, 65_535),
            ("UDP".to_owned(), 1, 65_535),
        ]
    );
}

#[test]
fn the_bot_port_is_closed_to_other_pods_below_or_above_the_control_port() {
    for port in [1024, 8765, GRPC_PORT - 1, GRPC_PORT + 1, 60_000, 65_535] {
        let ports = open_ports(&backend(json!({"bot": {"image": "bot:1", "port": port}})));
        let mut expected = vec![port, GRPC_PORT];
        expected.sort_unstable();
        assert_eq!(closed_tcp(&ports), expected, "bot port {port}");
        assert!(ports.contains(&("UDP".to_owned(), 1, 65_535)));
    }
}

#[test]
fn the_default_bot_port_is_closed() {
    let ports = open_ports(&backend(json!({"bot": {"image": "bot:1"}})));
    assert_eq!(closed_tcp(&ports), vec![8765, GRPC_PORT]);
}

#[test]
fn open_ranges_skip_closed_ports_in_any_order() {
    assert_eq!(open_tcp_ranges(&[]), vec![(1, 65_535)]);
    assert_eq!(
        open_tcp_ranges(&[50051, 8765]),
        vec![(1, 8764), (8766, 50050), (50052, 65_535)]
    );
    assert_eq!(
        open_tcp_ranges(&[8765, 50051, 8765]),
        open_tcp_ranges(&[50051, 8765])
    );
    // Neighbours and the edges leave no empty or inverted range.
    assert_eq!(open_tcp_ranges(&[1, 2, 65_535]), vec![(3, 65_534)]);
    assert_eq!(
        open_tcp_ranges(&[50051, 50052]),
        vec![(1, 50050), (50053, 65_535)]
    );
    assert_eq!(open_tcp_ranges(&[0, 70_000]), vec![(1, 65_535)]);
}
