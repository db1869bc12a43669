//! `advertise: NodeIP` against the real API server, operator and node agent: a backend that
//! asks for two workers on the host network gets pods that hold their HTTP, gRPC and UDP
//! ports as host ports and keep apart by anti-affinity, so on this one-node cluster exactly
//! one of them is ever bound and the other waits Pending — no two workers of the backend
//! ever share a node and a port, whatever the moment the test looks.

mod operator_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use operator_common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn two_node_ip_workers_never_share_a_node_and_a_port() {
    // NodeIP needs host networking, which a provider must allow (tenancy, docs/security.md).
    let stack =
        OperatorStack::start_with("op-nodeip", json!({"worker": {"allowHostNetwork": true}})).await;
    stack.apply_backend(
        "edge",
        json!({
            "scaling": {"minWorkers": 2, "maxWorkers": 2},
            "workers": {"network": {"advertise": "NodeIP", "udpPort": 41000}},
        }),
    );

    // Both pods exist, as the API server stored them (defaulted).
    let pods = wait_for(T, "two worker pods", || async {
        let pods = live_pods(&stack.ns, "edge").await;
        if pods.len() == 2 {
            Ok(pods)
        } else {
            Err(format!("{} pods", pods.len()))
        }
    })
    .await;
    for pod in &pods {
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.host_network, Some(true));
        let ports: BTreeSet<(i32, Option<i32>, String)> = spec.containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.container_port,
                    p.host_port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            BTreeSet::from([
                (8080, Some(8080), "TCP".to_owned()),
                (41000, Some(41000), "UDP".to_owned()),
                // ICE-TCP on the UDP port's number.
                (41000, Some(41000), "TCP".to_owned()),
                (50051, Some(50051), "TCP".to_owned()),
            ])
        );
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .expect("required anti-affinity");
        assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
    }

    // One gets bound once the node's host ports are free (a NodeIP worker of an earlier
    // test may still be stopping there).
    wait_for(T, "a bound NodeIP worker", || async {
        live_pods(&stack.ns, "edge")
            .await
            .iter()
            .any(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty())
            })
            .then_some(())
            .ok_or_else(|| "none bound yet".to_owned())
    })
    .await;
    // Watch for a while: at every look, bound pods never share a node and a host port, and
    // one of them is bound and running.
    let started = Instant::now();
    let mut max_bound = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let pods = live_pods(&stack.ns, "edge").await;
        let mut held = BTreeSet::new();
        let mut bound = 0;
        for pod in &pods {
            let spec = pod.spec.as_ref().expect("spec");
            let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) else {
                continue;
            };
            bound += 1;
            for port in spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
            {
                let key = (node.clone(), port.host_port, port.protocol.clone());
                assert!(
                    held.insert(key.clone()),
                    "two workers of one backend hold {key:?}: {pods:#?}"
                );
            }
        }
        max_bound = max_bound.max(bound);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        max_bound, 1,
        "exactly one NodeIP worker fits on the one node"
    );
    let ready = wait_for(T, "the bound worker ready", || async {
        live_pods(&stack.ns, "edge")
            .await
            .into_iter()
            .find(pod_ready)
            .ok_or_else(|| "no ready worker".to_owned())
    })
    .await;
    // It advertises the node's address (status.hostIP), not its own pod address.
    let env = ready.spec.as_ref().expect("spec").containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let advertise = env
        .iter()
        .find(|e| e.name == "ADVERTISE_IP")
        .expect("ADVERTISE_IP");
    assert_eq!(
        advertise
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.hostIP")
    );
}

/// `network.tls` against the real API server, operator and node agent: a worker whose Secret
/// is missing waits with `FailedMount`; once the Secret exists the worker starts, passes its
/// HTTPS readiness probe, and a WebSocket session gets a `wss://` endpoint where the worker
/// serves exactly the Secret's certificate and the session's hello.
#[tokio::test]
async fn a_tls_backend_serves_its_secrets_certificate_at_a_wss_endpoint() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::PostParams;
    use rustls::pki_types::{CertificateDer, ServerName};

    let stack = OperatorStack::start("op-tls").await;
    stack.apply_backend(
        "secure",
        json!({"replicas": 1, "workers": {"network": {"tls": {"secretName": "secure-tls"}}}}),
    );
    let waiting = wait_for(T, "the worker waiting for its Secret", || async {
        live_pods(&stack.ns, "secure")
            .await
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .filter_map(|c| c.state.as_ref()?.waiting.clone())
            .find(|w| w.reason.as_deref() == Some("FailedMount"))
            .ok_or_else(|| "no FailedMount".to_owned())
    })
    .await;
    assert!(
        waiting.message.unwrap_or_default().contains("secure-tls"),
        "FailedMount names the Secret"
    );

    // A CA and a serving certificate for a name, as cert-manager would write them.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["secure.test".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    create_tls_secret(
        &stack.ns.api::<Secret>(),
        "secure-tls",
        &leaf.pem(),
        &key.serialize_pem(),
    )
    .await;
    wait_healthy(&stack.ns, "secure", 1, T).await;

    let session: voice_crds::VoiceSession = serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": "call"},
        "spec": {"backendRef": {"name": "secure"}, "user": {"userID": "u"}, "transport": "websocket"},
    }))
    .expect("session");
    let sessions = stack.ns.api::<voice_crds::VoiceSession>();
    sessions
        .create(&PostParams::default(), &session)
        .await
        .expect("creating the session");
    let endpoint = wait_for(T, "the session's endpoint", || async {
        sessions
            .get("call")
            .await
            .map_err(|e| e.to_string())?
            .status
            .and_then(|s| s.endpoint)
            .ok_or_else(|| "no endpoint".to_owned())
    })
    .await;
    let rest = endpoint.url.strip_prefix("wss://").expect("a wss:// URL");
    let host_port = rest.split('/').next().expect("host:port");
    let token_secret =
        voice_tests::token_secret(&stack.ns.api::<Secret>(), &endpoint.token_secret_name).await;
    let token = String::from_utf8(token_secret.data.expect("data")["token"].0.clone())
        .expect("UTF-8 token");

    // TLS to the pod trusting only the CA, checking the name the certificate carries.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(host_port)
        .await
        .expect("connecting to the worker");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("secure.test").expect("name"), tcp)
        .await
        .expect("the worker's TLS handshake");
    let served = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    assert_eq!(
        served,
        leaf.der().to_vec(),
        "the Secret's certificate is served"
    );
    let (mut ws, _) = tokio_tungstenite::client_async(with_token(&endpoint.url, &token), tls)
        .await
        .expect("the WebSocket upgrade over TLS");
    let hello = tokio::time::timeout(T, ws.next()).await.expect("a hello");
    let hello = hello.expect("a message").expect("a text message");
    assert!(
        hello
            .to_text()
            .unwrap_or_default()
            .contains(r#""type":"connected""#),
        "{hello:?}"
    );
}

/// The endpoint URL as status states it (it may carry `?rate=`) with the join token added.
fn with_token(url: &str, token: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}token={token}")
}
