//! The demo link `cargo xtask dev` prints, opened in a stock headless Chromium (no flag that
//! lets it use loopback; only a fake microphone playing a 1 kHz tone) against the real API
//! server, operator and node agent, both ways the dev stack runs a backend:
//! - the default, workers on their pod addresses (127.0.0.x): the browser reaches the worker
//!   from this machine's own address;
//! - `--lan`: the node is this machine's LAN address (the shared node agent runs with
//!   `--node-ip lan`), the backend uses `advertise: NodeIP` and HTTPS signaling with a
//!   self-signed certificate for that address, and the page is opened at that address, as a
//!   browser on another machine of the LAN would open it (trusting exactly that certificate,
//!   as a user who accepted it once).
//!
//! Both hear their tone back through an S2S echo backend.

mod operator_common;

#[allow(dead_code)] // the worker tests use more of it
#[path = "../worker/tests/common/browser.rs"]
mod browser;

use std::net::Ipv4Addr;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use operator_common::*;
use rcgen::PublicKeyData as _;
use serde_json::json;
use sha2::Digest as _;

const T: Duration = Duration::from_secs(120);

/// A 1 kHz tone at 48 kHz, as the worker's browser tests play it.
fn tone() -> Vec<i16> {
    (0..96_000)
        .map(|i| {
            let phase = 2.0 * std::f64::consts::PI * 1_000.0 * f64::from(i) / 48_000.0;
            (phase.sin() * 12_000.0) as i16
        })
        .collect()
}

/// The page link `cargo xtask dev` prints for an Active session: the endpoint's origin, then
/// `/demo` with the session and its join token.
fn demo_link(namespace: &str, name: &str, endpoint_url: &str, token: &str) -> String {
    let origin = endpoint_url
        .split("/v1/")
        .next()
        .expect("an endpoint URL with /v1/");
    format!("{origin}/demo?session={namespace}/{name}&token={token}")
}

/// Opens `link`, waits until the tone comes back loud, and returns the page's state.
async fn hear_tone(link: &str, flags: &[&str]) -> serde_json::Value {
    let mut page = browser::Browser::open(link, &tone(), flags).await;
    let (state, connected_after) = page
        .watch_demo(Duration::from_secs(60), browser::heard_tone_back)
        .await;
    println!("{link}: connected after {connected_after:?}; {state}");
    assert_eq!(state["connectionState"], "connected", "{state}");
    assert!(
        state["maxAudioLevel"].as_f64().unwrap_or(0.0) > 0.05,
        "the echo of the tone never came back loud: {state}"
    );
    state
}

/// A provider patch that offers the S2S `echo`, with `extra` merged in.
fn echo_provider(extra: serde_json::Value) -> serde_json::Value {
    let mut patch = json!({"capabilities": {"s2sSupport": true}, "stages": {"s2s": ["echo"]}});
    merge(&mut patch, extra);
    patch
}

fn echo_backend() -> serde_json::Value {
    json!({
        "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}, "stt": null, "tts": null},
        "agent": null,
        "scaling": {"minWorkers": 1, "maxWorkers": 1},
    })
}

#[tokio::test]
async fn the_dev_demo_link_connects_a_stock_chromium_to_a_pod_address_worker() {
    let stack = OperatorStack::start_with("op-browser", echo_provider(json!({}))).await;
    stack.apply_backend("echo", echo_backend());
    wait_healthy(&stack.ns, "echo", 1, T).await;
    let sessions = stack.ns.api::<voice_crds::VoiceSession>();
    let (endpoint, token) = admit_one(&sessions, "call", "echo", json!({})).await;
    assert!(
        endpoint.url.starts_with("http://127.0.0."),
        "{}",
        endpoint.url
    );

    let state = hear_tone(
        &demo_link(stack.ns.name(), "call", &endpoint.url, &token),
        &[],
    )
    .await;
    // Over UDP, to the pod's own address.
    assert_eq!(state["localCandidateProtocol"], "udp", "{state}");
    let remote = state["remoteCandidateAddress"].as_str().unwrap_or_default();
    assert!(remote.starts_with("127.0.0."), "{state}");
}

#[tokio::test]
async fn with_the_lan_address_a_node_ip_backend_serves_the_demo_over_https_at_that_address() {
    voice_tests::node_agent();
    let nodes: Api<Node> = Api::all(voice_tests::client().await);
    let node = nodes
        .get(voice_tests::NODE_NAME)
        .await
        .expect("the node agent's Node");
    let address: Ipv4Addr = node
        .status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
        .expect("an InternalIP");
    assert!(
        !address.is_loopback(),
        "the shared node agent runs with --node-ip lan: {address}"
    );

    // What `cargo xtask dev --lan` applies: host networking allowed on the provider, a
    // self-signed certificate for the LAN address, NodeIP and signaling TLS on the backend.
    let stack = OperatorStack::start_with(
        "op-lan",
        echo_provider(json!({"worker": {"allowHostNetwork": true}})),
    )
    .await;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![address.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    create_tls_secret(
        &stack.ns.api::<Secret>(),
        "lan-tls",
        &cert.pem(),
        &key.serialize_pem(),
    )
    .await;
    let mut backend = echo_backend();
    merge(
        &mut backend,
        json!({"workers": {"network": {"advertise": "NodeIP", "tls": {"secretName": "lan-tls"}}}}),
    );
    stack.apply_backend("lan", backend);
    wait_healthy(&stack.ns, "lan", 1, T).await;
    let sessions = stack.ns.api::<voice_crds::VoiceSession>();
    let (endpoint, token) = admit_one(&sessions, "call", "lan", json!({})).await;
    assert!(
        endpoint
            .url
            .starts_with(&format!("https://{address}:8080/")),
        "the endpoint is HTTPS at the LAN address: {}",
        endpoint.url
    );

    // The browser trusts exactly this certificate's key (Chromium's pin for a self-signed
    // certificate: base64 SHA-256 of its SubjectPublicKeyInfo), as a user who accepted it.
    let pin = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(key.subject_public_key_info()));
    let state = hear_tone(
        &demo_link(stack.ns.name(), "call", &endpoint.url, &token),
        &[&format!("--ignore-certificate-errors-spki-list={pin}")],
    )
    .await;
    assert_eq!(state["localCandidateProtocol"], "udp", "{state}");
    let remote = state["remoteCandidateAddress"].as_str().unwrap_or_default();
    assert!(
        remote.starts_with(&format!("{address}:")),
        "media goes to the LAN address: {state}"
    );

    // Free the node's host ports for the next NodeIP test: the worker goes with its backend.
    kubectl_delete_and_wait(&stack, "voicebackend/lan").await;
}

/// Deletes `what` in the stack's namespace and waits until no pod of it is left, not even
/// a terminating one (those still hold their host ports).
async fn kubectl_delete_and_wait(stack: &OperatorStack, what: &str) {
    voice_tests::kubectl_ok(&["delete", "-n", stack.ns.name(), what, "--wait=false"]);
    let name = what.rsplit('/').next().unwrap_or(what);
    let selector = format!("voicebackends.dev/backend={name}");
    wait_for(T, "the backend's workers gone", || async {
        let left = stack
            .ns
            .api::<k8s_openapi::api::core::v1::Pod>()
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        (left == 0)
            .then_some(())
            .ok_or_else(|| format!("{left} pods left"))
    })
    .await;
}
