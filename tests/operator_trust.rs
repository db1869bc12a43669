//! End to end: the trust boundaries between operator, workers and clients, with the real
//! operator, API server and worker processes. A signing key rotated during a live call; a
//! worker that speaks for sessions it does not hold.

mod operator_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use operator_common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use voice_crds::{SessionPhase, VoiceBackend, VoiceSession};
use voice_proto::token::{self, JoinClaims, KeySet};
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};

const T: Duration = Duration::from_secs(120);

/// A WebSocket call that keeps talking: a 20 ms frame of tone every 20 ms, and a count of the
/// audio bytes the echo sends back.
struct LiveCall {
    echoed: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    talker: tokio::task::JoinHandle<()>,
}

impl LiveCall {
    async fn start(url: &str, token: &str) -> LiveCall {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(url, token, 16_000))
            .await
            .unwrap_or_else(|e| panic!("the worker refused the call: {e}"));
        let (mut tx, mut rx) = ws.split();
        let echoed = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, c) = (echoed.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = rx.next().await {
                match message {
                    Message::Binary(audio) => {
                        e.fetch_add(audio.len(), Ordering::Relaxed);
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            c.store(true, Ordering::Relaxed);
        });
        let s = stop.clone();
        let talker = tokio::spawn(async move {
            let frame: Vec<u8> = (0..320i16)
                .flat_map(|i| (((i % 40) - 20) * 600).to_le_bytes())
                .collect();
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            while !s.load(Ordering::Relaxed) {
                ticks.tick().await;
                if tx
                    .send(Message::Binary(frame.clone().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.close().await;
        });
        LiveCall {
            echoed,
            closed,
            stop,
            talker,
        }
    }

    /// Asserts that audio keeps coming back over the next second.
    async fn still_talking(&self, when: &str) {
        let before = self.echoed.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = self.echoed.load(Ordering::Relaxed);
        assert!(
            after > before && !self.closed.load(Ordering::Relaxed),
            "the live call stopped {when}: {before} → {after} bytes echoed"
        );
    }

    async fn hang_up(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.talker.await;
    }
}

/// An operator (with extra `flags`) and backend `echo` with `replicas` Healthy workers whose
/// pipeline is the diagnostic speech-to-speech echo: a call's audio comes straight back, so a
/// test can tell a live call from a dead one.
async fn echo_stack(prefix: &str, flags: &[&str], replicas: i32) -> OperatorStack {
    let stack = OperatorStack::start_with_flags(
        prefix,
        json!({"capabilities": {"s2sSupport": true}, "stages": {"s2s": ["echo"]}}),
        flags,
    )
    .await;
    stack.apply_backend(
        "echo",
        json!({
            "replicas": replicas,
            "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}, "stt": null, "tts": null},
            "agent": null,
        }),
    );
    wait_healthy(&stack.ns, "echo", replicas, T).await;
    stack
}

/// The keys in the backend's signing-key Secret.
async fn key_set(secrets: &Api<Secret>, backend: &str) -> KeySet {
    let secret = secrets
        .get(&format!("{backend}-session-signing-key"))
        .await
        .expect("the signing-key Secret");
    KeySet::parse(&secret.data.expect("data")["keys.json"].0).expect("a valid key set")
}

/// The value of the operator's counter `name{labels}` (0 when absent).
fn counter(metrics_port: u16, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    http_get(metrics_port, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_rotated_signing_key_keeps_the_live_call_and_new_sessions_use_the_new_key() {
    let stack = echo_stack("trust-keys", &["--signing-key-propagation-seconds", "4"], 1).await;
    let sessions: Api<VoiceSession> = stack.ns.api();
    let secrets: Api<Secret> = stack.ns.api();
    let ws = json!({"transport": "websocket"});

    let (endpoint, first_token) = admit_one(&sessions, "before", "echo", ws.clone()).await;
    let first_kid = token::key_id(&first_token)
        .unwrap()
        .expect("tokens name their key");
    assert_eq!(key_set(&secrets, "echo").await.current, first_kid);
    let call = LiveCall::start(&endpoint.url, &first_token).await;
    call.still_talking("before the rotation").await;

    stack
        .ns
        .api::<VoiceBackend>()
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "voicebackends.dev/rotate-signing-key": "2026-12-06"
            }}})),
        )
        .await
        .expect("annotating the backend");
    // First staged: workers get the key while the old one still signs.
    let staged = wait_for(T, "the new key staged", || async {
        let keys = key_set(&secrets, "echo").await;
        match (keys.next_promotion(), keys.current == first_kid) {
            (Some(_), true) => Ok(keys),
            other => Err(format!("{other:?} {keys:?}")),
        }
    })
    .await;
    let new_kid = staged
        .keys
        .iter()
        .find(|k| k.current_from.is_some())
        .map(|k| k.kid.clone())
        .expect("a staged key");
    // Then current, the old key retired but kept.
    wait_for(T, "the new key current", || async {
        let keys = key_set(&secrets, "echo").await;
        let retired = keys
            .keys
            .iter()
            .any(|k| k.kid == first_kid && k.retired_at.is_some());
        if keys.current == new_kid && retired {
            Ok(())
        } else {
            Err(format!("{keys:?}"))
        }
    })
    .await;
    call.still_talking("after the rotation").await;

    let (endpoint, second_token) = admit_one(&sessions, "after", "echo", ws).await;
    assert_eq!(
        token::key_id(&second_token).unwrap().as_deref(),
        Some(new_kid.as_str()),
        "new sessions are signed with the new key"
    );
    let second = LiveCall::start(&endpoint.url, &second_token).await;
    second.still_talking("on the new key").await;
    call.still_talking("while the second call runs").await;
    let first = sessions.get("before").await.expect("the first session");
    assert_eq!(phase(&first), SessionPhase::Active);

    call.hang_up().await;
    second.hang_up().await;
    for name in ["before", "after"] {
        wait_for(T, &format!("{name} Completed"), || async {
            let s = sessions.get(name).await.map_err(|e| e.to_string())?;
            (phase(&s) == SessionPhase::Completed)
                .then_some(())
                .ok_or_else(|| format!("{:?}", phase(&s)))
        })
        .await;
    }
}

