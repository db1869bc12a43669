//! Hostile callers of a real worker process's control port (docs/security.md, "Control
//! channel"): every call without the operator's client certificate is refused in the TLS
//! handshake, a session configuration cannot carry an endpoint, URL or Secret name, and after
//! each attempt the worker is healthy, holds no leaked slot and admits a new session.

mod common;

use common::{ControlPki, SERVER_NAME, Worker};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use voice_proto::control_tls::{OPERATOR_CLIENT_NAME, Role, worker_server_name};
use voice_proto::worker::v1::worker_control_client::WorkerControlClient;
use voice_proto::worker::v1::{
    GetStatsRequest, ReserveResult, ReserveSessionRequest, UpdateResult, UpdateSessionRequest,
};

fn reservation(id: &str, config: &str) -> ReserveSessionRequest {
    ReserveSessionRequest {
        session_id: id.to_owned(),
        uid: format!("uid-{id}"),
        token_key_id: None,
        session_config_json: config.to_owned(),
    }
}

/// The worker answers `/healthz`, holds no session, and takes (then frees) a new one.
async fn still_serves(worker: &Worker, probe: &str) {
    assert!(worker.healthy().await, "worker unhealthy after {probe}");
    let stats = worker
        .client()
        .await
        .get_stats(GetStatsRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetStats: {e}"))
        .into_inner();
    assert_eq!(
        stats.active_sessions + stats.reserved_sessions,
        0,
        "a slot leaked after {probe}"
    );
    let id = format!("ns/after-{probe}");
    worker.reserve(&id, &format!("uid-{id}")).await;
    worker
        .client()
        .await
        .release_session(voice_proto::worker::v1::ReleaseSessionRequest {
            session_id: id.clone(),
            uid: format!("uid-{id}"),
            reason: "Test".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReleaseSession: {e}"));
}

/// Tries a reservation over `channel`; returns the refusal's text, panicking if it went through.
async fn refused(channel: Result<Channel, tonic::transport::Error>, what: &str) -> String {
    let channel = match channel {
        Ok(channel) => channel,
        Err(e) => return format!("connect: {e:?}"),
    };
    match WorkerControlClient::new(channel)
        .reserve_session(reservation("ns/intruder", ""))
        .await
    {
        Ok(reply) => panic!("{what}: the worker answered {:?}", reply.into_inner()),
        Err(status) => {
            assert_ne!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{what}: a handler ran ({status})"
            );
            format!("{status:?}")
        }
    }
}

#[tokio::test]
async fn a_plaintext_call_is_refused() {
    let worker = Worker::start(1);
    let _ready = worker.client().await;
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", worker.grpc_port))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await;
    refused(plain, "plaintext").await;
    still_serves(&worker, "plaintext").await;
}

#[tokio::test]
async fn a_tls_call_without_a_client_certificate_is_refused() {
    let worker = Worker::start(1);
    let _ready = worker.client().await;
    let anonymous = worker.pki.channel(worker.grpc_port, None).await;
    refused(anonymous, "no client certificate").await;
    still_serves(&worker, "anonymous").await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let worker = Worker::start(1);
    let _ready = worker.client().await;
    let stranger = ControlPki::new();
    let channel = worker
        .pki
        .channel(worker.grpc_port, Some(&stranger.client))
        .await;
    refused(channel, "another CA").await;
    still_serves(&worker, "other-ca").await;
}

#[tokio::test]
async fn a_workers_serving_certificate_cannot_be_used_to_call_a_worker() {
    let worker = Worker::start(1);
    let _ready = worker.client().await;
    // What a compromised worker of another backend holds: a serverAuth certificate from the
    // very same CA.
    let other_worker = ControlPki::leaf(
        &worker.pki.ca,
        Role::Server,
        &worker_server_name("tenant", "other"),
    );
    let channel = worker
        .pki
        .channel(worker.grpc_port, Some(&other_worker))
        .await;
    refused(channel, "serverAuth certificate as client").await;
    // A clientAuth certificate from the same CA (the operator's role) is what works.
    let operator = ControlPki::leaf(&worker.pki.ca, Role::Client, OPERATOR_CLIENT_NAME);
    let channel = worker
        .pki
        .channel(worker.grpc_port, Some(&operator))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stats = WorkerControlClient::new(channel)
        .get_stats(GetStatsRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetStats with the operator's role: {e}"));
    assert_eq!(stats.into_inner().capacity, 1);
    still_serves(&worker, "wrong-role").await;
}

#[tokio::test]
async fn the_operator_refuses_a_worker_certificate_for_another_backend() {
    let worker = Worker::start(1);
    let _ready = worker.client().await;
    // The operator checks the backend's server name: this worker's certificate names
    // backend `test`, so a client expecting backend `other` does not talk to it.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&worker.pki.ca.cert_pem))
        .identity(tonic::transport::Identity::from_pem(
            &worker.pki.client.cert_pem,
            &worker.pki.client.key_pem,
        ))
        .domain_name(worker_server_name("test", "other"));
    assert_ne!(worker_server_name("test", "other"), SERVER_NAME);
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", worker.grpc_port))
        .unwrap_or_else(|e| panic!("{e}"))
        .tls_config(tls)
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await;
    assert!(channel.is_err(), "connected to a worker of another backend");
    still_serves(&worker, "wrong-server-name").await;
}

#[tokio::test]
async fn a_session_config_that_names_an_endpoint_url_or_secret_is_refused_by_field() {
    let worker = Worker::start(1);
    let cases = [
        (
            r#"{"pipeline": {"type": "S2S", "s2s": {"provider": "openai-realtime", "endpoint": "ws://127.0.0.9:1"}}}"#,
            "session_config_json.pipeline",
        ),
        (
            r#"{"agent": {"systemPrompt": "hi", "endpoint": "http://127.0.0.9:1/v1"}}"#,
            "session_config_json.agent.endpoint",
        ),
        (
            r#"{"agent": {"url": "http://127.0.0.9:1/hook"}}"#,
            "session_config_json.agent.url",
        ),
        (
            r#"{"agent": {"credentialsSecretRef": {"name": "openai", "key": "api-key"}}}"#,
            "session_config_json.agent.credentialsSecretRef",
        ),
        (
            r#"{"sessionAgent": {"streamingMode": false}}"#,
            "session_config_json.sessionAgent",
        ),
        (
            r#"{"silenceTimeoutMs": 0}"#,
            "session_config_json.silenceTimeoutMs",
        ),
    ];
    for (i, (config, field)) in cases.iter().enumerate() {
        let status = worker
            .client()
            .await
            .reserve_session(reservation(&format!("ns/hostile-{i}"), config))
            .await
            .map(|r| r.into_inner())
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{config}");
        assert!(
            status.message().starts_with(field),
            "{config}: {}",
            status.message()
        );
        still_serves(&worker, &format!("config-{i}")).await;
    }
    // Overrides alone are welcome.
    let reply = worker
        .client()
        .await
        .reserve_session(reservation(
            "ns/overrides",
            r#"{"agent": {"streamingMode": false, "systemPrompt": "be brief"}, "silenceTimeoutMs": 700, "userId": "u", "metadata": {"plan": "gold"}}"#,
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(reply.result(), ReserveResult::Reserved);

    // Live metadata: only a JSON object, only for the incarnation that holds the slot.
    let update = |uid: &str, json: &str| UpdateSessionRequest {
        session_id: "ns/overrides".into(),
        uid: uid.into(),
        metadata_json: json.into(),
    };
    for hostile in ["[1, 2]", "\"plan\"", "{not json", ""] {
        let status = worker
            .client()
            .await
            .update_session(update("uid-ns/overrides", hostile))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{hostile}");
        assert!(
            status.message().contains("metadata_json"),
            "{}",
            status.message()
        );
    }
    for (uid, want) in [
        ("uid-ns/overrides", UpdateResult::Updated),
        ("uid-of-an-old-incarnation", UpdateResult::NotFound),
    ] {
        let reply = worker
            .client()
            .await
            .update_session(update(uid, r#"{"plan": "platinum"}"#))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert_eq!(reply.result(), want, "{uid}");
    }
}
