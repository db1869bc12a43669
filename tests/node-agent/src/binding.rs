//! A small scheduler: every pod that names no node and asks for the default scheduler is
//! bound to this agent's node through the `pods/binding` subresource — unless it does not
//! fit beside the pods already there ([`crate::node_fit`]: host ports, anti-affinity); then
//! it stays Pending and is tried again every few seconds, as kube-scheduler retries.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

/// The scheduler name a pod has when it asks for none.
const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Whether this scheduler should place `pod`.
pub fn wants_binding(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let unbound = spec
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty);
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|s| s == DEFAULT_SCHEDULER);
    unbound && ours && pod.metadata.deletion_timestamp.is_none()
}

/// Binds unscheduled pods to `node_name` until `shutdown`.
pub async fn run(client: kube::Client, node_name: String, shutdown: CancellationToken) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default()
        .fields("spec.nodeName=,status.phase!=Succeeded,status.phase!=Failed");
    let mut events = watcher(pods, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut retry = tokio::time::interval(RETRY_UNFIT);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = retry.tick() => {
                retry_unbound(&client, &node_name).await;
                continue;
            }
            next = events.next() => next,
        };
        match next {
            Some(Ok(pod)) if wants_binding(&pod) => bind(&client, &pod, &node_name).await,
            Some(Ok(_)) => {}
            Some(Err(err)) => tracing::warn!(error = %err, "watching unscheduled pods"),
            None => return,
        }
    }
}

/// How often pods left unbound (they did not fit) are tried again.
const RETRY_UNFIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Tries again every pod still waiting for a node.
async fn retry_unbound(client: &kube::Client, node_name: &str) {
    let pods: Api<Pod> = Api::all(client.clone());
    let params = ListParams::default().fields("spec.nodeName=,status.phase=Pending");
    if let Ok(list) = pods.list(&params).await {
        for pod in list.items.iter().filter(|p| wants_binding(p)) {
            bind(client, pod, node_name).await;
        }
    }
}

async fn bind(client: &kube::Client, pod: &Pod, node_name: &str) {
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let all: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node_name}"));
    let placed = match all.list(&on_node).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .collect::<Vec<_>>(),
        Err(err) => {
            tracing::warn!(%namespace, pod = %name, error = %err, "listing the node's pods");
            return;
        }
    };
    if let Some(reason) = crate::node_fit::conflict(pod, &placed) {
        tracing::info!(%namespace, pod = %name, %reason, "pod does not fit on the node; left Pending");
        return;
    }
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.uid(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node_name.to_owned()),
            ..ObjectReference::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    match api
        .create_subresource::<Binding, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => tracing::info!(%namespace, pod = %name, node = node_name, "pod bound"),
        // Bound meanwhile (by us on a replayed event, or by someone else), or gone.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => {
            tracing::debug!(%namespace, pod = %name, reason = %e.message, "not bound");
        }
        Err(err) => tracing::warn!(%namespace, pod = %name, error = %err, "binding failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(node: Option<&str>, scheduler: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                scheduler_name: scheduler.map(str::to_owned),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn binds_only_unscheduled_pods_of_the_default_scheduler() {
        assert!(wants_binding(&pod(None, None)));
        assert!(wants_binding(&pod(Some(""), Some("default-scheduler"))));
        assert!(!wants_binding(&pod(Some("n"), None)));
        assert!(!wants_binding(&pod(None, Some("volcano"))));
    }
}
