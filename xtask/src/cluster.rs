//! `cargo xtask cluster up|down|status|kubectl`: the local control plane of the dev loop.

use std::process::Command;

use anyhow::Context;

/// Arguments of `cargo xtask cluster`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Start etcd, kube-apiserver and kube-controller-manager on loopback (or reuse running ones)
    /// and print the `export KUBECONFIG=…` line to use them.
    Up,
    /// Stop the local control plane (and the tests' shared node agent) and remove its state
    /// (certificates, etcd data, logs).
    Down,
    /// Show whether the local control plane runs, its processes and their logs.
    Status,
    /// Run the kubectl that matches the server's version against the local control plane.
    Kubectl {
        /// Arguments passed to kubectl, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs the cluster task.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Up => {
            let cluster = voice_cluster::up()?;
            eprintln!(
                "local control plane {} is up at {}",
                voice_cluster::KUBERNETES_VERSION,
                cluster.server()
            );
            eprintln!("kubectl of the same version: cargo xtask cluster kubectl -- get ns");
            println!("export KUBECONFIG={}", cluster.kubeconfig().display());
            Ok(())
        }
        Cmd::Down => {
            // The tests' shared node agent would otherwise keep retrying a dead apiserver.
            if crate::node_agent::stop_shared()? {
                eprintln!("node agent stopped");
            }
            voice_cluster::down()?;
            eprintln!("local control plane stopped");
            Ok(())
        }
        Cmd::Status => {
            let status = voice_cluster::status()?;
            print!("{status}");
            if status.ready.is_none() {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Kubectl { args } => {
            // The cached binaries, not `up`: kubectl against a stopped cluster should say so itself.
            let bins = voice_cluster::binaries::ensure()?;
            let status = Command::new(bins.kubectl())
                .env("KUBECONFIG", voice_cluster::kubeconfig_path())
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bins.kubectl().display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}
