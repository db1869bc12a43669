//! `cargo xtask dev`: the local embedded default for a newcomer.
//!
//! Brings up the local control plane, installs the CRDs and applies the examples. Later work
//! adds the operator, the node agent and the demo page to this same command.

use std::path::Path;

use anyhow::{Context, bail};

use crate::prerequisites;

/// Arguments of `cargo xtask dev`.
#[derive(clap::Args)]
pub struct Args {}

/// Starts (or reuses) everything and prints where to look.
pub fn run(_args: Args) -> anyhow::Result<()> {
    prerequisites::ensure()?;
    eprintln!("==> local control plane (first run builds it from Go modules: a few minutes)");
    let cluster = voice_cluster::up().context("starting the local control plane")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace");

    eprintln!("==> installing the CRDs");
    kubectl(
        &cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &root.join("crds/manifests").display().to_string(),
        ],
    )?;
    kubectl(
        &cluster,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/voiceproviders.voicebackends.dev",
            "crd/voicebackends.voicebackends.dev",
            "crd/voicesessions.voicebackends.dev",
        ],
    )?;
    eprintln!("==> applying examples/");
    kubectl(
        &cluster,
        &["apply", "-f", &root.join("examples").display().to_string()],
    )?;
    kubectl(&cluster, &["get", "voice"])?;

    let kubectl_path = cluster.kubectl_path();
    println!(
        "\nThe local cluster is up with the voice-operator API and the examples.\n\n  export KUBECONFIG={}\n  alias kubectl={}   # a v1.36 client that matches the server\n  kubectl get voice -A\n  kubectl explain voicebackend.spec.pipeline\n\nStop it with `cargo xtask cluster down`.",
        cluster.kubeconfig().display(),
        kubectl_path.display(),
    );
    Ok(())
}

fn kubectl(cluster: &voice_cluster::Cluster, args: &[&str]) -> anyhow::Result<()> {
    let status = cluster
        .kubectl()
        .args(args)
        .status()
        .context("running kubectl")?;
    if !status.success() {
        bail!("`kubectl {}` failed", args.join(" "));
    }
    Ok(())
}
