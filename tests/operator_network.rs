//! `advertise: NodeIP` against the real API server, operator and node agent: a backend that
//! asks for two workers on the host network gets pods that hold their HTTP, gRPC and UDP
//! ports as host ports and keep apart by anti-affinity, so on this one-node cluster exactly
//! one of them is ever bound and the other waits Pending — no two workers of the backend
//! ever share a node and a port, whatever the moment the test looks.

mod operator_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use operator_common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn two_node_ip_workers_never_share_a_node_and_a_port() {
    // NodeIP needs host networking, which a provider must allow (tenancy, docs/security.md).
    let stack =
        OperatorStack::start_with("op-nodeip", json!({"worker": {"allowHostNetwork": true}})).await;
    stack.apply_backend(
        "edge",
        json!({
            "scaling": {"minWorkers": 2, "maxWorkers": 2},
            "workers": {"network": {"advertise": "NodeIP", "udpPort": 41000}},
        }),
    );

    // Both pods exist, as the API server stored them (defaulted).
    let pods = wait_for(T, "two worker pods", || async {
        let pods = live_pods(&stack.ns, "edge").await;
        if pods.len() == 2 {
            Ok(pods)
        } else {
            Err(format!("{} pods", pods.len()))
        }
    })
    .await;
    for pod in &pods {
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.host_network, Some(true));
        let ports: BTreeSet<(i32, Option<i32>, String)> = spec.containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.container_port,
                    p.host_port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            BTreeSet::from([
                (8080, Some(8080), "TCP".to_owned()),
                (41000, Some(41000), "UDP".to_owned()),
                (50051, Some(50051), "TCP".to_owned()),
            ])
        );
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .expect("required anti-affinity");
        assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
    }

    // Watch for a while: at every look, bound pods never share a node and a host port, and
    // one of them is bound and running.
    let started = Instant::now();
    let mut max_bound = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let pods = live_pods(&stack.ns, "edge").await;
        let mut held = BTreeSet::new();
        let mut bound = 0;
        for pod in &pods {
            let spec = pod.spec.as_ref().expect("spec");
            let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) else {
                continue;
            };
            bound += 1;
            for port in spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
            {
                let key = (node.clone(), port.host_port, port.protocol.clone());
                assert!(
                    held.insert(key.clone()),
                    "two workers of one backend hold {key:?}: {pods:#?}"
                );
            }
        }
        max_bound = max_bound.max(bound);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        max_bound, 1,
        "exactly one NodeIP worker fits on the one node"
    );
    let ready = wait_for(T, "the bound worker ready", || async {
        live_pods(&stack.ns, "edge")
            .await
            .into_iter()
            .find(pod_ready)
            .ok_or_else(|| "no ready worker".to_owned())
    })
    .await;
    // It advertises the node's address (status.hostIP), not its own pod address.
    let env = ready.spec.as_ref().expect("spec").containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let advertise = env
        .iter()
        .find(|e| e.name == "ADVERTISE_IP")
        .expect("ADVERTISE_IP");
    assert_eq!(
        advertise
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.hostIP")
    );
}
