//! The VoiceBackend controller: acceptance, worker pods (scale, roll, drain, replace), the
//! Service and signing-key Secret, health checks and status.
//!
//! A rejected backend (`Accepted=False`) gets an Event and no new pods. Pods it already runs
//! are left alone: they may hold live conversations, and a provider edit that briefly breaks
//! acceptance must not hang up on every caller. Deleting the backend removes them.
//!
//! Every reconcile of an accepted backend is also its periodic health check: it requeues at
//! `spec.healthCheck.interval`, checks every Ready worker and writes status only when the
//! facts changed (see [`crate::backend_status`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use voice_crds::{VoiceBackend, VoiceBackendStatus, VoiceProvider, WorkerPhase};

use crate::backend_acceptance::{self, Acceptance};
use crate::backend_children::{
    ensure_control_tls_secret, ensure_network_policy, ensure_service, ensure_signing_secret,
};
use crate::backend_status::{self, Progress, StatusInput};
use crate::context::Context;
use crate::controller_stop;
use crate::drain::{self, DrainDecision, DrainProbe};
use crate::error::{Error, Result};
use crate::health::{self, FoldInput, WorkerObservation};
use crate::ledger::BackendKey;
use crate::pod_template::{self, ANNOTATION_DRAINING_SINCE, LABEL_DRAINING, LABEL_TEMPLATE_HASH};
use crate::rollout::{self, PodView};
use crate::scaling::{ScalingInput, desired_workers};
use crate::worker_pod_facts;

/// Field manager of the backend status and reporter of its Events.
use crate::field_managers::BACKEND as FIELD_MANAGER;
/// Finalizer that lets the controller drain and remove workers before the backend goes.
pub const FINALIZER: &str = "voicebackends.dev/cleanup";
/// Requeue while pods drain, to delete each as soon as its worker is empty.
const DRAIN_POLL: Duration = Duration::from_secs(2);

