//! `cargo xtask cluster up|down`: filled by the local-control-plane work.

/// Arguments of `cargo xtask cluster`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the cluster task.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask cluster is not built yet")
}
