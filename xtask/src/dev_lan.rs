//! `cargo xtask dev --lan`: the demo assistant reachable from other machines on the LAN.
//!
//! Pods of the local node agent live on 127.0.0.x, which only this machine reaches. With
//! `--lan` the node agent's Node takes this machine's LAN address (`--node-ip`), and the
//! example `assistant` backend runs as a Kubernetes user would expose it on a node with a
//! public address: `advertise: NodeIP` (host networking, so its HTTP and media ports are the
//! LAN address's), and HTTPS signaling from a `kubernetes.io/tls` Secret, because a browser
//! grants the microphone to a page from another machine only over HTTPS. The certificate is
//! self-signed for the LAN address, so each browser asks once whether to trust it.
//!
//! A later run without `--lan` takes the changes back (`release`), so the examples run as
//! `examples/` says.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The node agent's Node (its default `--node-name`).
pub const NODE: &str = "voice-local-node";
/// Field manager of every change `--lan` makes.
const FIELD_MANAGER: &str = "xtask-dev-lan";
/// The Secret holding the assistant's signaling certificate.
const TLS_SECRET: &str = "assistant-signaling-tls";

/// The Node's InternalIP once the node agent has registered it with `--node-ip`.
pub fn node_address(cluster: &voice_cluster::Cluster, node: &str) -> anyhow::Result<Ipv4Addr> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cluster
            .kubectl()
            .args([
                "get",
                "node",
                node,
                "-o",
                r#"jsonpath={.status.addresses[?(@.type=="InternalIP")].address}"#,
            ])
            .output()
            .context("running kubectl")?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match text.parse::<Ipv4Addr>() {
            Ok(ip) if !ip.is_loopback() => return Ok(ip),
            _ if Instant::now() > deadline => {
                bail!("node {node} has no LAN InternalIP after 60 s (it says {text:?})")
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Exposes the example `assistant` on `address`: a certificate for it, host networking
/// allowed on the provider, and the backend on NodeIP with HTTPS signaling.
pub fn expose(cluster: &voice_cluster::Cluster, address: Ipv4Addr) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let mut params = rcgen::CertificateParams::new(vec![address.to_string()])
        .context("certificate parameters")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "voice-operator local demo");
    let cert = params.self_signed(&key).context("self-signing")?;
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TLS_SECRET, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
    });
    apply(cluster, &secret)?;
    patch(cluster, PROVIDER, &serde_json::json!(true))?;
    patch(
        cluster,
        BACKEND,
        &serde_json::json!({"advertise": "NodeIP", "tls": {"secretName": TLS_SECRET}}),
    )
}

/// Takes back what an earlier `--lan` run changed, so the examples run as written (the API
/// server's defaults return: `allowHostNetwork: false`, `advertise: PodIP`, no TLS).
pub fn release(cluster: &voice_cluster::Cluster) -> anyhow::Result<()> {
    patch(
        cluster,
        BACKEND,
        &serde_json::json!({"advertise": null, "tls": null}),
    )?;
    patch(cluster, PROVIDER, &serde_json::Value::Null)
}

/// One object `--lan` changes: its kubectl arguments and where in its spec the change goes.
struct Target {
    args: &'static [&'static str],
    path: &'static [&'static str],
}

/// The example provider's `spec.worker.allowHostNetwork` (NodeIP needs it).
const PROVIDER: Target = Target {
    args: &["voiceprovider", "voice-operator"],
    path: &["worker", "allowHostNetwork"],
};
/// The example assistant's `spec.workers.network`, merged.
const BACKEND: Target = Target {
    args: &["voicebackend", "assistant", "-n", "default"],
    path: &["workers", "network"],
};

/// A JSON merge patch of `value` at the target's path (null removes), under
/// [`FIELD_MANAGER`]. A merge patch rather than a server-side apply: the examples were applied
/// client-side, and kubectl would try (and fail) to migrate their managers.
fn patch(
    cluster: &voice_cluster::Cluster,
    target: Target,
    value: &serde_json::Value,
) -> anyhow::Result<()> {
    let body = target.path.iter().rev().fold(
        value.clone(),
        |inner, key| serde_json::json!({ *key: inner }),
    );
    let body = serde_json::json!({ "spec": body }).to_string();
    let status = cluster
        .kubectl()
        .arg("patch")
        .args(target.args)
        .args([
            "--type=merge",
            &format!("--field-manager={FIELD_MANAGER}"),
            "-p",
            &body,
        ])
        .stdout(Stdio::null())
        .status()
        .context("running kubectl patch")?;
    if !status.success() {
        bail!("kubectl patch {} failed", target.args.join(" "));
    }
    Ok(())
}

/// `kubectl apply --server-side` of one object under [`FIELD_MANAGER`].
fn apply(cluster: &voice_cluster::Cluster, object: &serde_json::Value) -> anyhow::Result<()> {
    let mut child = cluster
        .kubectl()
        .args([
            "apply",
            "--server-side",
            &format!("--field-manager={FIELD_MANAGER}"),
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(object.to_string().as_bytes())?;
    if !child.wait()?.success() {
        bail!(
            "kubectl apply of {} {} failed",
            object["kind"],
            object["metadata"]["name"]
        );
    }
    Ok(())
}
