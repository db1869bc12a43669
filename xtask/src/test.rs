//! `cargo xtask test`: the whole test suite, as CI runs it, on a fresh machine of this kind.
//!
//! It installs what the suite needs (idempotently), builds or reuses the local control plane,
//! then runs the static checks and every test of the workspace against the real API server.

use std::process::Command;

use anyhow::{Context, bail};

use crate::prerequisites;

/// Arguments of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy (quicker local iterations).
    #[arg(long)]
    no_lint: bool,
    /// Leave the local cluster running afterwards (it is stopped by default when this run started it).
    #[arg(long)]
    keep_cluster: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

/// Runs every check and test.
pub fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    prerequisites::ensure()?;
    warn_if_disk_is_short();

    step("CRD manifests match the Rust types");
    cargo(&["run", "--quiet", "-p", "xtask", "--", "crds", "--check"])?;
    if !args.no_lint {
        step("cargo fmt --check");
        cargo(&["fmt", "--all", "--check"])?;
        step("cargo clippy -D warnings");
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ])?;
    }

    step("local control plane (etcd, kube-apiserver, kube-controller-manager)");
    let was_running = voice_cluster::status()
        .map(|s| s.ready.is_some())
        .unwrap_or(false);
    let cluster = voice_cluster::up().context("starting the local control plane")?;
    eprintln!("   KUBECONFIG={}", cluster.kubeconfig().display());

    // Built here, not in the first test that needs it: a cold build takes minutes of a test's
    // time limit.
    step("livekit-server for the livekit provider's tests (built once, then cached)");
    voice_cluster::livekit_server().map_err(anyhow::Error::msg)?;

    step("cargo build --workspace --bins (the node agent runs these binaries for pods)");
    cargo(&["build", "--workspace", "--bins"])?;
    step("cargo test --workspace");
    let mut test_args = vec!["test", "--workspace", "--no-fail-fast"];
    if !args.cargo_test_args.is_empty() {
        test_args.push("--");
        test_args.extend(args.cargo_test_args.iter().map(String::as_str));
    }
    let result = cargo(&test_args);

    if !args.keep_cluster && !was_running {
        step("stopping the local control plane");
        crate::node_agent::stop_shared().context("stopping the shared node agent")?;
        voice_cluster::down().context("stopping the local control plane")?;
    }
    result?;
    eprintln!("\nall checks and tests passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Free space a cold build of the suite needs in the target directory, with some margin
/// (a fresh clone measured about 6 GiB of `target/` after a full run).
const DISK_NEEDED_GIB: u64 = 10;

/// Says so up front when the disk is too full for a cold build, instead of letting rustc
/// die halfway with "No space left on device".
fn warn_if_disk_is_short() {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| ".".into());
    let Some(free_gib) = free_gib(&target) else {
        return;
    };
    if free_gib < DISK_NEEDED_GIB {
        eprintln!(
            "\nwarning: only {free_gib} GiB free under {target}; a cold build of the suite needs \
             about {DISK_NEEDED_GIB} GiB. Free some space (`cargo clean` in old checkouts) if the \
             build stops with \"No space left on device\"."
        );
    }
}

/// Free space in GiB of the file system holding `path`, read from POSIX `df`.
fn free_gib(path: &str) -> Option<u64> {
    let out = Command::new("df").args(["-Pk", path]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let available_kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(available_kib / (1024 * 1024))
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = crate::cargo_command()
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
