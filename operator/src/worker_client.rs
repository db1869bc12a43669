//! The operator's gRPC client to its workers: health, stats, drain, session slots and the
//! session event stream.
//!
//! One lazily connected channel per worker address is cached and reused across checks, so a
//! health check is one request on an open HTTP/2 connection rather than a new TCP handshake.
//! Every call is bounded by the caller's timeout.
//!
//! Every channel is mutual TLS (docs/security.md, "Control channel"): the operator presents
//! its client certificate and accepts only a serving certificate from its CA issued for the
//! backend the pod belongs to ([`voice_proto::control_tls::worker_server_name`]), so a pod
//! that took over another worker's IP cannot pass for it. A worker's backend is learnt from
//! its pod ([`WorkerClients::register`]) before the first call.
//!
//! Every mutating call and every list carries this leader's epoch; a worker that follows a
//! newer leader refuses it, and that refusal deposes this process ([`Fence::depose`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use voice_proto::worker::v1::worker_control_client::WorkerControlClient;
use voice_proto::worker::v1::{
    DrainRequest, GetStatsRequest, ListSessionsRequest, ReleaseSessionRequest,
    ReserveSessionRequest, ReserveSessionResponse, SessionEvent, SessionSummary, UpdateResult,
    UpdateSessionRequest, WatchEventsRequest,
};

use voice_proto::leader_epoch::STALE_PREFIX;

use crate::control_ca::{ControlTrust, Trust};
use crate::leader::Fence;
use crate::pod_template::GRPC_PORT;

/// A worker's answer to a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkerStats {
    /// Sessions the worker can hold.
    pub capacity: u32,
    /// Sessions whose client is connected.
    pub active: u32,
    /// Sessions holding a slot whose client has not connected yet.
    pub reserved: u32,
    /// Whether the worker drains.
    pub draining: bool,
    /// Whether grpc.health.v1 reported SERVING.
    pub serving: bool,
}

impl WorkerStats {
    /// Sessions holding a slot.
    pub fn held(&self) -> u32 {
        self.active.saturating_add(self.reserved)
    }
}

/// Cached mutual-TLS channels to workers, keyed by pod IP.
pub struct WorkerClients {
    trust: Arc<ControlTrust>,
    /// This leader's epoch for every fenced call; closed when a worker refuses it.
    fence: Fence,
    /// Pod IP → the server name its certificate must carry.
    names: Mutex<HashMap<String, String>>,
    /// Pod IP → channel, and the trust it was made with (a new CA or client certificate
    /// makes new channels; open ones finish their calls).
    channels: Mutex<HashMap<String, (Channel, Arc<Trust>)>>,
}

impl std::fmt::Debug for WorkerClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClients").finish_non_exhaustive()
    }
}

impl WorkerClients {
    /// Clients that authenticate with (and verify workers against) `trust` and speak for
    /// the leader `fence` holds.
    pub fn new(trust: Arc<ControlTrust>, fence: Fence) -> Self {
        Self {
            trust,
            fence,
            names: Mutex::default(),
            channels: Mutex::default(),
        }
    }

    /// Records that the pod at `ip` is a worker of `namespace/backend`; its serving
    /// certificate must name that backend. A changed backend for an IP drops its channel.
    pub fn register(&self, ip: &str, namespace: &str, backend: &str) {
        let name = voice_proto::control_tls::worker_server_name(namespace, backend);
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.get(ip) != Some(&name) {
            names.insert(ip.to_owned(), name);
            drop(names);
            self.forget(ip);
        }
    }

