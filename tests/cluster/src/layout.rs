//! Where things live: the Go module, the binary cache, the state directory.

use std::path::{Path, PathBuf};

/// Kubernetes version built by `go/go.mod`; the cache key and the version tests expect.
pub const KUBERNETES_VERSION: &str = "v1.36.3";

/// The workspace root, found from this crate's manifest dir (`tests/cluster`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The Go wrapper module that pins etcd and Kubernetes.
pub fn go_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go")
}

/// Cargo's target dir: `$CARGO_TARGET_DIR` (relative to the workspace root) or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Holds certificates, etcd data, logs, the state file and the kubeconfig of the running cluster.
pub fn state_dir() -> PathBuf {
    target_dir().join("voice-cluster")
}

/// The admin kubeconfig; other tools rely on exactly this path.
pub fn kubeconfig_path() -> PathBuf {
    state_dir().join("kubeconfig")
}

/// Lock serialising `up`/`down` across processes; outside the state dir so `down` can remove it.
pub fn lock_path() -> PathBuf {
    target_dir().join("voice-cluster.lock")
}

/// Root of the binary cache: `$VOICE_OPERATOR_CACHE`, else `$XDG_CACHE_HOME/voice-operator`,
/// else `~/.cache/voice-operator`; binaries go below `cluster/`.
pub fn cache_root() -> PathBuf {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = non_empty("VOICE_OPERATOR_CACHE")
        .or_else(|| non_empty("XDG_CACHE_HOME").map(|d| d.join("voice-operator")))
        .or_else(|| non_empty("HOME").map(|h| h.join(".cache/voice-operator")))
        .unwrap_or_else(|| std::env::temp_dir().join("voice-operator-cache"));
    base.join("cluster")
}