/// Reconciles one backend through the cleanup finalizer.
#[tracing::instrument(skip(backend, ctx), fields(backend = %backend.name_any(), namespace = backend.namespace().unwrap_or_default()))]
pub async fn reconcile(backend: Arc<VoiceBackend>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("backend");
    let ns = backend
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<VoiceBackend> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, backend, |event| async {
        match event {
            Finalizer::Apply(backend) => apply(&backend, &ctx).await,
            Finalizer::Cleanup(backend) => cleanup(&backend, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// A pod with what the controller knows about it.
struct Worker {
    name: String,
    ip: Option<String>,
    ready: bool,
    current: bool,
    draining_since: Option<Timestamp>,
    deleting: bool,
    finished: bool,
}

impl Worker {
    fn new(pod: &Pod, hash: &str) -> Worker {
        // Ready, draining, deleting, finished: read as the allocator reads them.
        let facts = worker_pod_facts::of(pod);
        let draining_since = facts.draining_label.then(|| {
            pod.annotations()
                .get(ANNOTATION_DRAINING_SINCE)
                .and_then(|s| s.parse::<Timestamp>().ok())
                // A draining label without a readable time: count from the epoch, so the
                // drain timeout has passed and the pod is not kept forever.
                .unwrap_or(Timestamp::UNIX_EPOCH)
        });
        Worker {
            name: pod.name_any(),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            ready: facts.ready_condition,
            current: pod.labels().get(LABEL_TEMPLATE_HASH).map(String::as_str) == Some(hash),
            draining_since,
            deleting: facts.deleting,
            finished: facts.finished,
        }
    }
}

async fn apply(backend: &VoiceBackend, ctx: &Context) -> Result<Action> {
    let name = backend.name_any();
    let ns = backend
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let providers: Api<VoiceProvider> = Api::all(ctx.client.clone());
    let provider = providers
        .get_opt(&backend.spec.provider)
        .await
        .map_err(Error::kube("get provider"))?;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let acceptance = backend_acceptance::check(&backend.spec, provider.as_ref());
    let acceptance =
        crate::backend_livekit::check_credentials(acceptance, &backend.spec, &ns, &secrets).await?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = backend.uid().unwrap_or_default();
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&pod_template::selector_string(&name)))
        .await
        .map_err(Error::kube("list pods"))?
        .items
        .into_iter()
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    let current = backend.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let interval: Duration = backend.spec.health_check.interval.into();
    let timeout: Duration = backend.spec.health_check.timeout.into();

    let (Some(provider), true) = (provider, acceptance.is_accepted()) else {
        // Rejected: report, create nothing, keep what runs (see the module doc).
        let workers: Vec<Worker> = pods.into_iter().map(|p| Worker::new(&p, "")).collect();
        let observations = observe(&workers, &[]);
        let fold = health::fold(
            &fold_input(backend, &current, false, 0, false, now),
            &observations,
        );
        write(
            backend,
            ctx,
            &current,
            &acceptance,
            &fold,
            Progress::Stable,
            &workers,
            now,
        )
        .await?;
        // A missing credentials Secret is fixed without touching the backend.
        if crate::backend_livekit::recheck(&acceptance) {
            return Ok(Action::requeue(interval));
        }
        return Ok(Action::await_change());
    };

    let key_promotion =
        ensure_signing_secret(&secrets, backend, ctx.signing_key_propagation).await?;
    ensure_control_tls_secret(&secrets, backend, &ctx.control_trust.current().ca).await?;
    ensure_network_policy(
        &Api::namespaced(ctx.client.clone(), &ns),
        backend,
        &ctx.operator_pods,
    )
    .await?;
    ensure_service(
        &Api::<Service>::namespaced(ctx.client.clone(), &ns),
        backend,
    )
    .await?;
    let template = pod_template::render(backend, &provider)?;
    let mut workers: Vec<Worker> = pods
        .into_iter()
        .map(|p| Worker::new(&p, &template.hash))
        .collect();
    for ip in workers.iter().filter_map(|w| w.ip.as_deref()) {
        ctx.workers.register(ip, &ns, &backend.name_any());
    }
    ctx.workers.retain(
        &ns,
        &backend.name_any(),
        &workers
            .iter()
            .filter_map(|w| w.ip.clone())
            .collect::<HashSet<_>>(),
    );

    // Check every Ready worker, and ask draining ones how many sessions they still hold.
    // A worker that served before and lost its readiness is checked too: a hung worker fails
    // its readiness probe, and with `restartPolicy: Never` only the failure threshold here
    // replaces it. Workers that never became Ready are still starting and are left alone.
    // "Served" is "was ever checked", not the last phase: a worker whose readiness went in
    // the very round its check still passed is recorded `Starting`, and must not drop out.
    let served: HashSet<&str> = current
        .worker_statuses
        .iter()
        .filter(|s| {
            s.last_check.is_some() || matches!(s.phase, WorkerPhase::Ready | WorkerPhase::Unhealthy)
        })
        .map(|s| s.name.as_str())
        .collect();
    let checks = join_all(workers.iter().map(|w| async {
        let ip = w.ip.as_deref()?;
        let wanted = w.ready || w.draining_since.is_some() || served.contains(w.name.as_str());
        if w.deleting || w.finished || !wanted {
            return None;
        }
        let start = Instant::now();
        let result = ctx.workers.check(ip, timeout).await;
        ctx.metrics
            .health_check_duration
            .observe(start.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        ctx.metrics
            .health_checks
            .with_label_values(&[outcome])
            .inc();
        Some(result)
    }))
    .await;
    let lost_worker = workers.iter().any(|w| w.finished && !w.deleting);
    let observations = observe(&workers, &checks);
    // The allocator's counts are fresher than the workers' (a slot counts from the moment it is
    // recorded), and pending sessions count too, so the backend scales for the queue.
    let sessions = ctx.session_counts.get(&BackendKey {
        namespace: backend.namespace().unwrap_or_default(),
        name: backend.name_any(),
    });
    let active = u32::try_from(current.active_sessions)
        .unwrap_or(0)
        .max(sessions.active);
    let scaling = ScalingInput::from_backend(&backend.spec, active, sessions.pending);
    let first_desired = desired_workers(scaling);
    let mut fold = health::fold(
        &fold_input(backend, &current, true, first_desired, lost_worker, now),
        &observations,
    );
    // Desired from this round's session count, which is fresher than the status; fold again
    // when it differs so health compares against the same number the pods are planned for.
    let desired = desired_workers(ScalingInput {
        active_sessions: fold.active_sessions.max(sessions.active),
        ..scaling
    });
    if desired != first_desired {
        fold = health::fold(
            &fold_input(backend, &current, true, desired, lost_worker, now),
            &observations,
        );
    }

    // Replace workers that failed too many checks in a row.
    for name in &fold.replace {
        delete_pod(&pods_api, name).await?;
        publish(
            ctx,
            backend,
            EventType::Warning,
            "WorkerReplaced",
            &format!(
                "worker {name} failed {} health checks in a row; replacing it",
                backend.spec.health_check.failure_threshold
            ),
        )
        .await;
    }
    let mut requeue = key_promotion.map_or(interval, |wait| interval.min(wait));
    // Delete draining workers that are empty or past their deadline.
    let drain_timeout: Duration = backend.spec.workers.drain_timeout.into();
    for (w, check) in workers.iter_mut().zip(&checks) {
        let Some(since) = w.draining_since else {
            continue;
        };
        if w.deleting || fold.replace.contains(&w.name) {
            continue;
        }
        let probe = if w.finished {
            DrainProbe::Finished
        } else {
            match check {
                Some(Ok(stats)) => DrainProbe::Sessions(stats.held()),
                _ => DrainProbe::Unreachable,
            }
        };
        match drain::decide(now, since, drain_timeout, probe) {
            DrainDecision::Delete(why) => {
                tracing::info!(worker = %w.name, why, "deleting drained worker");
                delete_pod(&pods_api, &w.name).await?;
                w.deleting = true;
            }
            DrainDecision::Wait(left) => requeue = requeue.min(left).min(DRAIN_POLL),
        }
    }

    let views: Vec<PodView> = workers
        .iter()
        .zip(&checks)
        .map(|(w, check)| PodView {
            name: w.name.clone(),
            current: w.current,
            ready: w.ready,
            draining: w.draining_since.is_some(),
            deleting: w.deleting || fold.replace.contains(&w.name),
            finished: w.finished,
            sessions: match check {
                Some(Ok(stats)) => Some(stats.held()),
                _ => None,
            },
        })
        .collect();
    let plan = rollout::plan(&views, desired);
    let owner = backend
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    for _ in 0..plan.create {
        let mut random = [0u8; 5];
        getrandom::fill(&mut random).map_err(Error::Random)?;
        let pod = pod_template::pod(
            &name,
            &ns,
            pod_template::pod_name(&name, random),
            &template,
            owner.clone(),
        );
        pods_api
            .create(&PostParams::default(), &pod)
            .await
            .map_err(Error::kube("create pod"))?;
    }
    for pod in &plan.delete {
        delete_pod(&pods_api, pod).await?;
    }
    for pod in &plan.drain {
        let ip = workers
            .iter()
            .find(|w| &w.name == pod)
            .and_then(|w| w.ip.clone());
        mark_draining(&pods_api, pod, now).await?;
        if let Some(ip) = ip
            && let Err(e) = ctx.workers.drain(&ip, timeout).await
        {
            // The label already keeps sessions away; the drain deadline bounds the wait.
            tracing::warn!(worker = %pod, error = %e, "Drain call failed");
        }
        requeue = requeue.min(DRAIN_POLL);
    }

    let progress = progress(&views, &plan, desired);
    let after: Vec<&Worker> = workers
        .iter()
        .filter(|w| {
            !w.deleting && !plan.delete.contains(&w.name) && !fold.replace.contains(&w.name)
        })
        .collect();
    let replicas = after.len() + plan.create as usize;
    write_with_replicas(
        backend,
        ctx,
        &current,
        &acceptance,
        &fold,
        progress,
        replicas,
        now,
    )
    .await?;
    record_worker_metrics(ctx, &ns, &name, &fold);
    record_backend_metrics(ctx, &ns, &name, backend, fold.health_status);
    if fold.connection_state == voice_crds::ConnectionState::Connecting && fold.counts.ready > 0 {
        // One allowed step of the state diagram is left (Connecting → Connected): take it soon.
        requeue = requeue.min(Duration::from_millis(500));
    }
    Ok(Action::requeue(requeue))
}

fn progress(views: &[PodView], plan: &rollout::Plan, desired: u32) -> Progress {
    let live = |v: &&PodView| !v.deleting && !v.finished && !v.draining;
    let old = views.iter().filter(live).any(|v| !v.current);
    let new_ready = views
        .iter()
        .filter(live)
        .filter(|v| v.current && v.ready)
        .count();
    if old {
        Progress::RollingUpdate
    } else if plan.create > 0 || new_ready < desired as usize {
        Progress::ScalingUp
    } else if !plan.drain.is_empty()
        || !plan.delete.is_empty()
        || views.iter().any(|v| v.draining && !v.deleting)
    {
        Progress::ScalingDown
    } else {
        Progress::Stable
    }
}

fn observe(
    workers: &[Worker],
    checks: &[Option<Result<crate::worker_client::WorkerStats, String>>],
) -> Vec<WorkerObservation> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.deleting && !w.finished)
        .map(|(i, w)| WorkerObservation {
            name: w.name.clone(),
            pod_ip: w.ip.clone(),
            ready: w.ready,
            draining: w.draining_since.is_some(),
            check: checks.get(i).cloned().flatten(),
        })
        .collect()
}

fn fold_input<'a>(
    backend: &VoiceBackend,
    current: &'a VoiceBackendStatus,
    accepted: bool,
    desired: u32,
    lost_worker: bool,
    now: Timestamp,
) -> FoldInput<'a> {
    FoldInput {
        accepted,
        previous_connection: current.connection_state,
        ever_checked: current.last_health_check.is_some(),
        previous_workers: &current.worker_statuses,
        desired,
        failure_threshold: u32::try_from(backend.spec.health_check.failure_threshold)
            .unwrap_or(1)
            .max(1),
        lost_worker,
        now: Time(now),
    }
}

