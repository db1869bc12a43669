//! `cargo xtask …`: developer tasks for voice-operator.

mod cluster;
mod crds;
mod dev;
mod dev_lan;
mod fuzz;
mod node_agent;
mod prerequisites;
mod speech_models;
mod test;

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
