//! The agent's main loop: clean up after an earlier run, then follow the pods bound to this
//! node and give each one a supervisor task; on shutdown stop every process it started.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::status::FIELD_MANAGER;
use crate::{Error, binding, node, supervisor};

/// Reason on pods an earlier run of the agent was running: their processes were stopped, so
/// their owner (the operator, a ReplicaSet) replaces them.
pub const RESTARTED_REASON: &str = "NodeAgentRestarted";

/// Longest wait for supervisors to stop their processes on shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

struct Task {
    tx: watch::Sender<Option<Pod>>,
    handle: JoinHandle<()>,
}

/// Runs the agent until `shutdown` is cancelled, then stops everything it started.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), Error> {
    node::register(&ctx.client, &ctx.node_name, ctx.node_ip).await?;
    tracing::info!(node = %ctx.node_name, "node registered and Ready");
    let mut background = vec![tokio::spawn(node::keep_ready(
        ctx.client.clone(),
        ctx.node_name.clone(),
        ctx.node_ip,
        shutdown.clone(),
    ))];
    if ctx.schedules {
        background.push(tokio::spawn(binding::run(
            ctx.client.clone(),
            ctx.node_name.clone(),
            shutdown.clone(),
        )));
    }
    clean_up_previous_run(&ctx).await?;
    // Pods bound from now on are this run's (tests wait for this line before creating any).
    tracing::info!("earlier runs cleaned up; running this node's pods");

    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher(pods, config).default_backoff().boxed();
    let mut tasks: HashMap<String, Task> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    let tasks_stop = shutdown.child_token();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.next() => event,
        };
        tasks.retain(|uid, task| {
            let finished = task.handle.is_finished();
            if finished {
                done.insert(uid.clone());
            }
            !finished
        });
        match event {
            Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => {
                listed.insert(pod.uid().unwrap_or_default());
                dispatch(&ctx, pod, &mut tasks, &done, &tasks_stop);
            }
            Some(Ok(Event::Delete(pod))) => {
                if let Some(task) = tasks.get(&pod.uid().unwrap_or_default()) {
                    let _ = task.tx.send(None);
                }
            }
            Some(Ok(Event::Init)) => listed.clear(),
            Some(Ok(Event::InitDone)) => {
                // A pod missing from a fresh list was deleted while the watch was down.
                for (uid, task) in &tasks {
                    if !listed.contains(uid) {
                        let _ = task.tx.send(None);
                    }
                }
            }
            Some(Err(err)) => tracing::warn!(error = %err, "watching this node's pods"),
            None => break,
        }
    }

    tracing::info!(pods = tasks.len(), "shutting down: stopping all containers");
    tasks_stop.cancel();
    let handles = tasks.into_values().map(|t| t.handle);
    if tokio::time::timeout(SHUTDOWN_WAIT, futures::future::join_all(handles))
        .await
        .is_err()
    {
        tracing::warn!("some pods did not stop within {SHUTDOWN_WAIT:?}");
    }
    for handle in background {
        let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
    }
    Ok(())
}

fn dispatch(
    ctx: &Arc<Context>,
    pod: Pod,
    tasks: &mut HashMap<String, Task>,
    done: &HashSet<String>,
    stop: &CancellationToken,
) {
    let uid = pod.uid().unwrap_or_default();
    if let Some(task) = tasks.get(&uid) {
        let _ = task.tx.send(Some(pod));
        return;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // Nothing of ours runs for it (finished, refused, or from an earlier run): the final
        // delete is all that is left, as kubelet does for terminated pods.
        tokio::spawn(finish_deletion(ctx.clone(), pod));
        return;
    }
    if done.contains(&uid) || is_terminal(&pod) {
        return;
    }
    let (tx, rx) = watch::channel(Some(pod));
    let handle = tokio::spawn(supervisor::run(ctx.clone(), rx, stop.child_token()));
    tasks.insert(uid, Task { tx, handle });
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

async fn finish_deletion(ctx: Arc<Context>, pod: Pod) {
    supervisor::stop_leftovers(&pod, &ctx.images);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(err) => tracing::warn!(pod = %pod.name_any(), error = %err, "final delete failed"),
    }
}

/// Pods bound to this node that are not finished belong to an earlier run whose processes
/// this run does not know: stop any that survived and mark the pods Failed with
/// [`RESTARTED_REASON`]. Adopting them instead would need the old processes' exit codes,
/// which only their (gone) parent could collect.
async fn clean_up_previous_run(ctx: &Context) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let list = pods
        .list(&params)
        .await
        .map_err(Error::api("list the pods of this node"))?;
    for pod in list.items.iter().filter(|p| !is_terminal(p)) {
        let uid = pod.uid().unwrap_or_default();
        // The address stays held while an old process might still be bound to it.
        if let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
        {
            ctx.ips().reserve(ip, &uid);
        }
        let stopped = supervisor::stop_leftovers(pod, &ctx.images);
        if pod.metadata.deletion_timestamp.is_some() {
            ctx.ips().release(&uid);
            continue; // the watch finishes its deletion
        }
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let status = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "status": {
                "phase": "Failed",
                "reason": RESTARTED_REASON,
                "message": "voice-node-agent restarted and stopped this pod's processes; its owner should replace it",
                "conditions": [
                    { "type": "Ready", "status": "False", "reason": RESTARTED_REASON },
                    { "type": "ContainersReady", "status": "False", "reason": RESTARTED_REASON },
                ],
            },
        });
        // Its own field manager, so the apply leaves the old run's podIP and container
        // statuses (owned by FIELD_MANAGER) in place for whoever looks at the failed pod.
        let manager = format!("{FIELD_MANAGER}-restart");
        let result = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&status),
            )
            .await;
        match result {
            Ok(_) => {
                tracing::info!(namespace = ?pod.namespace(), pod = %pod.name_any(), stopped, "pod of an earlier run marked Failed");
                ctx.ips().release(&uid);
            }
            Err(err) => {
                tracing::warn!(pod = %pod.name_any(), error = %err, "could not mark a pod of an earlier run Failed; keeping its address")
            }
        }
    }
    Ok(())
}