#[allow(clippy::too_many_arguments)]
async fn write(
    backend: &VoiceBackend,
    ctx: &Context,
    current: &VoiceBackendStatus,
    acceptance: &Acceptance,
    fold: &health::Fold,
    progress: Progress,
    workers: &[Worker],
    now: Timestamp,
) -> Result<()> {
    let replicas = workers.iter().filter(|w| !w.deleting).count();
    write_with_replicas(
        backend, ctx, current, acceptance, fold, progress, replicas, now,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn write_with_replicas(
    backend: &VoiceBackend,
    ctx: &Context,
    current: &VoiceBackendStatus,
    acceptance: &Acceptance,
    fold: &health::Fold,
    progress: Progress,
    replicas: usize,
    now: Timestamp,
) -> Result<()> {
    let name = backend.name_any();
    let status = backend_status::compute(&StatusInput {
        current,
        generation: backend.metadata.generation,
        acceptance,
        fold,
        progress,
        replicas: i32::try_from(replicas).unwrap_or(i32::MAX),
        selector: pod_template::selector_string(&name),
        now: Time(now),
        latency: ctx
            .turn_latencies
            .p95(
                &BackendKey {
                    namespace: backend.namespace().unwrap_or_default(),
                    name: name.clone(),
                },
                std::time::Instant::now(),
            )
            .map(|(p95, turns)| (p95, turns, backend.spec.pipeline.latency_target.into())),
    });
    if !backend_status::needs_write(current, &status, &Time(now)) {
        return Ok(());
    }
    let body = serde_json::to_value(&status).map_err(|source| Error::Serialize {
        what: "backend status",
        source,
    })?;
    let patch = serde_json::json!({
        "apiVersion": VoiceBackend::api_version(&()),
        "kind": VoiceBackend::kind(&()),
        "status": body,
    });
    let api: Api<VoiceBackend> =
        Api::namespaced(ctx.client.clone(), &backend.namespace().unwrap_or_default());
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch backend status"))?;

    // Events for what changed, after the write succeeded.
    let was_accepted = current
        .conditions
        .iter()
        .find(|c| c.type_ == voice_crds::conditions::ACCEPTED);
    if let Acceptance::Rejected { message, .. } = acceptance
        && was_accepted.map(|c| (c.status.as_str(), c.reason.as_str()))
            != Some(("False", acceptance.reason()))
    {
        publish(
            ctx,
            backend,
            EventType::Warning,
            acceptance.reason(),
            message,
        )
        .await;
    }
    if status.connection_state != current.connection_state || was_accepted.is_none() {
        let (reason, warn) = backend_status::connection_event(status.connection_state);
        let note = format!(
            "connection state {:?} -> {:?}",
            current.connection_state, status.connection_state
        );
        publish(
            ctx,
            backend,
            if warn {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason,
            &note,
        )
        .await;
    }
    if status.health_status != current.health_status {
        let (reason, warn) = backend_status::health_event(status.health_status);
        let note = format!(
            "health {:?} -> {:?} ({} of {} desired workers ready)",
            current.health_status,
            status.health_status,
            status.workers.ready,
            status.workers.desired
        );
        publish(
            ctx,
            backend,
            if warn {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason,
            &note,
        )
        .await;
    }
    Ok(())
}

fn record_worker_metrics(ctx: &Context, ns: &str, name: &str, fold: &health::Fold) {
    let backend = format!("{ns}/{name}");
    for (state, value) in [
        ("desired", fold.counts.desired),
        ("ready", fold.counts.ready),
        ("draining", fold.counts.draining),
        ("total", fold.counts.total),
    ] {
        ctx.metrics
            .workers
            .with_label_values(&[backend.as_str(), state])
            .set(i64::from(value));
    }
}

/// `voice_backend_health{backend,status}` (1 for the current status, 0 for the others, so
/// alerts can match `== 1`) and the backend's latency target for turn-latency alerts.
fn record_backend_metrics(
    ctx: &Context,
    ns: &str,
    name: &str,
    backend: &VoiceBackend,
    health: voice_crds::HealthStatus,
) {
    use voice_crds::HealthStatus;
    let id = format!("{ns}/{name}");
    for (status, label) in [
        (HealthStatus::Unknown, "Unknown"),
        (HealthStatus::Healthy, "Healthy"),
        (HealthStatus::Degraded, "Degraded"),
        (HealthStatus::Unhealthy, "Unhealthy"),
    ] {
        ctx.metrics
            .backend_health
            .with_label_values(&[id.as_str(), label])
            .set(i64::from(status == health));
    }
    let target: Duration = backend.spec.pipeline.latency_target.into();
    ctx.metrics
        .backend_latency_target
        .with_label_values(&[id.as_str()])
        .set(target.as_secs_f64());
}

async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("delete pod")(e)),
    }
}

async fn mark_draining(api: &Api<Pod>, name: &str, now: Timestamp) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {
            "labels": { LABEL_DRAINING: "true" },
            "annotations": { ANNOTATION_DRAINING_SINCE: now.to_string() },
        }
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube("mark pod draining"))?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    backend: &VoiceBackend,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    crate::events::publish(
        &ctx.backend_recorder,
        backend,
        type_,
        reason,
        "Reconcile",
        note,
    )
    .await;
}

