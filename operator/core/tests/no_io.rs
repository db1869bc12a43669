//! The core's promise, checked: it depends on nothing that can reach the API server, a
//! worker or the network, so the allocator's decisions stay functions of their inputs.
//! (Clock reads are forbidden by `clippy.toml` beside the manifest.)

use std::process::Command;

/// What the core may depend on: plain data types and time arithmetic.
const ALLOWED: &[&str] = &["jiff", "voice-crds"];

#[test]
fn the_core_depends_on_no_client_server_or_runtime_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let package = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == env!("CARGO_PKG_NAME"))
        .expect("this package is in the workspace");
    let normal: Vec<&str> = package["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["kind"].is_null())
        .map(|d| d["name"].as_str().expect("a name"))
        .collect();
    assert!(!normal.is_empty(), "no dependencies read: {package}");
    let extra: Vec<&&str> = normal.iter().filter(|d| !ALLOWED.contains(d)).collect();
    assert!(
        extra.is_empty(),
        "the admission core must not depend on {extra:?}: decisions take their inputs as \
         arguments and return commands; put I/O in the operator"
    );
}
