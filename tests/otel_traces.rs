//! OpenTelemetry end to end: a real Collector (core OTLP receiver + contrib file exporter,
//! built from Go modules) receives the traces of a real operator, run with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, and of the worker the node agent starts from the pod spec
//! the operator writes (which passes the endpoint on); a spoken turn on the session exports a
//! `turn` span linked to the admission.

#[path = "otel/collector.rs"]
mod collector;
mod operator_common;

use std::time::Duration;

use futures::SinkExt;
use k8s_openapi::api::core::v1::Secret;
use tokio_tungstenite::tungstenite::Message;

use collector::{Collector, attribute};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use operator_common::*;
use serde_json::{Value, json};
use voice_crds::{SessionPhase, VoiceSession};
use voice_tests::{OperatorProcess, TestNamespace};

const T: Duration = Duration::from_secs(120);

fn spans_named<'a>(spans: &'a [Value], service: &str, name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["service"] == service && s["name"] == name)
        .collect()
}

#[tokio::test]
async fn reconciles_admissions_and_turns_export_spans_the_reservation_joins_the_admission_and_a_turn_links_to_it()
 {
    // Built (or taken from the cache) before anything else starts its clock.
    collector::binary();
    voice_tests::install_crds();
    voice_tests::node_agent();
    let ns = TestNamespace::new("otel").await;
    let collector = Collector::start(
        &voice_cluster::layout::target_dir()
            .join("voice-otel-tests")
            .join(ns.name()),
    );
    // Whisper hears the phrase the first time (pocketsphinx needed up to three tries); it
    // also shows that a worker pod of the node agent finds the speech venv and the models.
    let (provider, manifest) = provider_manifest(
        &ns,
        "p",
        json!({"stages": {"stt": ["whisper", "pocketsphinx"]}}),
    );
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(&ns, &[&manifest]);
    let operator = OperatorProcess::start_with_env(
        ns.name(),
        "a",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)],
    );
    apply(
        &ns,
        &[&backend_manifest(
            "echo",
            &provider,
            json!({"replicas": 1, "pipeline": {"stt": {"provider": "whisper"}}}),
        )],
    );
    wait_healthy(&ns, "echo", 1, T).await;

    let api: Api<VoiceSession> = ns.api();
    let session: VoiceSession = serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": "call"},
        "spec": {"backendRef": {"name": "echo"}, "user": {"userID": "u"}, "transport": "websocket"},
    }))
    .expect("valid session");
    api.create(&PostParams::default(), &session).await.unwrap();
    let active = wait_for(T, "call Active", || async {
        let s = api.get("call").await.map_err(|e| e.to_string())?;
        match s.status.as_ref().map(|st| st.phase) {
            Some(SessionPhase::Active) => Ok(s),
            _ => Err(format!("{:?}", s.status)),
        }
    })
    .await;
    let session_id = format!("{}/call", ns.name());
    let uid = active.uid().expect("a uid");

    // The batch processors export every 5 s: wait for all three kinds of span.
    let (admit, reservation) = wait_for(Duration::from_secs(60), "the spans", || async {
        let spans = collector.spans();
        let reconciles = spans_named(&spans, "voice-operator", "reconcile");
        let backend = reconciles
            .iter()
            .any(|s| attribute(s, "backend").as_deref() == Some("echo"));
        let provider_reconciled = reconciles
            .iter()
            .any(|s| attribute(s, "provider").as_deref() == Some(provider.as_str()));
        let admit = spans_named(&spans, "voice-operator", "admit")
            .into_iter()
            .find(|s| attribute(s, "voice.session").as_deref() == Some(session_id.as_str()))
            .cloned();
        let reservation = spans_named(&spans, "voice-worker", "reserve_session")
            .into_iter()
            .find(|s| attribute(s, "uid").as_deref() == Some(uid.as_str()))
            .cloned();
        match (backend, provider_reconciled, admit, reservation) {
            (true, true, Some(a), Some(r)) => Ok((a, r)),
            (b, p, a, r) => Err(format!(
                "backend reconcile {b}, provider reconcile {p}, admit {}, reservation {} \
                 among {} spans; collector log:\n{}\noperator log:\n{}",
                a.is_some(),
                r.is_some(),
                spans.len(),
                collector.log_text(),
                operator.log_tail(20)
            )),
        }
    })
    .await;

    assert_eq!(
        attribute(&admit, "voice.session.uid").as_deref(),
        Some(uid.as_str()),
        "the admission span names the session's uid: {admit}"
    );
    assert!(
        admit["parentSpanId"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "each admission is the root of its own trace: {admit}"
    );
    assert_eq!(
        reservation["traceId"], admit["traceId"],
        "the worker's reservation joins the admission's trace: {reservation} vs {admit}"
    );
    assert_eq!(
        reservation["parentSpanId"], admit["spanId"],
        "the reservation is the admission's child: {reservation} vs {admit}"
    );

    // A spoken turn on the session's WebSocket: the worker exports a `turn` span with the
    // stage timings, linked to the admission that placed the session.
    let endpoint = active
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .expect("an Active session has an endpoint");
    let secrets: Api<Secret> = ns.api();
    let secret = voice_tests::token_secret(&secrets, &endpoint.token_secret_name).await;
    let token = String::from_utf8(secret.data.expect("data")["token"].0.clone()).unwrap();
    let (mut tx, reader) = connect_session(&endpoint.url, &token).await;
    let phrase = speak("please tell me about the weather");
    let turn_of_session = || {
        spans_named(&collector.spans(), "voice-worker", "turn")
            .into_iter()
            .find(|s| attribute(s, "voice.session").as_deref() == Some(session_id.as_str()))
            .cloned()
    };
    let mut turn = None;
    // Said once.
    let mut script = vec![0u8; 16_000];
    script.extend(&phrase);
    script.extend(vec![0u8; 64_000]);
    send_paced(&mut tx, &script).await;
    // Replies flow while the client sends; keep the line open past the model's first load
    // and one export interval.
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..1_500 {
        ticks.tick().await;
        tx.send(Message::Binary(vec![0u8; 640].into()))
            .await
            .unwrap();
        if let Some(t) = turn_of_session() {
            turn = Some(t);
            break;
        }
    }
    reader.abort();
    let turn = turn.unwrap_or_else(|| {
        panic!(
            "no turn span for {session_id}; worker spans: {:?}",
            collector
                .spans()
                .iter()
                .filter(|s| s["service"] == "voice-worker")
                .map(|s| s["name"].clone())
                .collect::<Vec<_>>()
        )
    });
    let total_ms = turn["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["key"] == "voice.turn.total_ms"))
        .map(|a| a["value"].clone());
    assert!(
        total_ms.is_some(),
        "the turn span carries its timing: {turn}"
    );
    let links = turn["links"].as_array().cloned().unwrap_or_default();
    assert!(
        links
            .iter()
            .any(|l| l["traceId"] == admit["traceId"] && l["spanId"] == admit["spanId"]),
        "the turn links to the session's admission: {turn} vs {admit}"
    );
}