/// On deletion: ask every worker to drain (best effort), delete the pods, and let the
/// finalizer go. The Service and Secret go with the backend through their owner references.
///
/// Sessions on these workers are not ended here yet: ending them (marking each VoiceSession
/// Completed with reason BackendDeleted) belongs to session admission, which does not exist
/// in this operator yet. Until then the workers end them at their drain deadline.
async fn cleanup(backend: &VoiceBackend, ctx: &Context) -> Result<Action> {
    let ns = backend
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = backend.uid().unwrap_or_default();
    let pods = pods_api
        .list(&ListParams::default().labels(&pod_template::selector_string(&backend.name_any())))
        .await
        .map_err(Error::kube("list pods"))?
        .items;
    let timeout: Duration = backend.spec.health_check.timeout.into();
    for pod in pods
        .iter()
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
    {
        if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref())
            && let Err(e) = ctx.workers.drain(ip, timeout).await
        {
            tracing::debug!(worker = %pod.name_any(), error = %e, "drain on delete failed");
        }
        delete_pod(&pods_api, &pod.name_any()).await?;
    }
    publish(
        ctx,
        backend,
        EventType::Normal,
        "WorkersDeleted",
        &format!("deleted {} worker pod(s)", pods.len()),
    )
    .await;
    // A deleted backend's gauges would otherwise be scraped forever.
    let key = format!("{ns}/{}", backend.name_any());
    for state in ["desired", "ready", "draining", "total"] {
        let _ = ctx
            .metrics
            .workers
            .remove_label_values(&[key.as_str(), state]);
    }
    for status in ["Unknown", "Healthy", "Degraded", "Unhealthy"] {
        let _ = ctx
            .metrics
            .backend_health
            .remove_label_values(&[key.as_str(), status]);
    }
    let _ = ctx
        .metrics
        .backend_latency_target
        .remove_label_values(&[key.as_str()]);
    Ok(Action::await_change())
}

