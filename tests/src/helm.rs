//! Helm, built from its pinned Go module (`tests/helm/go`) once and cached like the control
//! plane: `~/.cache/voice-operator/helm/helm-<version>-<hash of go.mod+go.sum>/helm`.
//!
//! A separate Go module from `tests/cluster/go`, so pinning another Helm never changes the
//! control plane's cache key (and never rebuilds Kubernetes).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use crate::cluster;

/// Helm version pinned by `tests/helm/go/go.mod`.
pub const HELM_VERSION: &str = "v3.22.0";

/// The client-go minor version Helm is built against (its go.sum pins k8s.io/client-go
/// v0.37), stamped into Helm as its default Kubernetes version, as Helm's own Makefile does.
const K8S_MINOR: &str = "37";

static HELM: OnceLock<PathBuf> = OnceLock::new();

/// The chart's directory in the workspace.
pub fn chart_dir() -> PathBuf {
    voice_cluster::layout::workspace_root().join("charts/voice-operator")
}

/// The helm binary, built on first use (about a minute on 2 cores with a warm Go module
/// cache; then reused from the cache by every test binary).
pub fn helm_binary() -> &'static Path {
    HELM.get_or_init(|| ensure().unwrap_or_else(|e| panic!("building helm: {e}")))
}

/// A helm command pointed at the local control plane, with its state kept under `target/`.
pub fn helm() -> Command {
    let mut cmd = Command::new(helm_binary());
    let home = voice_cluster::layout::target_dir().join("voice-helm");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null());
    cmd
}

/// Runs helm with `args` (no cluster needed: lint, template) and returns what it did.
pub fn helm_run(args: &[&str]) -> Output {
    helm()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running helm {args:?}: {e}"))
}

/// Runs helm with `args` against the local control plane and returns what it did.
pub fn helm_on_cluster(args: &[&str]) -> Output {
    helm()
        .env("KUBECONFIG", cluster().kubeconfig())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running helm {args:?}: {e}"))
}

/// Stdout of a helm run that must succeed; panics with both streams otherwise.
pub fn helm_ok(output: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "helm {what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn ensure() -> Result<PathBuf, String> {
    let module = voice_cluster::layout::workspace_root().join("tests/helm/go");
    let base = voice_cluster::layout::cache_root()
        .parent()
        .map(|p| p.join("helm"))
        .ok_or("the cache root has no parent")?;
    let dir = base.join(format!("helm-{HELM_VERSION}-{}", module_digest(&module)?));
    let binary = dir.join("helm");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Test binaries running at once build it once: the others wait here, then reuse it.
    let lock_path = dir.join("build.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if binary.is_file() {
        return Ok(binary);
    }
    let partial = dir.join(format!("helm.partial-{}", std::process::id()));
    eprintln!(
        "building helm {HELM_VERSION} from its Go module (about 1 min on 2 cores; cached in {})…",
        dir.display()
    );
    let started = Instant::now();
    let ldflags = [
        format!("-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"),
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean".to_owned(),
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1".to_owned(),
        format!("-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={K8S_MINOR}"),
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1".to_owned(),
        format!("-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={K8S_MINOR}"),
    ]
    .join(" ");
    let out = Command::new("go")
        .current_dir(&module)
        // Never let go fetch a toolchain (no downloads here).
        .env("GOTOOLCHAIN", "local")
        .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&partial)
        .arg("helm.sh/helm/v3/cmd/helm")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running go build in {}: {e}", module.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "go build of helm failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&partial, &binary)
        .map_err(|e| format!("renaming {}: {e}", partial.display()))?;
    eprintln!("built helm in {} s", started.elapsed().as_secs());
    Ok(binary)
}

/// 16 hex digits of FNV-1a over go.mod ‖ go.sum: a new pin gets a new cache directory.
fn module_digest(module: &Path) -> Result<String, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in ["go.mod", "go.sum"] {
        let path = module.join(file);
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

/// Prometheus Operator release whose Go module ships the `monitoring.coreos.com` CRD YAML
/// (`example/prometheus-operator-crd/`); the module proxy serves this version.
pub const PROMETHEUS_OPERATOR_VERSION: &str = "v0.90.1";

/// The Prometheus Operator's CRD files for `kinds` (e.g. `servicemonitors`), from its Go
/// module in the module cache (downloaded once by `go mod download`), or why they cannot be had.
pub fn prometheus_operator_crds(kinds: &[&str]) -> Result<Vec<PathBuf>, String> {
    let module =
        format!("github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}");
    let out = Command::new("go")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .current_dir(std::env::temp_dir())
        .args(["mod", "download", "-json", &module])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running go mod download: {e}"))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "go mod download {module} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = json["Error"].as_str() {
        return Err(format!("go mod download {module}: {err}"));
    }
    let dir = PathBuf::from(json["Dir"].as_str().ok_or("go mod download gave no Dir")?)
        .join("example/prometheus-operator-crd");
    kinds
        .iter()
        .map(|kind| {
            let path = dir.join(format!("monitoring.coreos.com_{kind}.yaml"));
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{} is not in {module}", path.display()))
            }
        })
        .collect()
}
