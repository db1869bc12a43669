//! Everything that can go wrong in the agent, each with a stable CamelCase reason.

use std::path::PathBuf;

/// Errors of the node agent. Messages say what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error(
        "cannot load the kubeconfig ({what}): {source}; pass --kubeconfig or set KUBECONFIG to a working admin kubeconfig (cargo xtask cluster up prints one)"
    )]
    Kubeconfig {
        /// What was being loaded.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request to the API server failed.
    #[error(
        "API request failed: {action}: {source}; check that the API server runs and the kubeconfig has admin rights"
    )]
    Api {
        /// What the agent tried.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A container's image names no local binary.
    #[error(
        "image {image:?} maps to no local binary: start voice-node-agent with `--image {repository}=/path/to/binary`"
    )]
    ImageNotMapped {
        /// The image as written in the pod.
        image: String,
        /// Its repository (the part a `--image` rule matches).
        repository: String,
    },
    /// An `--image` flag is not `REPO=PATH`.
    #[error(
        "--image {0:?} is not REPO=PATH: write it like `--image voice-operator/worker=target/debug/voice-worker`"
    )]
    BadImageRule(String),
    /// Every loopback pod address is taken.
    #[error("no free pod address in 127.0.0.0/20: delete some pods on this node")]
    IpPoolExhausted,
    /// A container's environment refers to something that cannot be resolved.
    #[error("environment variable {name}: {problem}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong, including what to fix.
        problem: String,
    },
    /// A process could not be started.
    #[error(
        "cannot start {binary}: {source}; run `cargo build --workspace --bins` or fix the --image mapping"
    )]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pod volume cannot be provided.
    #[error("volume {volume:?}: {problem}")]
    Volume {
        /// The volume's name in the pod.
        volume: String,
        /// What is wrong, including what to fix.
        problem: String,
    },
    /// A local file (log) could not be opened or created.
    #[error("cannot {action} {path}: {source}; check permissions of the target directory")]
    Io {
        /// What was tried.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Stable reason for container states, pod status and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kubeconfig { .. } => "KubeconfigInvalid",
            Error::Api { .. } => "ApiRequestFailed",
            Error::ImageNotMapped { .. } => "ImageNotMapped",
            Error::BadImageRule(_) => "BadImageRule",
            Error::IpPoolExhausted => "IpPoolExhausted",
            Error::Env { .. } => "CreateContainerConfigError",
            Error::Spawn { .. } => "RunContainerError",
            Error::Volume { .. } => "FailedMount",
            Error::Io { .. } => "RunContainerError",
        }
    }

    /// Wraps a client error with what was tried.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api { action, source }
    }
}
