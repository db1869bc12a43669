//! The operator's error type: one enum, each variant with a stable CamelCase reason that is
//! used as the Event reason and in logs, so users can grep for it.

use thiserror::Error;

/// Everything a controller can fail with.
#[derive(Debug, Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API call {action} failed: {source}")]
    Kube {
        /// What the controller tried to do, e.g. `create pod`.
        action: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The object has no namespace or name where one is required.
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
    /// Adding or removing the cleanup finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The worker pod template could not be serialised.
    #[error("serialising {what}: {source}")]
    Serialize {
        /// What was being serialised.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The control channel's CA cannot issue a certificate.
    #[error(transparent)]
    ControlCa(#[from] crate::control_ca::CaError),
    /// A backend's signing-key Secret holds no readable key set.
    #[error("the signing-key Secret: {0}")]
    SigningKeys(String),
    /// The operating system gave no randomness for a key or a pod name.
    #[error("no randomness from the OS: {0}")]
    Random(getrandom::Error),
}

impl Error {
    /// The stable CamelCase reason, for Events and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubernetesApiError",
            Error::MissingObjectKey(_) => "MissingObjectKey",
            Error::Finalizer(_) => "FinalizerError",
            Error::Serialize { .. } => "SerializationError",
            Error::SigningKeys(_) => "SigningKeysUnreadable",
            Error::Random(_) => "RandomnessUnavailable",
            Error::ControlCa(_) => "ControlCaInvalid",
        }
    }

    /// Wraps a kube error with what the controller was doing.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