    fn channel(&self, ip: &str, timeout: Duration) -> Result<Channel, String> {
        let trust = self.trust.current();
        let name = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ip)
            .cloned()
            .ok_or_else(|| format!("worker {ip} belongs to no known backend yet"))?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((channel, made_with)) = channels.get(ip)
            && Arc::ptr_eq(made_with, &trust)
        {
            return Ok(channel.clone());
        }
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(trust.ca.trust_bundle()))
            .identity(Identity::from_pem(
                &trust.client.cert_pem,
                &trust.client.key_pem,
            ))
            .domain_name(name);
        let channel = Endpoint::from_shared(format!("https://{host}:{GRPC_PORT}"))
            .map_err(|e| format!("bad worker address {ip}: {e}"))?
            .tls_config(tls)
            .map_err(|e| format!("control TLS for {ip}: {e}"))?
            .connect_timeout(timeout)
            .connect_lazy();
        channels.insert(ip.to_owned(), (channel.clone(), trust));
        Ok(channel)
    }

    /// Forgets the workers of `namespace/backend` whose address is not in `keep` (pods
    /// that are gone); other backends' workers are left alone.
    pub fn retain(&self, namespace: &str, backend: &str, keep: &HashSet<String>) {
        let name = voice_proto::control_tls::worker_server_name(namespace, backend);
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = names
            .iter()
            .filter(|(ip, n)| **n == name && !keep.contains(*ip))
            .map(|(ip, _)| ip.clone())
            .collect();
        for ip in &gone {
            names.remove(ip);
        }
        drop(names);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for ip in &gone {
            channels.remove(ip);
        }
    }

    /// `message` with this leader's epoch in its metadata (none without election).
    fn fenced<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(epoch) = self.fence.epoch() {
            epoch.insert(request.metadata_mut());
        }
        request
    }

    /// A worker's "stale leader" refusal deposes this process; anything else is its error.
    fn refused(&self, ip: &str, status: &tonic::Status) {
        if status.code() == tonic::Code::FailedPrecondition
            && status.message().starts_with(STALE_PREFIX)
        {
            self.fence
                .depose(&format!("worker {ip}: {}", status.message()));
        }
    }

    /// Forgets the channel of `ip`, so the next call reconnects (after a failure).
    fn forget(&self, ip: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ip);
    }

    /// `grpc.health.v1.Health/Check` then `WorkerControl/GetStats`, within `timeout` in all.
    pub async fn check(&self, ip: &str, timeout: Duration) -> Result<WorkerStats, String> {
        let channel = self.channel(ip, timeout)?;
        let call = async {
            let health = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|s| format!("health check: {}", s.message()))?
                .into_inner();
            let serving = health.status() == ServingStatus::Serving;
            let stats = WorkerControlClient::new(channel)
                .get_stats(GetStatsRequest {})
                .await
                .map_err(|s| format!("GetStats: {}", s.message()))?
                .into_inner();
            Ok(WorkerStats {
                capacity: stats.capacity,
                active: stats.active_sessions,
                reserved: stats.reserved_sessions,
                draining: stats.draining,
                serving,
            })
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        if result.is_err() {
            self.forget(ip);
        }
        result
    }

    /// `WorkerControl/Drain` with the worker's own timeout (deadline 0 = its configured
    /// `DRAIN_TIMEOUT_SECONDS`, which the operator set from the backend).
    pub async fn drain(&self, ip: &str, timeout: Duration) -> Result<u32, String> {
        let channel = self.channel(ip, timeout)?;
        let mut client = WorkerControlClient::new(channel);
        let call = client.drain(self.fenced(DrainRequest {
            deadline_seconds: 0,
        }));
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner().remaining_sessions),
            Ok(Err(status)) => {
                self.refused(ip, &status);
                self.forget(ip);
                Err(format!("Drain: {}", status.message()))
            }
            Err(_) => {
                self.forget(ip);
                Err(format!("Drain: no answer within {timeout:?}"))
            }
        }
    }

    /// `WorkerControl/ReserveSession`: holds a slot for the session (idempotent by uid).
    pub async fn reserve(
        &self,
        ip: &str,
        request: ReserveSessionRequest,
        timeout: Duration,
    ) -> Result<ReserveSessionResponse, String> {
        let channel = self.channel(ip, timeout)?;
        let mut client = WorkerControlClient::new(channel);
        let mut request = self.fenced(request);
        crate::telemetry::inject(request.metadata_mut());
        let call = client.reserve_session(request);
        self.bounded(ip, "ReserveSession", timeout, call).await
    }

    /// `WorkerControl/ReleaseSession`: frees the session's slot and hangs its client up.
    pub async fn release(
        &self,
        ip: &str,
        session_id: &str,
        uid: &str,
        reason: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let channel = self.channel(ip, timeout)?;
        let mut client = WorkerControlClient::new(channel);
        let call = client.release_session(self.fenced(ReleaseSessionRequest {
            session_id: session_id.to_owned(),
            uid: uid.to_owned(),
            reason: reason.to_owned(),
        }));
        self.bounded(ip, "ReleaseSession", timeout, call)
            .await
            .map(|_| ())
    }

    /// `WorkerControl/UpdateSession`: hands a held session's new metadata (a JSON object) to
    /// its agent; false when the worker holds no such session.
    pub async fn update_metadata(
        &self,
        ip: &str,
        session_id: &str,
        uid: &str,
        metadata_json: String,
        timeout: Duration,
    ) -> Result<bool, String> {
        let channel = self.channel(ip, timeout)?;
        let mut client = WorkerControlClient::new(channel);
        let call = client.update_session(self.fenced(UpdateSessionRequest {
            session_id: session_id.to_owned(),
            uid: uid.to_owned(),
            metadata_json,
        }));
        self.bounded(ip, "UpdateSession", timeout, call)
            .await
            .map(|r| r.result() == UpdateResult::Updated)
    }

    /// `WorkerControl/ListSessions`: every session the worker holds.
    pub async fn list_sessions(
        &self,
        ip: &str,
        timeout: Duration,
    ) -> Result<Vec<SessionSummary>, String> {
        let channel = self.channel(ip, timeout)?;
        let mut client = WorkerControlClient::new(channel);
        let call = client.list_sessions(self.fenced(ListSessionsRequest {}));
        self.bounded(ip, "ListSessions", timeout, call)
            .await
            .map(|r| r.sessions)
    }

    /// `WorkerControl/WatchEvents`: the worker's session events from now on.
    pub async fn watch_events(
        &self,
        ip: &str,
        timeout: Duration,
    ) -> Result<tonic::Streaming<SessionEvent>, String> {
        let channel = self.channel(ip, timeout)?;
        let mut client = WorkerControlClient::new(channel);
        let call = client.watch_events(WatchEventsRequest {});
        self.bounded(ip, "WatchEvents", timeout, call).await
    }

    /// Runs one unary call within `timeout`, forgetting the channel when it fails so the
    /// next call reconnects.
    async fn bounded<T>(
        &self,
        ip: &str,
        what: &str,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                self.refused(ip, &status);
                if status.code() != tonic::Code::InvalidArgument {
                    self.forget(ip);
                }
                Err(format!("{what}: {}", status.message()))
            }
            Err(_) => {
                self.forget(ip);
                Err(format!("{what}: no answer within {timeout:?}"))
            }
        }
    }
}