#[tokio::test]
async fn events_from_a_worker_about_sessions_it_does_not_hold_are_dropped_and_counted() {
    let stack = echo_stack("trust-events", &[], 2).await;
    let sessions: Api<VoiceSession> = stack.ns.api();
    let ns = stack.ns.name().to_owned();
    let ws = json!({"transport": "websocket"});

    let (endpoint, victim_token) = admit_one(&sessions, "victim", "echo", ws).await;
    let victim = sessions.get("victim").await.expect("the victim");
    let uid = victim.metadata.uid.clone().expect("uid");
    let holder = victim
        .status
        .and_then(|s| s.worker)
        .expect("an Active session names its worker");
    let holder_ip = holder.pod_ip.expect("the worker's IP");
    let other = live_pods(&stack.ns, "echo")
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref() != Some(holder.pod.as_str()))
        .expect("a second worker");
    let other_ip = other
        .status
        .and_then(|s| s.pod_ip)
        .expect("the second worker's IP");

    // The second worker is made to hold the victim's session and a session of a namespace
    // it has nothing to do with (as a compromised worker would claim them), and clients
    // connect to both, so it reports them to the operator.
    let mut control = worker_control_client(&stack.ns, "echo", &other_ip).await;
    let ghost = "kube-system/ghost";
    for (id, uid) in [
        (format!("{ns}/victim"), uid.clone()),
        (ghost.into(), "g-1".into()),
    ] {
        let reserved = control
            .reserve_session(ReserveSessionRequest {
                session_id: id.clone(),
                uid,
                token_key_id: None,
                session_config_json: String::new(),
            })
            .await
            .expect("ReserveSession")
            .into_inner()
            .result();
        assert_eq!(reserved, ReserveResult::Reserved, "{id}");
    }
    let keys = key_set(&stack.ns.api(), "echo").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ghost_token = token::mint_current(
        &keys,
        &JoinClaims {
            sub: ghost.into(),
            uid: "g-1".into(),
            backend: "echo".into(),
            user: String::new(),
            iat: now,
            exp: now + 600,
        },
    );
    let base = |ip: &str| endpoint.url.replace(&holder_ip, ip);
    let forged = LiveCall::start(&base(&other_ip), &victim_token).await;
    let ghost_url = base(&other_ip).replace(&format!("/{ns}/victim/"), "/kube-system/ghost/");
    let ghostly = LiveCall::start(&ghost_url, &ghost_token).await;
    forged.still_talking("on the second worker").await;

    let port = stack.operator.metrics_port();
    let name = "voice_session_events_dropped_total";
    wait_for(T, "both kinds of forged events counted", || async {
        let other = counter(port, name, "reason=\"OtherWorker\"");
        let not_held = counter(port, name, "reason=\"NotHeld\"");
        if other >= 1.0 && not_held >= 1.0 {
            Ok(())
        } else {
            Err(format!("OtherWorker {other}, NotHeld {not_held}"))
        }
    })
    .await;
    // The forger's hang-ups ("disconnected", "ended") are dropped too: the victim stays
    // Active on its own worker, never shown the forger's connection.
    forged.hang_up().await;
    ghostly.hang_up().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = sessions
        .get("victim")
        .await
        .expect("the victim")
        .status
        .unwrap_or_default();
    assert_eq!(status.phase, SessionPhase::Active, "{status:?}");
    assert_eq!(status.worker.map(|w| w.pod), Some(holder.pod.clone()));
    assert!(status.connection.is_none(), "{:?}", status.connection);

    // The holder is still heard: the victim's own call shows up and its hang-up completes it.
    let real = LiveCall::start(&endpoint.url, &victim_token).await;
    wait_for(T, "the victim's own connection in status", || async {
        let s = sessions.get("victim").await.map_err(|e| e.to_string())?;
        match s.status.and_then(|s| s.connection) {
            Some(c) => Ok(c),
            None => Err("no connection yet".into()),
        }
    })
    .await;
    real.hang_up().await;
    wait_for(T, "victim Completed", || async {
        let s = sessions.get("victim").await.map_err(|e| e.to_string())?;
        (phase(&s) == SessionPhase::Completed)
            .then_some(())
            .ok_or_else(|| format!("{:?}", phase(&s)))
    })
    .await;
}
