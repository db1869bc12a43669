//! Why the worker could not start or keep serving.

use std::net::SocketAddr;

/// A failure of the worker process as a whole (not of one request).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening socket could not be opened (port taken, address not on this host).
    #[error("cannot listen for {server} on {addr}")]
    Bind {
        /// Which server: "gRPC", "HTTP" or "WebRTC UDP".
        server: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The metrics registry could not be built (a programming error).
    #[error("cannot build the metrics registry")]
    Metrics(#[from] prometheus::Error),
    /// `ICE_SERVERS` names a Secret key the pod does not have, or mixes credential kinds.
    #[error("the ICE servers cannot be configured")]
    IceServers(#[from] crate::ice_servers::IceConfigError),
    /// The gRPC server stopped with an error.
    #[error("the gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    /// The HTTP server stopped with an error.
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
    /// The control channel's TLS files are missing or invalid.
    #[error(transparent)]
    ControlTls(#[from] crate::control_tls::TlsError),
    /// Neither `CONTROL_TLS_DIR` nor `CONTROL_INSECURE` was given.
    #[error(
        "CONTROL_TLS_DIR is not set: the control gRPC port needs its TLS files (the operator mounts them); \
         set CONTROL_INSECURE=true only for a worker run by hand outside a cluster"
    )]
    ControlTlsMissing,
    /// The signaling certificate (`TLS_CERT_FILE`/`TLS_KEY_FILE`) is missing or invalid.
    #[error(transparent)]
    HttpTls(#[from] crate::http_tls::HttpTlsError),
    /// A server task panicked or was cancelled.
    #[error("the {0} server task ended abnormally")]
    Task(&'static str, #[source] tokio::task::JoinError),
}

impl Error {
    /// Stable CamelCase reason, for logs and whoever reports the pod's failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Bind { .. } => "BindFailed",
            Error::Metrics(_) => "MetricsRegistryFailed",
            Error::IceServers(_) => "IceServersMisconfigured",
            Error::Grpc(_) => "GrpcServerFailed",
            Error::Http(_) => "HttpServerFailed",
            Error::Task(..) => "ServerTaskFailed",
            Error::ControlTls(_) => "ControlTlsInvalid",
            Error::ControlTlsMissing => "ControlTlsMissing",
            Error::HttpTls(_) => "SignalingTlsInvalid",
        }
    }
}
