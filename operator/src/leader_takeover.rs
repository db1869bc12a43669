//! A new leader's first act, before it reads a single session: list every worker with its
//! epoch, which fences the previous leader on each of them.
//!
//! Order matters. The old leader writes a session's intent (its `status.worker`) before it
//! reserves the slot, and after this pass no listed worker takes a reservation from it. So
//! every reservation the old leader made on these workers has its intent in the API before
//! the allocator's session watch makes its first list, which comes after this pass: the
//! ledger rebuilt from that list holds them all, and no cap is counted short.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::pod_template::{LABEL_BACKEND, LABEL_MANAGED_BY};

/// Bound on each worker's answer; a worker that does not answer cannot have been reached by
/// the old leader either, or its slots are lost with it.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Workers listed at once.
const CONCURRENCY: usize = 32;

/// What the pass found, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Takeover {
    /// Workers that answered, and are now fenced against every older leader.
    pub fenced: usize,
    /// Workers that did not answer.
    pub unreachable: Vec<String>,
    /// Slots held on the workers that answered.
    pub held: usize,
}

/// Lists every worker pod the operator manages (in its scope) with this leader's epoch.
pub async fn fence_workers(ctx: &Context) -> Takeover {
    let pods: Api<Pod> = match &ctx.scope.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let selector = format!("{LABEL_MANAGED_BY}=voice-operator");
    let pods = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(e) => {
            // Without the pod list there is nothing to fence; the repair pass still runs.
            tracing::warn!(error = %e, "listing worker pods for the takeover failed");
            return Takeover::default();
        }
    };
    let workers: Vec<(String, String)> = pods
        .iter()
        .filter_map(|p| {
            let backend = p.labels().get(LABEL_BACKEND)?;
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            ctx.workers
                .register(&ip, &p.namespace().unwrap_or_default(), backend);
            Some((p.name_any(), ip))
        })
        .collect();
    let answers: Vec<(String, Result<usize, String>)> = futures::stream::iter(workers)
        .map(|(name, ip)| async move {
            let listed = ctx.workers.list_sessions(&ip, LIST_TIMEOUT).await;
            (name, listed.map(|held| held.len()))
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut takeover = Takeover::default();
    for (name, answer) in answers {
        match answer {
            Ok(held) => {
                takeover.fenced += 1;
                takeover.held += held;
            }
            Err(e) => {
                tracing::warn!(worker = %name, error = %e, "worker not fenced at takeover");
                takeover.unreachable.push(name);
            }
        }
    }
    takeover
}
