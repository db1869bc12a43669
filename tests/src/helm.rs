//! Helm, built from its pinned Go module (`tests/helm/go`) once and cached like the control
//! plane: `~/.cache/voice-operator/helm/helm-<version>-<hash of go.mod+go.sum>/helm`.
//!
//! A separate Go module from `tests/cluster/go`, so pinning another Helm never changes the
//! control plane's cache key (and never rebuilds Kubernetes).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

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
    let ldflags = [
        format!("-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"),
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean".to_owned(),
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1".to_owned(),
        format!("-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={K8S_MINOR}"),
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1".to_owned(),
        format!("-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={K8S_MINOR}"),
    ]
    .join(" ");
    voice_cluster::go_tool::GoTool {
        name: "helm",
        module: voice_cluster::layout::workspace_root().join("tests/helm/go"),
        keyed_by: &["go.mod", "go.sum"],
        tag: &format!("{HELM_VERSION}-"),
        package: "helm.sh/helm/v3/cmd/helm",
        ldflags,
        takes: "about 1 min on 2 cores",
    }
    .ensure()
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
