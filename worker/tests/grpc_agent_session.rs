//! The gRPC agent as a session meets it: over TLS with a private CA, told who the session
//! is (uid, user, metadata, resumed context), sent metadata edits before the next turn,
//! keeping the agent's saved state, and hanging up when the agent says so.

#[path = "common/test_agent.rs"]
mod test_agent;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use voice_proto::agent::v1::{
    ConverseRequest, ConverseResponse, EndOfTurn, Hangup, TextDelta, agent_server,
    converse_request, converse_response,
};
use voice_worker::pipeline::metadata::MetadataFeed;
use voice_worker::pipeline::providers::grpc_agent::GrpcAgent;
use voice_worker::pipeline::providers::{Agent, AgentTurn};
use voice_worker::pipeline::spec::{Identity, Resume};

/// An agent that logs what it is sent, answers each turn with "Noted." and a saved state
/// counting the turns, and hangs up (after its reply) when the user says "bye".
struct LoggingAgent {
    log: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl agent_server::Agent for LoggingAgent {
    type ConverseStream = test_agent::ConverseStream;

    async fn converse(
        &self,
        request: tonic::Request<tonic::Streaming<ConverseRequest>>,
    ) -> Result<tonic::Response<Self::ConverseStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut turns = 0;
            while let Some(Ok(message)) = inbound.next().await {
                let entry = match message.event {
                    Some(converse_request::Event::Start(s)) => {
                        let metadata: std::collections::BTreeMap<_, _> =
                            s.metadata.into_iter().collect();
                        let user: std::collections::BTreeMap<_, _> =
                            s.user_metadata.into_iter().collect();
                        let others: Vec<_> = s
                            .participants
                            .iter()
                            .map(|p| format!("{}:{:?}", p.user_id, p.metadata))
                            .collect();
                        format!(
                            "start {} uid={} user={} {user:?} with={others:?} context={} metadata={metadata:?}",
                            s.session_id, s.uid, s.user_id, s.context_json
                        )
                    }
                    Some(converse_request::Event::Metadata(m)) => {
                        let metadata: std::collections::BTreeMap<_, _> =
                            m.metadata.into_iter().collect();
                        format!("metadata {metadata:?}")
                    }
                    Some(converse_request::Event::Transcript(t)) => {
                        turns += 1;
                        let id = t.turn_id.clone();
                        let mut reply = vec![converse_response::Event::Delta(TextDelta {
                            turn_id: id.clone(),
                            text: "Noted.".into(),
                        })];
                        if t.text == "bye" {
                            reply.push(converse_response::Event::Hangup(Hangup {
                                reason: "the caller said goodbye".into(),
                            }));
                        } else {
                            reply.push(converse_response::Event::EndOfTurn(EndOfTurn {
                                turn_id: id,
                                context_json: format!(r#"{{"turns":{turns}}}"#),
                            }));
                        }
                        for event in reply {
                            let _ = tx.send(Ok(ConverseResponse { event: Some(event) })).await;
                        }
                        format!("transcript {}", t.text)
                    }
                    Some(converse_request::Event::End(e)) => format!("end {}", e.reason),
                    other => format!("{other:?}"),
                };
                log.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
            }
        });
        Ok(test_agent::replies(rx))
    }
}

async fn turn(agent: &GrpcAgent, id: &str, text: &str) -> Result<String, String> {
    let (tx, mut rx) = mpsc::channel(8);
    let turn = AgentTurn {
        turn_id: id.into(),
        text: text.into(),
        history: vec![],
    };
    agent.reply(turn, tx).await.map_err(|e| e.to_string())?;
    let mut reply = String::new();
    while let Some(delta) = rx.recv().await {
        reply.push_str(&delta);
    }
    Ok(reply)
}

#[tokio::test]
async fn a_tls_agent_hears_the_session_and_its_metadata_edits_saves_state_and_hangs_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ca_pem, cert_pem, key_pem) = test_agent::agent_pki();
    let log = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap_or_else(|e| panic!("{e}"))
        .add_service(agent_server::AgentServer::new(LoggingAgent {
            log: log.clone(),
        }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    let endpoint = format!("https://{addr}");
    let timeout = Duration::from_secs(5);

    // Without the private CA the agent's certificate is not trusted: no conversation.
    let untrusted =
        GrpcAgent::new(&endpoint, timeout, "team/s", "{}").unwrap_or_else(|e| panic!("{e}"));
    let refused = turn(&untrusted, "t1", "hello").await.unwrap_err();
    assert!(refused.contains("grpc-agent"), "{refused}");
    drop(untrusted);
    // A CA for a plain-text endpoint would do nothing: it is refused.
    let plain = GrpcAgent::new(&format!("http://{addr}"), timeout, "team/s", "{}")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_ca(&ca_pem)
        .unwrap_err();
    assert!(plain.message.contains("caSecretRef"), "{plain}");

    let (metadata, feed) = watch::channel(HashMap::from([("plan".to_owned(), "gold".to_owned())]));
    let resume = Resume {
        history: vec![("user".into(), "hi".into())],
        turns: 1,
        agent_state: Some(r#"{"turns":1}"#.into()),
    };
    let agent = GrpcAgent::new(&endpoint, timeout, "team/s", "{}")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_ca(&ca_pem)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_identity(Identity {
            uid: "uid-7".into(),
            user_id: "alice".into(),
            connections: [
                (
                    "alice".to_owned(),
                    [("seat".to_owned(), "1A".to_owned())].into(),
                ),
                (
                    "bob".to_owned(),
                    [("seat".to_owned(), "1B".to_owned())].into(),
                ),
            ]
            .into(),
        })
        .with_metadata(MetadataFeed::live(feed))
        .with_resume(Some(&resume));
    assert_eq!(turn(&agent, "t2", "hello").await, Ok("Noted.".to_owned()));
    let after = agent.after_turn();
    assert_eq!(after.state.as_deref(), Some(r#"{"turns":1}"#));
    assert_eq!(after.hangup, None);

    metadata.send_replace(HashMap::from([("plan".to_owned(), "platinum".to_owned())]));
    assert_eq!(turn(&agent, "t3", "bye").await, Ok("Noted.".to_owned()));
    let after = agent.after_turn();
    assert_eq!(after.hangup.as_deref(), Some("the caller said goodbye"));
    assert_eq!(
        after.state, None,
        "a hang-up without end_of_turn saves nothing new"
    );
    drop(agent);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while log.lock().unwrap_or_else(|e| e.into_inner()).len() < 5
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *log.lock().unwrap_or_else(|e| e.into_inner()),
        [
            r#"start team/s uid=uid-7 user=alice {"seat": "1A"} with=["bob:{\"seat\": \"1B\"}"] context={"turns":1} metadata={"plan": "gold"}"#,
            "transcript hello",
            r#"metadata {"plan": "platinum"}"#,
            "transcript bye",
            "end Released",
        ]
    );
}
