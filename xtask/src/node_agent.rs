//! `cargo xtask node-agent [args]`: the local node agent in the foreground, and stopping the
//! shared one the tests start.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Arguments of `cargo xtask node-agent`: passed on to `voice-node-agent`.
#[derive(clap::Args)]
pub struct Args {
    /// Arguments for voice-node-agent (`--node-name`, `--image REPO=PATH`, `--binary-dir`…).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Runs `cargo run -p voice-node-agent` against `$KUBECONFIG`, or the local cluster's
/// kubeconfig when it is unset; returns when the agent exits (Ctrl-C stops it cleanly).
pub fn run(args: Args) -> anyhow::Result<()> {
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| voice_cluster::kubeconfig_path().into_os_string());
    eprintln!(
        "voice-node-agent against {} (images map to target/debug binaries: build them with `cargo build --workspace --bins`)",
        Path::new(&kubeconfig).display()
    );
    let status = crate::cargo_command()
        .args([
            "run",
            "--quiet",
            "-p",
            "voice-node-agent",
            "--bin",
            "voice-node-agent",
            "--",
        ])
        .args(&args.args)
        .env("KUBECONFIG", &kubeconfig)
        .status()
        .context("running cargo run -p voice-node-agent")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Stops the node agent the tests share (recorded in `<target>/voice-node-agent/agent.pid`
/// by `voice_tests::node_agent()`): SIGTERM, so it stops its pods' processes, then SIGKILL
/// after 15 s. Returns whether one was running.
pub fn stop_shared() -> anyhow::Result<bool> {
    let pid_file = voice_cluster::layout::target_dir().join("voice-node-agent/agent.pid");
    let Ok(record) = std::fs::read_to_string(&pid_file) else {
        return Ok(false);
    };
    let mut lines = record.lines();
    let pid = lines.next().unwrap_or_default().to_owned();
    let binary = lines.nth(1).unwrap_or_default();
    // Only signal the pid while it still runs the recorded binary, never a process that reused it.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let running =
        !binary.is_empty() && cmdline.split(|b| *b == 0).next() == Some(binary.as_bytes());
    if running {
        kill("-TERM", &pid)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(&pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(&pid) {
            kill("-KILL", &pid)?;
        }
    }
    std::fs::remove_file(&pid_file).with_context(|| format!("removing {}", pid_file.display()))?;
    Ok(running)
}

fn kill(signal: &str, pid: &str) -> anyhow::Result<()> {
    Command::new("kill")
        .args([signal, pid])
        .status()
        .with_context(|| format!("running kill {signal} {pid}"))?;
    Ok(())
}

/// Running and not a zombie.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|zombie| !zombie)
}
