//! Readiness checks, through the matching kubectl so that they authenticate exactly like
//! developers and tests do (admin client certificate from the kubeconfig).

use std::path::Path;
use std::process::{Command, Stdio};

/// `GET /readyz` on the apiserver; `Err` carries kubectl's complaint.
pub fn apiserver_ready(kubectl: &Path, kubeconfig: &Path) -> Result<(), String> {
    run(kubectl, kubeconfig, &["get", "--raw=/readyz"])
}

/// Whether namespace `default` exists: the apiserver's bootstrap controller creates it, and
/// tests that use it would otherwise race the start-up.
pub fn default_namespace_exists(kubectl: &Path, kubeconfig: &Path) -> Result<(), String> {
    run(
        kubectl,
        kubeconfig,
        &["get", "namespace", "default", "-o", "name"],
    )
}

fn run(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new(kubectl)
        .env("KUBECONFIG", kubeconfig)
        .arg("--request-timeout=2s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("could not run {}: {err}", kubectl.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("kubectl failed without a message")
            .to_owned())
    }
}
