//! A Go program the tests need (helm, the OpenTelemetry Collector), built once from a pinned
//! module of the workspace and cached beside the control plane:
//! `~/.cache/voice-operator/<name>/<name>-<tag><digest of the module's files>/<name>`.
//!
//! Each tool has its own module, so pinning a new version of one never rebuilds another.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// How to build one cached Go program.
#[derive(Debug)]
pub struct GoTool<'a> {
    /// Binary and cache directory name (`helm`, `otelcol`).
    pub name: &'a str,
    /// The Go module directory in the workspace.
    pub module: PathBuf,
    /// Module files whose bytes key the cache (a new pin gets a new directory).
    pub keyed_by: &'a [&'a str],
    /// Put before the digest in the directory name (e.g. a version and a dash), or empty.
    pub tag: &'a str,
    /// The package `go build` builds (`.` for the module's own `main`).
    pub package: &'a str,
    /// `-ldflags` for `go build`, or empty.
    pub ldflags: String,
    /// How long a cold build takes, for the progress line.
    pub takes: &'a str,
}

impl GoTool<'_> {
    /// The cached binary, built first if it is not there yet. Test binaries running at once
    /// build it once: the others wait on a lock file, then reuse it.
    pub fn ensure(&self) -> Result<PathBuf, String> {
        let base = crate::layout::cache_root()
            .parent()
            .map(|p| p.join(self.name))
            .ok_or("the cache root has no parent")?;
        let digest = fnv_digest(&self.module, self.keyed_by)?;
        let dir = base.join(format!("{}-{}{digest}", self.name, self.tag));
        let binary = dir.join(self.name);
        if binary.is_file() {
            return Ok(binary);
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let lock_path = dir.join("build.lock");
        let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
        if binary.is_file() {
            return Ok(binary);
        }
        let partial = dir.join(format!("{}.partial-{}", self.name, std::process::id()));
        eprintln!(
            "building {} from its Go module ({}; cached in {})…",
            self.name,
            self.takes,
            dir.display()
        );
        let started = Instant::now();
        let mut go = Command::new("go");
        go.current_dir(&self.module)
            // Never let go fetch a toolchain (no downloads here).
            .env("GOTOOLCHAIN", "local")
            .args(["build", "-trimpath"]);
        if !self.ldflags.is_empty() {
            go.args(["-ldflags", &self.ldflags]);
        }
        let out = go
            .arg("-o")
            .arg(&partial)
            .arg(self.package)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running go build in {}: {e}", self.module.display()))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&partial);
            return Err(format!(
                "go build of {} failed ({}):\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::rename(&partial, &binary)
            .map_err(|e| format!("renaming {}: {e}", partial.display()))?;
        eprintln!("built {} in {} s", self.name, started.elapsed().as_secs());
        Ok(binary)
    }
}

/// 16 hex digits of FNV-1a over the concatenated `files` of `module`.
fn fnv_digest(module: &Path, files: &[&str]) -> Result<String, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let path = module.join(file);
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_any_keyed_file() {
        let dir = std::env::temp_dir().join(format!("go-tool-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("go.mod"), "module a\n").unwrap();
        std::fs::write(dir.join("go.sum"), "").unwrap();
        let before = fnv_digest(&dir, &["go.mod", "go.sum"]).unwrap();
        assert_eq!(before.len(), 16);
        assert_eq!(before, fnv_digest(&dir, &["go.mod", "go.sum"]).unwrap());
        std::fs::write(dir.join("go.sum"), "x v1 h1:y\n").unwrap();
        assert_ne!(before, fnv_digest(&dir, &["go.mod", "go.sum"]).unwrap());
        assert!(
            fnv_digest(&dir, &["missing.go"])
                .unwrap_err()
                .contains("missing.go")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
