//! Command line of `voice-node-agent` and what it builds from it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};

use crate::Error;
use crate::context::Context;
use crate::images::{ImageMap, ImageRule};
use crate::ip_pool::IpPool;

/// Default node name; tests and the dev loop expect it.
pub const DEFAULT_NODE_NAME: &str = "voice-local-node";

/// `voice-node-agent [--node-name N] [--kubeconfig PATH] [--image REPO=PATH]... [--binary-dir DIR]`
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "voice-node-agent",
    version,
    about = "Plays the kubelet for one fake Node: runs pods as local processes on 127.0.0.x"
)]
pub struct Config {
    /// Name of the Node to register and run pods for.
    #[arg(long, default_value = DEFAULT_NODE_NAME)]
    pub node_name: String,

    /// Kubeconfig to use (also handed to containers, which have no service account here);
    /// without it the usual in-cluster/default lookup applies.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Extra image rule, tried before the defaults (`worker`/`voice-worker` → voice-worker,
    /// `operator`/`voice-operator` → voice-operator); repeatable.
    #[arg(long = "image", value_name = "REPO=PATH")]
    pub images: Vec<ImageRule>,

    /// Where the default rules find binaries: `<target>/debug` by default, with target
    /// `$CARGO_TARGET_DIR` or `<workspace>/target`.
    #[arg(long, value_name = "DIR")]
    pub binary_dir: Option<PathBuf>,

    /// Directory of container logs: `<target>/voice-node-agent/logs` by default.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Directory of pod volumes: `<target>/voice-node-agent/volumes` by default.
    #[arg(long, value_name = "DIR")]
    pub volume_dir: Option<PathBuf>,

    /// Do not bind unscheduled pods to this Node; run only pods already bound to it (a second
    /// agent beside the shared one, e.g. in a test, must not take the other's pods).
    #[arg(long)]
    pub no_scheduler: bool,

    /// The Node's address: its InternalIP, every pod's `status.hostIP`, and the address of its
    /// `hostNetwork` pods. An IPv4 address, or `lan` for this machine's own address (the
    /// source address of its default route), which makes `advertise: NodeIP` workers
    /// reachable from other machines (`cargo xtask dev --lan`).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_node_ip)]
    pub node_ip: Ipv4Addr,
}

/// `--node-ip`: an IPv4 address, or `lan`.
fn parse_node_ip(value: &str) -> Result<Ipv4Addr, String> {
    if value == "lan" {
        return lan_address();
    }
    value
        .parse()
        .map_err(|e| format!("{value:?} is not an IPv4 address nor `lan`: {e}"))
}

/// This machine's own IPv4 address towards its default route: connecting a UDP socket picks
/// the source address without sending anything.
pub fn lan_address() -> Result<Ipv4Addr, String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    // TEST-NET-3 (RFC 5737): any routed address will do; nothing is sent.
    socket.connect("203.0.113.1:9").map_err(|e| {
        format!("`lan`: this machine has no IPv4 default route ({e}); give --node-ip an address")
    })?;
    match socket.local_addr().map_err(|e| e.to_string())?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Ok(ip),
        other => Err(format!(
            "`lan`: the default route's source address is {other}; give --node-ip an address"
        )),
    }
}

/// Longest wait for the first list of Secrets, which secret volumes are made of.
const SECRETS_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Config {
    /// Connects to the API server and builds the shared context, including the watch that
    /// keeps its cache of Secrets current (it runs for the life of the process).
    pub async fn context(&self) -> Result<Arc<Context>, Error> {
        let client = self.client().await?;
        let secrets = watch_secrets(client.clone()).await?;
        let kubeconfig = self
            .kubeconfig
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        Ok(Arc::new(Context {
            client,
            node_name: self.node_name.clone(),
            images: ImageMap::new(
                self.binary_dir
                    .clone()
                    .unwrap_or_else(|| target_dir().join("debug")),
                self.images.clone(),
            ),
            ips: Mutex::new(IpPool::new()),
            log_dir: self
                .log_dir
                .clone()
                .unwrap_or_else(|| target_dir().join("voice-node-agent/logs")),
            volume_dir: self
                .volume_dir
                .clone()
                .unwrap_or_else(|| target_dir().join("voice-node-agent/volumes")),
            secrets,
            kubeconfig,
            schedules: !self.no_scheduler,
            node_ip: self.node_ip,
        }))
    }

    async fn client(&self) -> Result<kube::Client, Error> {
        let kube_error = |what: String| {
            move |e: Box<dyn std::error::Error + Send + Sync>| Error::Kubeconfig { what, source: e }
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let what = path.display().to_string();
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|e| kube_error(what.clone())(e.into()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| kube_error(what)(e.into()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| kube_error("default lookup".into())(e.into()))?,
        };
        kube::Client::try_from(config).map_err(|e| kube_error("client".into())(e.into()))
    }
}

/// Starts a reflector over every Secret and waits for its first list.
async fn watch_secrets(client: kube::Client) -> Result<Store<Secret>, Error> {
    let (reader, writer) = reflector::store();
    let api: Api<Secret> = Api::all(client);
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(err) = event {
                tracing::warn!(error = %err, "watching Secrets for pod volumes");
            }
        }
    });
    tokio::time::timeout(SECRETS_SYNC_TIMEOUT, reader.wait_until_ready())
        .await
        .map_err(|_| Error::Volume {
            volume: "*".into(),
            problem: format!(
                "the first list of Secrets did not arrive within {SECRETS_SYNC_TIMEOUT:?}; check the API server and the kubeconfig's rights"
            ),
        })?
        .map_err(|_| Error::Volume {
            volume: "*".into(),
            problem: "the Secret watch stopped before its first list".into(),
        })?;
    Ok(reader)
}

/// Cargo's target dir: `$CARGO_TARGET_DIR` (relative to the workspace root) or
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The workspace root, from this crate's place in it (`tests/node-agent`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ip_is_an_address_or_lan() {
        assert_eq!(parse_node_ip("192.0.2.7"), Ok(Ipv4Addr::new(192, 0, 2, 7)));
        let err = parse_node_ip("my-laptop").unwrap_err();
        assert!(err.contains("nor `lan`"), "{err}");
        // `lan` is never loopback: it is what makes NodeIP workers reachable from elsewhere.
        if let Ok(ip) = parse_node_ip("lan") {
            assert!(!ip.is_loopback(), "{ip}");
        }
    }
}
