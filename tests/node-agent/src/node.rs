//! The Node this agent plays: registered with labels, addresses and capacity, and kept Ready
//! by a status heartbeat.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::status::FIELD_MANAGER;

/// Label every node of this agent carries, so tests and the operator can select it.
pub const LOCAL_NODE_LABEL: &str = "voicebackends.dev/local-node";

/// How often the Ready condition's heartbeat is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Creates or updates the Node object and marks it Ready.
pub async fn register(client: &kube::Client, name: &str, ip: Ipv4Addr) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                LOCAL_NODE_LABEL: "true",
            },
        },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes
        .patch(name, &params, &Patch::Apply(&node))
        .await
        .map_err(Error::api(format!("register node {name}")))?;
    heartbeat(&nodes, name, ip, true).await
}

/// Writes the node status with a fresh heartbeat; `ready` false on the way out.
async fn heartbeat(nodes: &Api<Node>, name: &str, ip: Ipv4Addr, ready: bool) -> Result<(), Error> {
    let now = Timestamp::now().to_string();
    let (status, reason, message) = if ready {
        (
            "True",
            "KubeletReady",
            "voice-node-agent is posting ready status",
        )
    } else {
        ("False", "KubeletStopped", "voice-node-agent stopped")
    };
    let pods = crate::ip_pool::CAPACITY.to_string(); // one per loopback address of the pool
    let status = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "addresses": [
                { "type": "InternalIP", "address": ip.to_string() },
                { "type": "Hostname", "address": name },
            ],
            "capacity": { "cpu": "2", "memory": "4Gi", "pods": pods },
            "allocatable": { "cpu": "2", "memory": "4Gi", "pods": pods },
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "", "osImage": "voice-node-agent",
                "containerRuntimeVersion": "local-process://0",
                "kubeletVersion": "v1.36.3-voice-node-agent",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH,
            },
        },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes
        .patch_status(name, &params, &Patch::Apply(&status))
        .await
        .map(drop)
        .map_err(Error::api(format!("update the status of node {name}")))
}

/// Refreshes the heartbeat until `shutdown`, then reports the node not ready.
pub async fn keep_ready(
    client: kube::Client,
    name: String,
    ip: Ipv4Addr,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(err) = heartbeat(&nodes, &name, ip, true).await {
                    tracing::warn!(error = %err, "node heartbeat failed");
                }
            }
        }
    }
    if let Err(err) = heartbeat(&nodes, &name, ip, false).await {
        tracing::debug!(error = %err, "could not mark the node not ready on the way out");
    }
}
