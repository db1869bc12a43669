//! Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the pinned Go module
//! once, and caches them under a directory keyed by the module's go.mod and go.sum.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::layout::{self, KUBERNETES_VERSION};

/// Go packages built, in the order of [`Binaries`]' names.
const PACKAGES: [&str; 4] = [
    "go.etcd.io/etcd/server/v3",
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kubectl",
];

/// File names in the cache's `bin/`.
const NAMES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

/// Go names the etcd binary after its import path, which ends in a major version suffix.
const ETCD_BUILT_NAMES: [&str; 2] = ["server", "v3"];

/// Cold build time measured on a 2-core machine with the modules already downloaded (4 min),
/// shown so nobody thinks the build hangs.
const COLD_BUILD_MINUTES: u32 = 5;

/// The built binaries of one pinned version.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The directory holding all four binaries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// etcd server.
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    /// kube-apiserver.
    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }
    /// kube-controller-manager.
    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }
    /// kubectl of the same version as the server (the machine's kubectl is older).
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }
}

/// Returns the cached binaries, building them first when the cache has none for this go.mod/go.sum.
pub fn ensure() -> Result<Binaries, Error> {
    let module_dir = layout::go_module_dir();
    let version_dir = layout::cache_root().join(format!(
        "k8s-{KUBERNETES_VERSION}-{}",
        module_digest(&module_dir)?
    ));
    let bin = version_dir.join("bin");
    if NAMES.iter().all(|name| bin.join(name).is_file()) {
        return Ok(Binaries { dir: bin });
    }
    build(&module_dir, &version_dir)?;
    Ok(Binaries { dir: bin })
}

/// First 12 hex digits of sha256(go.mod ‖ go.sum): a new pin gets a new cache directory.
fn module_digest(module_dir: &Path) -> Result<String, Error> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for file in ["go.mod", "go.sum"] {
        let path = module_dir.join(file);
        ctx.update(&std::fs::read(&path).map_err(Error::io("read", path))?);
    }
    Ok(ctx.finish().as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Builds into a private directory, then renames it into place so a half-built cache is never seen.
fn build(module_dir: &Path, version_dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(version_dir).map_err(Error::io("create directory", version_dir))?;
    let partial = version_dir.join(format!("bin.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(Error::io("create directory", &partial))?;

    progress(&format!(
        "building the local control plane ({KUBERNETES_VERSION}) from Go modules \
         (cold: ~{COLD_BUILD_MINUTES} min, later runs reuse {})…",
        version_dir.display()
    ));
    let started = Instant::now();
    if let Err(err) = run_go_build(module_dir, &partial) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(err);
    }

    let etcd = ETCD_BUILT_NAMES
        .iter()
        .map(|n| partial.join(n))
        .find(|p| p.is_file());
    if let Some(etcd) = etcd {
        let target = partial.join("etcd");
        std::fs::rename(&etcd, &target).map_err(Error::io("rename", etcd))?;
    }
    for name in NAMES {
        let path = partial.join(name);
        if !path.is_file() {
            return Err(Error::Io {
                action: "find the built binary",
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "go build did not produce it",
                ),
            });
        }
    }
    let bin = version_dir.join("bin");
    if let Err(err) = std::fs::rename(&partial, &bin) {
        // Another process finished first: its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&partial);
        if !bin.is_dir() {
            return Err(Error::io("rename", partial)(err));
        }
    }
    progress(&format!(
        "built the local control plane in {} s",
        started.elapsed().as_secs()
    ));
    Ok(())
}

/// Runs `go build -v`, turning its package list into a progress line every so often and
/// keeping the tail of its output for the error message.
fn run_go_build(module_dir: &Path, out_dir: &Path) -> Result<(), Error> {
    let ldflags = [
        format!("-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}"),
        "-X k8s.io/component-base/version.gitMajor=1".to_owned(),
        "-X k8s.io/component-base/version.gitMinor=36".to_owned(),
        format!("-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION}"),
        "-X k8s.io/component-base/version.gitTreeState=clean".to_owned(),
    ]
    .join(" ");
    let mut out = out_dir.as_os_str().to_owned();
    out.push("/");
    let mut child = Command::new("go")
        .current_dir(module_dir)
        // The module says go 1.26; never let go fetch a toolchain (no downloads here).
        .env("GOTOOLCHAIN", "local")
        .args(["build", "-v", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(out)
        .args(PACKAGES)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::GoMissing(err),
            _ => Error::io("run go build in", module_dir)(err),
        })?;

    let mut tail = VecDeque::with_capacity(40);
    let mut compiled = 0usize;
    let mut last_report = Instant::now();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            compiled += 1;
            if last_report.elapsed() >= Duration::from_secs(20) {
                progress(&format!("  … {compiled} packages compiled, now {line}"));
                last_report = Instant::now();
            }
            if tail.len() == 40 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child
        .wait()
        .map_err(Error::io("wait for go build in", module_dir))?;
    if status.success() {
        return Ok(());
    }
    Err(Error::GoBuild {
        module_dir: module_dir.to_owned(),
        status,
        tail: Vec::from(tail).join("\n"),
    })
}

/// Writes straight to stderr: `eprintln!` would be swallowed by the test harness's capture,
/// and a silent multi-minute build looks like a hang.
pub(crate) fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}
