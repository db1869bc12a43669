//! The one error type of the crate: every message says what to do next.

use std::path::PathBuf;

/// Why the local control plane could not be built, started, checked or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `go` is not on `PATH`, so the binaries cannot be built.
    #[error(
        "Go is needed to build the local control plane but `go` was not found on PATH: \
         install Go >= 1.26 (a Debian golang package of that version, or a Go \
         toolchain in /usr/local/go) and make sure `go version` works"
    )]
    GoMissing(#[source] std::io::Error),

    /// `go build` failed (download or compile).
    #[error(
        "building the local control plane from Go modules in {module_dir} failed ({status}); \
         check network access to the Go module proxy and disk space, then retry. \
         Last lines of go's output:\n{tail}"
    )]
    GoBuild {
        /// The Go wrapper module that was built.
        module_dir: PathBuf,
        /// Exit status of `go build`.
        status: std::process::ExitStatus,
        /// Last lines of go's stderr.
        tail: String,
    },

    /// A file or directory operation failed.
    #[error("could not {action} {path}: {source}; check permissions and free disk space")]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A binary could not be started.
    #[error("could not start {name} ({binary}): {source}; remove {binary} to force a rebuild")]
    Spawn {
        /// Process name (etcd, kube-apiserver, …).
        name: &'static str,
        /// The binary that was executed.
        binary: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Certificate or key generation failed.
    #[error("could not generate the cluster certificates: {0}")]
    Pki(#[from] rcgen::Error),

    /// A process of the control plane exited while it was being started.
    #[error(
        "{name} exited during start-up ({status}); its log is {log}, \
         run `cargo xtask cluster down` and retry. Last lines of the log:\n{tail}"
    )]
    ProcessExited {
        /// Process name.
        name: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// Last lines of its log file.
        tail: String,
    },

    /// The control plane did not become ready in time.
    #[error(
        "{what} did not become ready within {seconds} s (last check: {last}); \
         see the logs in {state_dir}, run `cargo xtask cluster down` and retry. \
         Last lines of the kube-apiserver log:\n{tail}"
    )]
    NotReady {
        /// What was awaited.
        what: &'static str,
        /// How long we waited.
        seconds: u64,
        /// The last failed check's message.
        last: String,
        /// The state directory with the logs.
        state_dir: PathBuf,
        /// Last lines of the kube-apiserver log.
        tail: String,
    },

    /// A signal could not be sent to a recorded process.
    #[error("could not stop {name} (pid {pid}): {source}; stop it by hand with `kill {pid}`")]
    Stop {
        /// Process name.
        name: String,
        /// Its pid.
        pid: i32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Stable CamelCase reason for this error, for logs and for grepping.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::GoMissing(_) => "GoMissing",
            Error::GoBuild { .. } => "GoBuildFailed",
            Error::Io { .. } => "IoFailed",
            Error::Spawn { .. } => "SpawnFailed",
            Error::Pki(_) => "PkiFailed",
            Error::ProcessExited { .. } => "ProcessExited",
            Error::NotReady { .. } => "NotReady",
            Error::Stop { .. } => "StopFailed",
        }
    }

    /// Wraps an I/O error with the action and path it happened on.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
