//! Shared pieces of the operator tests: manifests, waiting, reading status and Events.

#![allow(dead_code)]

pub mod aiortc;
pub mod sessions;
#[allow(unused_imports)] // Not every test binary uses sessions.
pub use sessions::*;

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use serde_json::{Value, json};
use voice_crds::{VoiceBackend, VoiceProvider};
use voice_tests::{PROVIDER_LABEL, TestNamespace, kubectl_stdin};

/// Polls `check` every 250 ms until it returns `Some`, or panics after `timeout` with
/// `what` and the last state `describe` gives.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A VoiceProvider manifest named `<ns>-<suffix>`, labelled for this test's operator; `patch`
/// is merged into its spec.
pub fn provider_manifest(ns: &TestNamespace, suffix: &str, patch: Value) -> (String, Value) {
    let name = format!("{}-{suffix}", ns.name());
    let mut spec = json!({
        "capabilities": {"s2sSupport": false, "supportedCodecs": ["opus", "pcm", "pcmu"]},
        "worker": {"image": "voice-operator/worker:0.1.0"},
        "stages": {"stt": ["pocketsphinx"], "tts": ["espeak"], "s2s": [], "vad": ["webrtc"]},
        "configSchema": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"jitterBufferMs": {"type": "integer", "minimum": 20, "maximum": 500}}
        }
    });
    merge(&mut spec, patch);
    let manifest = json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceProvider",
        "metadata": {"name": name, "labels": {PROVIDER_LABEL: ns.name()}},
        "spec": spec,
    });
    (name, manifest)
}

/// A VoiceBackend manifest `name` on `provider`; `patch` is merged into its spec.
pub fn backend_manifest(name: &str, provider: &str, patch: Value) -> Value {
    let mut spec = json!({
        "provider": provider,
        "pipeline": {"type": "STT_TTS", "stt": {"provider": "pocketsphinx"}, "tts": {"provider": "espeak"}},
        "agent": {"type": "Echo"},
        "workers": {"sessionsPerWorker": 2, "drainTimeout": "30s"},
        "scaling": {"minWorkers": 0, "maxWorkers": 5},
        "healthCheck": {"interval": "1s", "timeout": "1s", "failureThreshold": 2}
    });
    merge(&mut spec, patch);
    json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceBackend",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// JSON merge patch (RFC 7386).
pub fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(map) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in map {
                if v.is_null() {
                    if let Some(o) = target.as_object_mut() {
                        o.remove(&k);
                    }
                } else {
                    merge(&mut target[k.as_str()], v);
                }
            }
        }
        other => *target = other,
    }
}

/// Applies manifests with kubectl (server-side) in the test namespace.
pub fn apply(ns: &TestNamespace, manifests: &[&Value]) {
    for m in manifests {
        kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=voice-tests",
                "-n",
                ns.name(),
                "-f",
                "-",
            ],
            &m.to_string(),
        );
    }
}

/// Deletes a test's cluster-scoped providers when dropped.
pub struct ProviderCleanup(pub Vec<String>);

impl Drop for ProviderCleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = voice_tests::kubectl(&[
                "delete",
                "voiceprovider",
                name,
                "--wait=false",
                "--ignore-not-found",
            ]);
        }
    }
}

