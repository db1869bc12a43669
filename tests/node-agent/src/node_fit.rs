//! The two kube-scheduler filters a pod of this project can trip on one node: NodePorts (a
//! `hostPort` another pod on the node already holds) and required InterPodAntiAffinity on
//! `kubernetes.io/hostname` (the node is one topology domain). A pod that does not fit stays
//! unbound — `Pending`, as a real cluster would leave it — until it does.
//!
//! Only `matchLabels` selectors are read; a term with `matchExpressions` is treated as
//! matching, the cautious side for a scheduler (the pod waits rather than collides).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use kube::ResourceExt;

/// The node label anti-affinity terms are honoured for (this node is its only domain).
const HOSTNAME: &str = "kubernetes.io/hostname";

/// `(hostPort, protocol)` pairs a pod asks for.
fn host_ports(pod: &Pod) -> Vec<(i32, String)> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
            p.host_port
                .filter(|port| *port > 0)
                .map(|port| (port, protocol))
        })
        .collect()
}

/// Required anti-affinity terms of `pod` on the hostname topology.
fn anti_terms(pod: &Pod) -> Vec<&PodAffinityTerm> {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| t.topology_key == HOSTNAME)
        .collect()
}

/// Whether `term` of a pod in `owner_ns` selects `other`.
fn selects(term: &PodAffinityTerm, owner_ns: &str, other: &Pod) -> bool {
    let other_ns = other.namespace().unwrap_or_default();
    let in_scope = match term.namespaces.as_deref() {
        Some(list) if !list.is_empty() => list.contains(&other_ns),
        _ => other_ns == owner_ns,
    };
    let Some(selector) = term.label_selector.as_ref() else {
        return false;
    };
    let empty = BTreeMap::new();
    let labels = other.metadata.labels.as_ref().unwrap_or(&empty);
    in_scope
        && selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
}

/// Why `pod` cannot join the pods already on the node, or `None` if it fits.
pub fn conflict(pod: &Pod, placed: &[Pod]) -> Option<String> {
    let ns = pod.namespace().unwrap_or_default();
    let wanted = host_ports(pod);
    for other in placed.iter().filter(|o| o.uid() != pod.uid()) {
        let taken = host_ports(other);
        if let Some((port, protocol)) = wanted.iter().find(|w| taken.contains(w)) {
            return Some(format!(
                "node port {port}/{protocol} is held by pod {}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            ));
        }
        let other_ns = other.namespace().unwrap_or_default();
        if anti_terms(pod).iter().any(|t| selects(t, &ns, other))
            || anti_terms(other).iter().any(|t| selects(t, &other_ns, pod))
        {
            return Some(format!(
                "pod anti-affinity on {HOSTNAME} with pod {other_ns}/{}",
                other.name_any()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": labels},
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn worker(name: &str, backend: &str, udp: i32) -> Pod {
        pod(
            name,
            serde_json::json!({"backend": backend}),
            serde_json::json!({
                "containers": [{"name": "w", "ports": [{"containerPort": udp, "hostPort": udp, "protocol": "UDP"}]}],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"backend": backend}}, "topologyKey": HOSTNAME}
                ]}}
            }),
        )
    }

    #[test]
    fn host_ports_and_anti_affinity_keep_pods_apart() {
        let a = worker("a", "x", 40000);
        assert_eq!(conflict(&a, &[]), None);
        assert_eq!(
            conflict(&a, std::slice::from_ref(&a)),
            None,
            "a pod never conflicts with itself"
        );
        let b = worker("b", "x", 41000);
        assert!(
            conflict(&b, std::slice::from_ref(&a)).is_some_and(|m| m.contains("anti-affinity"))
        );
        let c = worker("c", "y", 40000);
        assert!(conflict(&c, std::slice::from_ref(&a)).is_some_and(|m| m.contains("40000/UDP")));
        let d = worker("d", "y", 42000);
        assert_eq!(conflict(&d, std::slice::from_ref(&a)), None);
        let plain = pod(
            "p",
            serde_json::json!({"backend": "x"}),
            serde_json::json!({"containers": [{"name": "w"}]}),
        );
        assert!(
            conflict(&plain, &[a]).is_some(),
            "the placed pod's own term keeps others out"
        );
    }
}
