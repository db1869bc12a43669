//! `cargo xtask crds`: filled by the CRD work.

/// Arguments of `cargo xtask crds`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the crds task.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask crds is not built yet")
}
