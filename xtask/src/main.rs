//! `cargo xtask …`: developer tasks for voice-operator.

mod cluster;
mod crds;
mod dev;
mod dev_lan;
mod fuzz;
mod livekit_venv;
mod node_agent;
mod pipecat_venv;
mod prerequisites;
mod speech_models;
mod test;

use std::process::Command;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for voice-operator")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Local control plane (etcd, kube-apiserver, kube-controller-manager) built from Go modules.
    Cluster(cluster::Args),
    /// Regenerate the CRD manifests from the Rust types (`--check` fails on drift instead).
    Crds(crds::Args),
    /// The local embedded default: control plane, CRDs and the examples.
    Dev(dev::Args),
    /// Fuzz the parsers of network input with libFuzzer (installs cargo-fuzz if needed).
    Fuzz(fuzz::Args),
    /// Run the local node agent (plays the kubelet for one fake Node) in the foreground.
    NodeAgent(node_agent::Args),
    /// The whole test suite, as CI runs it (installs what it needs).
    Test(test::Args),
}

/// The `cargo` that runs xtask, without the variables `cargo run` set for xtask itself.
///
/// Build scripts rerun when a variable they watch changes, and ring's watches
/// `CARGO_MANIFEST_DIR`: a build started from here with xtask's value would rebuild ring, and
/// with it rustls, kube and everything above, each time it alternates with a build without
/// it (the `cargo run -p xtask` that starts every task, or a `cargo test` from a shell).
pub fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let set_by_cargo_run = name.to_str().is_some_and(|n| {
            n.starts_with("CARGO_PKG_")
                || n.starts_with("CARGO_MANIFEST_")
                || matches!(
                    n,
                    "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
                )
        });
        if set_by_cargo_run {
            command.env_remove(name);
        }
    }
    command
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Cluster(args) => cluster::run(args),
        Task::Crds(args) => crds::run(args),
        Task::Dev(args) => dev::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::NodeAgent(args) => node_agent::run(args),
        Task::Test(args) => test::run(args),
    }
}
