//! The voice-operator CRDs, installed once per test process.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::kubectl_ok;

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Directory of the generated CRD manifests (`cargo xtask crds` writes them).
pub fn crds_dir() -> PathBuf {
    voice_cluster::layout::workspace_root().join("charts/voice-operator/crds")
}

/// Applies the CRDs from [`crds_dir`] (server-side, so re-applying after a schema change
/// updates them) and waits until they are established. Runs once per test process.
pub fn install_crds() {
    INSTALLED.get_or_init(|| {
        let dir = crds_dir();
        let dir = dir.to_str().expect("workspace path is UTF-8");
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=voice-tests",
            "-f",
            dir,
        ]);
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            dir,
        ]);
    });
}
