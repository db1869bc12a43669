//! A worker Pod object read into the core's [`PodFacts`], so the allocator and the backend
//! controller apply the one rule in [`crate::world`] to the same facts.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::pod_template::LABEL_DRAINING;
use crate::world::PodFacts;

/// What `pod`'s metadata and status say of the worker in it.
pub fn of(pod: &Pod) -> PodFacts {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    PodFacts {
        running: phase == Some("Running"),
        ready_condition: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        finished: matches!(phase, Some("Succeeded" | "Failed")),
        draining_label: pod.labels().get(LABEL_DRAINING).map(String::as_str) == Some("true"),
    }
}
