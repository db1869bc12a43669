//! One pod on this node: its address, its containers, its status, its end (completion,
//! deletion with grace, or agent shutdown). One task per pod, the only writer of its status.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use rustix::process::Signal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::container::Container;
use crate::context::{Context, PROCESSES_ANNOTATION};
use crate::runtime;
use crate::status::{self, Conditions, ContainerView, PodView, Writer};
use crate::volumes;

/// How often containers are checked; probes run on their own periods within these rounds.
const TICK: Duration = Duration::from_millis(200);

/// Grace given to processes when the agent itself stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often secret volumes are brought up to date with their Secrets.
const VOLUME_SYNC: Duration = Duration::from_secs(1);

/// Upper bound on any grace period, so a pod asking for hours cannot hold a test run.
const MAX_GRACE: Duration = Duration::from_secs(60);

/// Runs `pod_rx`'s pod until it ends. `pod_rx` carries the latest object from the watch, or
/// `None` once the object is gone from the API.
pub async fn run(
    ctx: Arc<Context>,
    mut pod_rx: watch::Receiver<Option<Pod>>,
    shutdown: CancellationToken,
) {
    let Some(pod) = pod_rx.borrow_and_update().clone() else {
        return;
    };
    let uid = pod.uid().unwrap_or_default();
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let span = tracing::info_span!("pod", namespace = %namespace, pod = %name);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut pod_state = PodRun {
        ctx: ctx.clone(),
        api: api.clone(),
        writer: Writer::new(api, name.clone()),
        conditions: Conditions::default(),
        view: PodView {
            pod_ip: None,
            host_ip: ctx.node_ip,
            start_time: Timestamp::now(),
            containers: Vec::new(),
            failure: None,
        },
        containers: Vec::new(),
        pod,
        annotated: None,
        volumes_synced: None,
    };
    tracing::Instrument::instrument(pod_state.run(&mut pod_rx, shutdown), span).await;
    ctx.ips().release(&uid);
    volumes::remove(&volumes::pod_dir(&ctx.volume_dir, &uid));
}

struct PodRun {
    ctx: Arc<Context>,
    api: Api<Pod>,
    writer: Writer,
    conditions: Conditions,
    view: PodView,
    containers: Vec<Container>,
    pod: Pod,
    annotated: Option<serde_json::Value>,
    volumes_synced: Option<Instant>,
}

