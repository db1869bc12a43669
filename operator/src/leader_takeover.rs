//! A new leader's first act, before it reads a single session: list every worker with its
//! epoch, which fences the previous leader on each of them and reads every reservation.
//!
//! The workers are the durable record of reservations: an admission writes nothing before it
//! reserves ([`crate::admission_steps`]). After this pass no listed worker takes a reservation
//! from an older leader, so the reservations read here are every one the old leader made on
//! these workers. The allocator rebuilds its ledger from the sessions' statuses (Active ones)
//! plus these lists, and finishes the admissions they hold: no cap is counted short.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::ledger_rebuild::Reservation;
use crate::pod_template::{LABEL_BACKEND, LABEL_MANAGED_BY};

/// Bound on each worker's answer; a worker that does not answer cannot have been reached by
/// the old leader either, or its slots are lost with it.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Workers listed at once.
const CONCURRENCY: usize = 32;

/// What the pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Takeover {
    /// Workers that answered, and are now fenced against every older leader.
    pub fenced: usize,
    /// Workers that did not answer.
    pub unreachable: Vec<String>,
    /// Every slot held on the workers that answered.
    pub reservations: Vec<Reservation>,
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
    let workers: Vec<Reservation> = pods
        .iter()
        .filter_map(|p| {
            let backend = p.labels().get(LABEL_BACKEND)?.clone();
            let pod_ip = p.status.as_ref()?.pod_ip.clone()?;
            let namespace = p.namespace().unwrap_or_default();
            ctx.workers.register(&pod_ip, &namespace, &backend);
            Some(Reservation {
                namespace,
                pod: p.name_any(),
                pod_ip,
                backend,
                session_id: String::new(),
                uid: String::new(),
            })
        })
        .collect();
    let answers: Vec<(Reservation, Result<_, String>)> = futures::stream::iter(workers)
        .map(|worker| async move {
            let listed = ctx
                .workers
                .list_sessions(&worker.pod_ip, LIST_TIMEOUT)
                .await;
            (worker, listed)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut takeover = Takeover::default();
    for (worker, answer) in answers {
        match answer {
            Ok(held) => {
                takeover.fenced += 1;
                takeover
                    .reservations
                    .extend(held.into_iter().map(|s| Reservation {
                        session_id: s.session_id,
                        uid: s.uid,
                        ..worker.clone()
                    }));
            }
            Err(e) => {
                tracing::warn!(worker = %worker.pod, error = %e, "worker not fenced at takeover");
                takeover.unreachable.push(worker.pod);
            }
        }
    }
    takeover
}