/// Retries a failed reconcile with a short backoff.
pub fn error_policy(_backend: Arc<VoiceBackend>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(reason = error.reason(), error = %error, "backend reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Backends in `store` that name provider `provider`.
fn backends_of(store: &Store<VoiceBackend>, provider: &str) -> Vec<ObjectRef<VoiceBackend>> {
    store
        .state()
        .iter()
        .filter(|b| b.spec.provider == provider)
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// Runs the backend controller until `cancel` fires; `ready` is cancelled once its caches
/// have synced.
pub async fn run(ctx: Arc<Context>, cancel: CancellationToken, synced: CancellationToken) {
    let client = ctx.client.clone();
    let (backends, pods): (Api<VoiceBackend>, Api<Pod>) = match &ctx.scope.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = kube::runtime::reflector::store();
    let backend_changes = watcher(backends, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    // `synced` (for /readyz) is the store's first complete list.
    let backend_changes = controller_stop::mark_listed(backend_changes, synced.clone())
        .applied_objects()
        .predicate_filter(
            crate::predicates::generation_or_deletion,
            Default::default(),
        );
    let store = reader.clone();
    let mut providers_config = watcher::Config::default();
    if let Some(selector) = &ctx.scope.provider_selector {
        providers_config = providers_config.labels(selector);
    }
    let metrics = ctx.metrics.clone();
    let nudges = ctx.session_counts.take_nudges();
    let nudges = futures::stream::unfold(nudges, |mut rx| async move {
        let next = rx.as_mut()?.recv().await?;
        Some((next, rx))
    });
    let stop = cancel.clone();
    let controller = Controller::for_stream(backend_changes, reader)
        .reconcile_on(nudges)
        .owns(
            pods,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=voice-operator"),
        )
        .watches(
            Api::<VoiceProvider>::all(client),
            providers_config,
            move |p: VoiceProvider| backends_of(&store, &p.name_any()),
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics
                .reconciles
                .with_label_values(&["backend", outcome])
                .inc();
            futures::future::ready(())
        });
    let grace = controller_stop::STOP_GRACE;
    if !controller_stop::run_until_stopped(controller, &cancel, &synced, grace).await {
        tracing::warn!(
            ?grace,
            "backend controller had not stopped a grace after the shutdown; leaving it"
        );
    }
}
