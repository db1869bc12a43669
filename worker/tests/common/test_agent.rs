//! What the tests' own gRPC agents share (also used by `tests/operator_agents.rs`): the
//! reply stream type and, for agents served over TLS, a private CA and a serving
//! certificate for 127.0.0.1 it signed.

use tokio::sync::mpsc;
use voice_proto::agent::v1::ConverseResponse;

/// The reply stream of a test agent's `Converse`.
pub type ConverseStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<ConverseResponse, tonic::Status>> + Send + 'static>,
>;

/// The replies an agent's task sends into `rx`, as its `Converse` response.
pub fn replies(
    rx: mpsc::Receiver<Result<ConverseResponse, tonic::Status>>,
) -> tonic::Response<ConverseStream> {
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tonic::Response::new(Box::pin(stream))
}

/// (CA PEM, certificate PEM, key PEM).
pub fn agent_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "agent test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (ca_pem, cert.pem(), key.serialize_pem())
}
