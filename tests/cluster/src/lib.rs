//! Local Kubernetes control plane for the dev loop and the tests.
//!
//! etcd, kube-apiserver and kube-controller-manager (garbage collector and namespace controller
//! only) are built from the pinned Go module in `go/`, cached under `~/.cache`, and run on
//! loopback ports from `<target>/voice-cluster/`. [`up`] starts them or reuses a running set,
//! [`down`] stops them, [`status`] reports. The admin kubeconfig is always at
//! `<target>/voice-cluster/kubeconfig`.

pub mod binaries;
mod error;
pub mod go_tool;
mod health;
mod kubeconfig;
pub mod layout;
pub mod livekit;
pub mod pki;
mod processes;
mod start;
mod state;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub use binaries::Binaries;
pub use error::Error;
pub use layout::{KUBERNETES_VERSION, kubeconfig_path, state_dir};
pub use livekit::{LIVEKIT_SERVER_VERSION, livekit_python, livekit_server};

use crate::binaries::progress;
use crate::state::State;

/// A running local control plane.
#[derive(Debug, Clone)]
pub struct Cluster {
    kubeconfig: PathBuf,
    server: String,
    bin_dir: PathBuf,
}

impl Cluster {
    /// The admin kubeconfig (`<target>/voice-cluster/kubeconfig`): user `admin` in `system:masters`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Directory with etcd, kube-apiserver, kube-controller-manager and kubectl.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// kubectl of the server's version (the machine's own kubectl is older).
    pub fn kubectl_path(&self) -> PathBuf {
        self.bin_dir.join("kubectl")
    }

    /// A `kubectl` command with `KUBECONFIG` set to the admin kubeconfig; add args and run it.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.kubectl_path());
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }
}

/// Starts the local control plane, or reuses the running one.
///
/// Safe to call concurrently from several processes: an exclusive lock on
/// `<target>/voice-cluster.lock` serialises the check-and-start. Builds the binaries first if
/// the cache has none. Progress goes to stderr.
pub fn up() -> Result<Cluster, Error> {
    let _lock = lock()?;
    let bins = binaries::ensure()?;
    let dir = state_dir();
    if let Some(state) = State::load(&dir) {
        if state.bin_dir == bins.dir()
            && state.processes.iter().all(processes::is_alive)
            && health::apiserver_ready(&bins.kubectl(), &kubeconfig_path()).is_ok()
        {
            return Ok(cluster(&state));
        }
        progress("found a stopped or unhealthy local control plane: cleaning it up");
        processes::stop_all(&state.processes)?;
    }
    remove_state_dir(&dir)?;
    std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
    let started = Instant::now();
    let state = start::start(&dir, &bins)?;
    progress(&format!(
        "local control plane ready in {:.1} s at {}",
        started.elapsed().as_secs_f64(),
        state.server
    ));
    Ok(cluster(&state))
}

/// Stops the local control plane (SIGTERM, SIGKILL after a few seconds) and removes its state
/// dir. Does nothing when none runs.
pub fn down() -> Result<(), Error> {
    let _lock = lock()?;
    let dir = state_dir();
    if let Some(state) = State::load(&dir) {
        processes::stop_all(&state.processes)?;
    }
    remove_state_dir(&dir)
}

/// What [`status`] found.
#[derive(Debug, Clone)]
pub struct Status {
    /// The state dir looked at.
    pub state_dir: PathBuf,
    /// The running cluster, when all processes are alive and `/readyz` answers.
    pub ready: Option<Cluster>,
    /// Recorded processes and whether each is alive; empty when nothing was started.
    pub processes: Vec<ProcessStatus>,
    /// Why it is not ready, when it is not.
    pub problem: Option<String>,
}

/// One recorded process.
#[derive(Debug, Clone)]
pub struct ProcessStatus {
    /// etcd, kube-apiserver or kube-controller-manager.
    pub name: String,
    /// Its pid.
    pub pid: i32,
    /// Whether it still runs.
    pub alive: bool,
    /// Its log file.
    pub log: PathBuf,
}

/// Reports on the local control plane without changing anything (and without building).
pub fn status() -> Result<Status, Error> {
    let dir = state_dir();
    let Some(state) = State::load(&dir) else {
        return Ok(Status {
            state_dir: dir,
            ready: None,
            processes: Vec::new(),
            problem: Some("not started".into()),
        });
    };
    let processes: Vec<ProcessStatus> = state
        .processes
        .iter()
        .map(|r| ProcessStatus {
            name: r.name.clone(),
            pid: r.pid,
            alive: processes::is_alive(r),
            log: r.log.clone(),
        })
        .collect();
    let problem = if let Some(dead) = processes.iter().find(|p| !p.alive) {
        Some(format!(
            "{} (pid {}) is not running; see {}",
            dead.name,
            dead.pid,
            dead.log.display()
        ))
    } else {
        health::apiserver_ready(&state.bin_dir.join("kubectl"), &kubeconfig_path())
            .err()
            .map(|err| format!("apiserver /readyz: {err}"))
    };
    let ready = problem.is_none().then(|| cluster(&state));
    Ok(Status {
        state_dir: dir,
        ready,
        processes,
        problem,
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.ready, &self.problem) {
            (Some(cluster), _) => writeln!(
                f,
                "running: {} (kubeconfig {})",
                cluster.server(),
                cluster.kubeconfig().display()
            )?,
            (None, Some(problem)) => writeln!(f, "not ready: {problem}")?,
            (None, None) => writeln!(f, "not ready")?,
        }
        for p in &self.processes {
            let state = if p.alive { "running" } else { "stopped" };
            writeln!(
                f,
                "  {:<24} pid {:<8} {state:<8} log {}",
                p.name,
                p.pid,
                p.log.display()
            )?;
        }
        Ok(())
    }
}

fn cluster(state: &State) -> Cluster {
    Cluster {
        kubeconfig: kubeconfig_path(),
        server: state.server.clone(),
        bin_dir: state.bin_dir.clone(),
    }
}

/// Exclusive lock held for the whole check-and-start (or stop); released when the file closes.
/// Child processes do not inherit it: Rust opens files close-on-exec.
fn lock() -> Result<File, Error> {
    let path = layout::lock_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    file.lock().map_err(Error::io("lock", &path))?;
    Ok(file)
}

fn remove_state_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::io("remove", dir)(err)),
    }
}
