//! What every part of the agent shares: the client, the node, the image map, the address pool.

use std::path::PathBuf;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;

use crate::images::ImageMap;
use crate::ip_pool::IpPool;

/// Annotation the agent sets on each running pod: JSON
/// `{"<container>": {"pid": …, "start": …, "log": …}}` (`start`: the process's start time in
/// clock ticks after boot, so a recycled pid is never taken for the container),
/// so tests and people can find a container's process and log, and a restarted agent can stop
/// processes an earlier run left behind.
pub const PROCESSES_ANNOTATION: &str = "node-agent.voicebackends.dev/processes";

/// Shared, read-mostly state of one agent.
pub struct Context {
    /// Client for the API server.
    pub client: kube::Client,
    /// The Node this agent plays.
    pub node_name: String,
    /// Image → binary rules.
    pub images: ImageMap,
    /// Loopback addresses of pods.
    pub ips: Mutex<IpPool>,
    /// Directory of container logs.
    pub log_dir: PathBuf,
    /// Directory of pod volumes, one subdirectory per pod uid.
    pub volume_dir: PathBuf,
    /// Every Secret of the cluster, kept current by a watch: what secret volumes are made of.
    pub secrets: Store<Secret>,
    /// Handed to containers as `KUBECONFIG`: there is no in-cluster service account here, so a
    /// pod that talks to the API (the operator) uses the agent's kubeconfig instead.
    pub kubeconfig: Option<PathBuf>,
    /// Whether this agent binds unscheduled pods to its Node (see [`crate::binding`]).
    pub schedules: bool,
    /// The Node's address (`--node-ip`): InternalIP, `status.hostIP`, and the address of
    /// `hostNetwork` pods.
    pub node_ip: std::net::Ipv4Addr,
}

impl Context {
    /// The IP pool; a poisoned lock only means another task panicked mid-update of a map that
    /// stays consistent, so it is used anyway.
    pub fn ips(&self) -> std::sync::MutexGuard<'_, IpPool> {
        self.ips.lock().unwrap_or_else(|e| e.into_inner())
    }
}