/// The backend's condition `type_` as (status, reason, message).
pub fn condition(b: &VoiceBackend, type_: &str) -> Option<(String, String, String)> {
    b.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The provider's condition `type_` as (status, reason, message).
pub fn provider_condition(p: &VoiceProvider, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until backend `name` has condition `type_` with `status` and returns (reason, message).
pub async fn wait_condition(
    ns: &TestNamespace,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> (String, String) {
    let api = ns.api::<VoiceBackend>();
    wait_for(timeout, &format!("{name} {type_}={status}"), || {
        let api = api.clone();
        async move {
            let b = api.get(name).await.map_err(|e| e.to_string())?;
            match condition(&b, type_) {
                Some((s, reason, message)) if s == status => Ok((reason, message)),
                other => Err(format!("{other:?}; status {:?}", b.status)),
            }
        }
    })
    .await
}

/// Worker pods of backend `name` that are not being deleted.
pub async fn live_pods(ns: &TestNamespace, name: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("voicebackends.dev/backend={name}")))
        .await
        .expect("listing pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Events in the namespace about object `name`, as (reason, note).
pub async fn events_about(ns: &TestNamespace, name: &str) -> Vec<(String, String)> {
    ns.api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Waits for an Event with `reason` about `name` and returns its note.
pub async fn wait_event(ns: &TestNamespace, name: &str, reason: &str, timeout: Duration) -> String {
    wait_for(
        timeout,
        &format!("an Event {reason} about {name}"),
        || async {
            let events = events_about(ns, name).await;
            events
                .iter()
                .find(|(r, _)| r == reason)
                .map(|(_, note)| note.clone())
                .ok_or_else(|| format!("{events:?}"))
        },
    )
    .await
}

/// The backend's status (default when unset).
pub async fn backend_status(
    ns: &TestNamespace,
    name: &str,
) -> Result<voice_crds::VoiceBackendStatus, String> {
    let b = ns
        .api::<VoiceBackend>()
        .get(name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(b.status.unwrap_or_default())
}

/// Waits until the backend is Ready, Healthy and Connected with `ready` ready workers.
pub async fn wait_healthy(
    ns: &TestNamespace,
    name: &str,
    ready: i32,
    timeout: Duration,
) -> voice_crds::VoiceBackendStatus {
    wait_for(
        timeout,
        &format!("{name} Healthy/Connected with {ready} ready workers"),
        || async {
            let s = backend_status(ns, name).await?;
            let ready_cond = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready_cond
                && s.health_status == voice_crds::HealthStatus::Healthy
                && s.connection_state == voice_crds::ConnectionState::Connected
                && s.workers.ready == ready
                && s.workers.total == ready
            {
                Ok(s)
            } else {
                Err(format!(
                    "{:?}/{:?} workers {:?} conditions {:?}",
                    s.health_status, s.connection_state, s.workers, s.conditions
                ))
            }
        },
    )
    .await
}

/// The pid the node agent recorded for a pod's `worker` container.
pub fn worker_pid(pod: &Pod) -> Option<i32> {
    let raw = pod
        .metadata
        .annotations
        .as_ref()?
        .get("node-agent.voicebackends.dev/processes")?;
    let json: Value = serde_json::from_str(raw).ok()?;
    json["worker"]["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

/// Whether a pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the operator marked a pod draining.
pub fn pod_draining(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("voicebackends.dev/draining"))
        .is_some_and(|v| v == "true")
}

/// The value of `voice_operator_leader` in a `/metrics` body: the sample line itself, not
/// its `# HELP` text (which reads "voice_operator_leader 1 while this process leads.").
pub fn leader_gauge(metrics: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("voice_operator_leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// GET `path` on 127.0.0.1:`port` with plain HTTP/1.0; returns the body.
pub fn http_get(port: u16, path: &str) -> String {
    http_get_from("127.0.0.1", port, path)
}

/// GET `path` on `ip`:`port` with plain HTTP/1.0; returns the body.
pub fn http_get_from(ip: &str, port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((ip, port))
        .unwrap_or_else(|e| panic!("connecting {ip}:{port}: {e}"));
    // A server that accepts and never answers must fail the test, not hang it.
    let limit = Some(Duration::from_secs(30));
    stream
        .set_read_timeout(limit)
        .expect("setting a read timeout");
    stream
        .set_write_timeout(limit)
        .expect("setting a write timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").expect("writing request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// What every end-to-end operator test stands on: the CRDs, the node agent, its own
/// namespace, its own provider (deleted afterwards) and an operator scoped to both.
/// Fields drop in order: the operator stops first, then the provider and the namespace go.
pub struct OperatorStack {
    /// The operator process.
    pub operator: voice_tests::OperatorProcess,
    /// The provider's name.
    pub provider: String,
    _cleanup: ProviderCleanup,
    /// The test's namespace.
    pub ns: TestNamespace,
}

impl OperatorStack {
    /// Starts the stack in a namespace named after `prefix`.
    pub async fn start(prefix: &str) -> OperatorStack {
        Self::start_with(prefix, json!({})).await
    }

    /// [`OperatorStack::start`] with `provider_patch` merged into the provider's spec.
    pub async fn start_with(prefix: &str, provider_patch: Value) -> OperatorStack {
        Self::start_with_flags(prefix, provider_patch, &[]).await
    }

    /// [`OperatorStack::start_with`] with extra command-line `flags` for the operator.
    pub async fn start_with_flags(
        prefix: &str,
        provider_patch: Value,
        flags: &[&str],
    ) -> OperatorStack {
        voice_tests::install_crds();
        voice_tests::node_agent();
        let ns = TestNamespace::new(prefix).await;
        let (provider, manifest) = provider_manifest(&ns, "p", provider_patch);
        let cleanup = ProviderCleanup(vec![provider.clone()]);
        apply(&ns, &[&manifest]);
        let operator = voice_tests::OperatorProcess::start_with(ns.name(), "a", flags);
        OperatorStack {
            operator,
            provider,
            _cleanup: cleanup,
            ns,
        }
    }

    /// Applies backend `name` on this stack's provider with `patch` merged into its spec.
    pub fn apply_backend(&self, name: &str, patch: Value) {
        apply(&self.ns, &[&backend_manifest(name, &self.provider, patch)]);
    }
}

/// `text` spoken by espeak-ng as 16 kHz mono PCM16 (sox converts), as the worker's
/// pipeline tests make it.
pub fn speak(text: &str) -> Vec<u8> {
    use std::process::{Command, Stdio};
    let mut espeak = Command::new("espeak-ng")
        .args(["--stdout", text])
        .stdout(Stdio::piped())
        .spawn()
        .expect("espeak-ng (apt-get install espeak-ng)");
    let out = Command::new("sox")
        .args([
            "-t", "wav", "-", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1",
            "-",
        ])
        .stdin(espeak.stdout.take().expect("espeak stdout"))
        .output()
        .expect("sox (apt-get install sox)");
    assert!(out.status.success() && espeak.wait().unwrap().success());
    out.stdout
}

/// Sends 16 kHz PCM16 `pcm` over a WebSocket as 20 ms binary messages, paced in real time
/// like a caller's microphone.
pub async fn send_paced<S>(tx: &mut S, pcm: &[u8])
where
    S: futures::Sink<tokio_tungstenite::tungstenite::Message> + Unpin,
    S::Error: std::fmt::Debug,
{
    use futures::SinkExt;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    for frame in pcm.chunks(640) {
        ticks.tick().await;
        tx.send(tokio_tungstenite::tungstenite::Message::Binary(
            frame.to_vec().into(),
        ))
        .await
        .expect("sending audio to the worker");
    }
}

/// The sending half of a session's WebSocket (16 kHz PCM), whose replies are read and
/// dropped on their own task so the worker never blocks on a full socket.
pub type SessionSender = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Message,
>;

/// A session's WebSocket endpoint `url` (which states the session's rate, `?rate=`) with
/// the join `token` and the client's own `rate` in place of the stated one.
pub fn ws_url(url: &str, token: &str, rate: u32) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{base}?token={token}&rate={rate}")
}

/// Connects to a session's WebSocket `url` with its join `token` at 16 kHz.
pub async fn connect_session(
    url: &str,
    token: &str,
) -> (SessionSender, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(url, token, 16_000))
        .await
        .expect("the worker takes the token");
    let (tx, mut rx) = ws.split();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    (tx, reader)
}

/// A control-channel client to the worker at `ip` of backend `backend`, authenticated the
/// way the operator is: a client certificate issued from the operator's CA Secret (which the
/// operator created in the test namespace, its Lease namespace), and the backend's server
/// name checked on the worker's certificate.
pub async fn worker_control_client(
    ns: &TestNamespace,
    backend: &str,
    ip: &str,
) -> voice_proto::worker::v1::worker_control_client::WorkerControlClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AsLeader>,
> {
    use voice_proto::control_tls::{self, CertifiedKey, Role};
    let secret = ns
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("voice-operator-control-ca")
        .await
        .expect("the operator's CA Secret");
    let data = secret.data.unwrap_or_default();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("PEM text");
    let ca = CertifiedKey {
        cert_pem: text("ca.crt"),
        key_pem: text("ca.key"),
        not_after_unix: 0,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let client = control_tls::issue(
        &ca,
        Role::Client,
        control_tls::OPERATOR_CLIENT_NAME,
        now,
        Duration::from_secs(3600),
    )
    .expect("a client certificate");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.cert_pem))
        .identity(tonic::transport::Identity::from_pem(
            &client.cert_pem,
            &client.key_pem,
        ))
        .domain_name(control_tls::worker_server_name(ns.name(), backend));
    let channel = tonic::transport::Channel::from_shared(format!("https://{ip}:50051"))
        .expect("worker URL")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("connecting to the worker over mutual TLS");
    // The worker follows the operator's leader epoch and refuses calls without it.
    let lease = ns
        .api::<k8s_openapi::api::coordination::v1::Lease>()
        .get("voice-operator")
        .await
        .expect("the operator's Lease")
        .spec
        .unwrap_or_default();
    let leader = AsLeader(voice_proto::leader_epoch::LeaderEpoch {
        epoch: u64::try_from(lease.lease_transitions.unwrap_or(0)).unwrap_or(0),
        leader: lease.holder_identity.unwrap_or_default(),
    });
    voice_proto::worker::v1::worker_control_client::WorkerControlClient::with_interceptor(
        channel, leader,
    )
}

/// Puts the current leader's epoch on every call, as the leading operator does.
#[derive(Clone)]
pub struct AsLeader(pub voice_proto::leader_epoch::LeaderEpoch);

impl tonic::service::Interceptor for AsLeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.0.insert(request.metadata_mut());
        Ok(request)
    }
}
