//! Tools the suite and the demo need, installed idempotently on a fresh machine of this kind.

use std::process::Command;

use anyhow::{Context, bail};

/// Checks for Go (it builds the control plane) and installs missing Debian packages.
pub fn ensure() -> anyhow::Result<()> {
    if Command::new("go").arg("version").output().is_err() {
        bail!(
            "Go is not installed: install Go 1.26 or newer (apt-get install golang-go, or the Go toolchain) and retry"
        );
    }
    apt_install(DEBIAN_PACKAGES)?;
    crate::speech_models::ensure()?;
    crate::pipecat_venv::ensure()?;
    crate::livekit_venv::ensure()
}

/// Debian packages the workspace needs at build or test time: cmake and a C compiler build the
/// bundled libopus; python3-venv holds aiortc, the independent WebRTC peer of the interop tests.
const DEBIAN_PACKAGES: &[&str] = &[
    "cmake",
    "build-essential",
    "python3-venv",
    "pocketsphinx",
    "pocketsphinx-en-us",
    "espeak-ng",
    "libpocketsphinx-dev",
    "libespeak-ng-dev",
    "sox",
    "prometheus", // real Prometheus and promtool for the chart's alert rules and the scrape tests
    "chromium",   // the headless browser of the worker's demo-page test
    "coturn",     // the real TURN server of the relay test (worker/tests/turn_relay.rs)
    "iptables", // the 1:1 NAT (DNAT) of the explicit-address test (worker/tests/explicit_address.rs)
    "iproute2", // `ip`: the host address of the LiveKit tests (tests/src/livekit/address.rs)
];

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> installing Debian packages: {}", missing.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut full: Vec<&str> = sudo.to_vec();
        full.extend_from_slice(args);
        let status = Command::new(full[0])
            .args(&full[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running {}", full.join(" ")))?;
        if !status.success() {
            bail!(
                "`{}` failed; install {} by hand and retry",
                full.join(" "),
                missing.join(" ")
            );
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    run(&install)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