impl PodRun {
    async fn run(
        &mut self,
        pod_rx: &mut watch::Receiver<Option<Pod>>,
        shutdown: CancellationToken,
    ) {
        // A hostNetwork pod shares the node's address, as under a real kubelet.
        let host_network = self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let allocated = if host_network {
            Ok(self.ctx.node_ip)
        } else {
            self.ctx.ips().allocate(&self.pod.uid().unwrap_or_default())
        };
        let pod_ip = match allocated {
            Ok(ip) => ip,
            Err(err) => {
                self.view.failure = Some((err.reason().to_owned(), err.to_string()));
                self.write_status().await;
                return;
            }
        };
        self.view.pod_ip = Some(pod_ip);
        if !self.prepare_containers() {
            tracing::warn!(reason = ?self.view.failure, "pod refused");
            self.write_status().await;
            return;
        }
        tracing::info!(%pod_ip, "pod accepted");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.terminate(Instant::now() + SHUTDOWN_GRACE, &shutdown).await;
                    return;
                }
                changed = pod_rx.changed() => {
                    let latest = if changed.is_ok() { pod_rx.borrow_and_update().clone() } else { None };
                    match latest {
                        Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                            self.pod = pod;
                            self.delete(pod_ip, &shutdown).await;
                            return;
                        }
                        Some(pod) => self.pod = pod,
                        None => {
                            tracing::info!("pod object is gone: stopping its containers");
                            let grace = self.grace();
                            self.terminate(Instant::now() + grace, &shutdown).await;
                            return;
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.round(pod_ip).await {
                        return;
                    }
                }
            }
        }
    }

    /// Maps every container's image; when one has no binary the pod fails as a whole and
    /// nothing starts.
    fn prepare_containers(&mut self) -> bool {
        let specs = self
            .pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let namespace = self.pod.namespace().unwrap_or_default();
        let name = self.pod.name_any();
        let mut refused: Option<(String, String)> = None;
        for spec in &specs {
            match self
                .ctx
                .images
                .resolve(spec.image.as_deref().unwrap_or_default())
            {
                Ok(binary) => {
                    let log = runtime::log_path(&self.ctx.log_dir, &namespace, &name, &spec.name);
                    self.containers
                        .push(Container::new(spec.clone(), binary, log));
                }
                Err(err) => {
                    refused.get_or_insert((err.reason().to_owned(), err.to_string()));
                }
            }
        }
        let Some((reason, message)) = refused else {
            return true;
        };
        self.view.containers = specs
            .iter()
            .map(|spec| {
                match self
                    .ctx
                    .images
                    .resolve(spec.image.as_deref().unwrap_or_default())
                {
                    Err(err) => Container::refused(spec, err.reason(), err.to_string()),
                    Ok(_) => Container::refused(
                        spec,
                        "PodRefused",
                        format!("another container of the pod: {message}"),
                    ),
                }
            })
            .collect();
        self.containers.clear();
        self.view.failure = Some((reason, message));
        false
    }

    /// One supervision round; returns true when the pod reached a terminal phase.
    async fn round(&mut self, pod_ip: Ipv4Addr) -> bool {
        self.refresh_volumes();
        let mut started = false;
        for container in &mut self.containers {
            started |= container.step(&self.ctx, &self.pod, pod_ip).await.started;
        }
        if started {
            self.annotate().await;
        }
        self.write_status().await;
        if self.view.is_terminal() {
            tracing::info!(phase = self.view.phase(), "pod finished");
            return true;
        }
        false
    }

    /// Brings secret volumes up to date about once a second (kubelet syncs them periodically
    /// too); a failure keeps the files as they were and is retried.
    fn refresh_volumes(&mut self) {
        let now = Instant::now();
        if self.volumes_synced.is_some_and(|at| now < at + VOLUME_SYNC) {
            return;
        }
        self.volumes_synced = Some(now);
        let has_volumes = self.pod.spec.as_ref().is_some_and(|s| s.volumes.is_some());
        if !has_volumes {
            return;
        }
        let dir = volumes::pod_dir(&self.ctx.volume_dir, &self.pod.uid().unwrap_or_default());
        match volumes::sync(&self.ctx.secrets, &self.pod, &dir) {
            Ok(0) => {}
            Ok(changed) => tracing::info!(changed, "volume files updated"),
            Err(err) => tracing::warn!(error = %err, "volumes not refreshed"),
        }
    }

    async fn write_status(&mut self) {
        if !self.containers.is_empty() {
            self.view.containers = self
                .containers
                .iter()
                .map(|c| c.view().clone())
                .collect::<Vec<ContainerView>>();
        }
        let status = status::build(&self.view, &mut self.conditions, Timestamp::now());
        if let Err(err) = self.writer.write(status).await {
            tracing::warn!(error = %err, "status not written; retrying next round");
        }
    }

    /// Records pids and log paths in the pod's annotation.
    async fn annotate(&mut self) {
        let info: serde_json::Map<String, serde_json::Value> = self
            .containers
            .iter()
            .filter_map(|c| c.process_info().map(|i| (c.view().name.clone(), i)))
            .collect();
        let value = serde_json::Value::Object(info);
        if self.annotated.as_ref() == Some(&value) {
            return;
        }
        let patch = serde_json::json!({
            "metadata": { "annotations": { PROCESSES_ANNOTATION: value.to_string() } }
        });
        match self
            .api
            .patch_metadata(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.annotated = Some(value),
            Err(err) => tracing::warn!(error = %err, "could not record the container pids"),
        }
    }

    /// The pod's grace period: deletionGracePeriodSeconds, else terminationGracePeriodSeconds,
    /// else 30 s, capped at [`MAX_GRACE`].
    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(MAX_GRACE)
    }

    /// Graceful deletion as kubelet does it: preStop hooks, SIGTERM, SIGKILL after the grace
    /// period, then the final delete with grace 0 that removes the object. An agent shutdown
    /// meanwhile cuts the hooks short and the grace to [`SHUTDOWN_GRACE`]: a worker draining
    /// for minutes must not outlive the agent (and `cargo xtask dev`'s Ctrl-C).
    async fn delete(&mut self, pod_ip: Ipv4Addr, shutdown: &CancellationToken) {
        let grace = self.grace();
        tracing::info!(?grace, "pod is being deleted: stopping its containers");
        let deadline = Instant::now() + grace;
        tokio::select! {
            _ = join_all(self.containers.iter().map(|c| c.pre_stop(pod_ip, grace))) => {}
            () = shutdown.cancelled() => tracing::info!("agent stopping: preStop hooks cut short"),
        }
        self.terminate(deadline, shutdown).await;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.pod.name_any(), &params).await {
            Ok(_) => tracing::info!("pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(err) => {
                tracing::warn!(error = %err, "final delete failed; the pod object may linger")
            }
        }
    }

    /// SIGTERM to every process group, SIGKILL to those left at `deadline`, or
    /// [`SHUTDOWN_GRACE`] after `shutdown` if that comes first.
    async fn terminate(&mut self, mut deadline: Instant, shutdown: &CancellationToken) {
        for c in &self.containers {
            c.signal(Signal::TERM);
        }
        let mut killed = false;
        let mut shortened = false;
        loop {
            if !shortened && shutdown.is_cancelled() {
                deadline = deadline.min(Instant::now() + SHUTDOWN_GRACE);
                shortened = true;
            }
            let mut running = false;
            for c in &mut self.containers {
                running |= c.reap();
            }
            if !running {
                return;
            }
            let now = Instant::now();
            if now >= deadline && !killed {
                tracing::info!("grace period over: SIGKILL");
                for c in &self.containers {
                    c.signal(Signal::KILL);
                }
                killed = true;
            } else if killed && now >= deadline + Duration::from_secs(5) {
                tracing::warn!("processes survived SIGKILL for 5 s; giving up on them");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops processes an earlier run of the agent left for `pod` (their pids are in its
/// annotation); returns how many were signalled.
pub fn stop_leftovers(pod: &Pod, images: &crate::images::ImageMap) -> usize {
    let Some(raw) = pod.annotations().get(PROCESSES_ANNOTATION) else {
        return 0;
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(raw) else {
        return 0;
    };
    let mut stopped = 0;
    for info in map.values() {
        let Some(pid) = info["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else {
            continue;
        };
        // Only the very process the annotation recorded is ours: same pid and same start
        // time. A recycled pid (any `sh` can be a group leader running a mapped binary,
        // such as the shell that runs these tests) is never signalled; an annotation
        // without a start time cannot tell, so nothing is.
        let recorded = info["start"].as_u64();
        if recorded.is_some()
            && recorded == runtime::start_time(pid)
            && runtime::is_group_leader_alive(pid)
            && runtime::runs_one_of(pid, images)
        {
            runtime::signal_group(pid, Signal::KILL);
            stopped += 1;
        }
    }
    stopped
}
