//! One admission: reserve the slot on the worker (idempotent by uid), then write the
//! session's `Active` status and its join-token Secret (`session_tokens`: a token for the
//! user and one per participant) side by side. One API write is on the critical path.
//!
//! Nothing is written ahead of the reservation: the worker is the durable record of it.
//! A crash after the reservation leaves a Pending session the worker holds; the next leader
//! lists every worker before its first admission ([`crate::leader_takeover`]), counts those
//! reservations and finishes them here (the worker answers ALREADY_RESERVED). A crash after
//! the status but before the Secret leaves an Active session without its token; the next
//! leader finds it missing and writes it ([`crate::allocator`]). Every step checks the leader
//! fence first.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use voice_crds::{SessionEndpoint, SessionWorker, Transport, VoiceBackend, VoiceSession};
use voice_proto::session_config::{
    self, AgentFlags, Conversation, SessionConfig, Speaker, Utterance,
};
use voice_proto::token::{JoinClaims, KeySet};
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};

use crate::context::Context;
use crate::pod_template::HTTP_PORT;
use crate::refusal_backoff::Refusal;
use crate::session_lifecycle::Lifecycle;
use crate::session_livekit::{self, LiveKitRoom};
use crate::session_tokens::{self, token_secret_name};
use crate::signing_keys::MAX_TOKEN_LIFETIME;

/// Field manager of the allocator's session status and token Secrets.
use crate::field_managers::SESSION as FIELD_MANAGER;
/// Bound on each gRPC call of an admission.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);

/// What an admission came to.
#[derive(Debug)]
pub enum Outcome {
    /// The session is Active with this lifecycle; `token_written` is false when its join-token
    /// Secret still has to be written (the allocator retries it).
    Admitted {
        /// The lifecycle the API took.
        lifecycle: Box<Lifecycle>,
        /// Whether the join-token Secret was written too.
        token_written: bool,
    },
    /// The worker refused (full, draining, stale uid): give the slot back and plan again.
    Refused {
        /// Whether the refusal is about the worker or about this session.
        refusal: Refusal,
        /// Why.
        error: String,
    },
    /// Something failed after the worker may have reserved: keep the slot, retry later.
    Retry(String),
    /// Nothing was asked of the worker (no IP yet, or the fence was closed): plan again.
    NotStarted(String),
    /// Nothing was asked of the worker, and the session cannot be admitted until what the
    /// condition says is fixed (a `livekit` session's key pair is unreadable, or its backend
    /// changed since the plan so that the session no longer fits it): give the slot
    /// back, write the condition, and wait a little before planning it again.
    Held(crate::session_livekit::Held),
}

/// Everything one admission needs, captured by the allocator when it decided.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The session.
    pub session: VoiceSession,
    /// Its backend.
    pub backend: VoiceBackend,
    /// The lifecycle as currently applied.
    pub lifecycle: Lifecycle,
    /// The chosen worker.
    pub worker: SessionWorker,
    /// The backend's signing keys; the current one signs the join token.
    pub signing_keys: KeySet,
    /// A `livekit` session's room and the key pair its users' tokens are signed with.
    pub live_kit: Option<LiveKitRoom>,
}

/// Runs the admission (one `admit` span, the root of its own trace).
#[tracing::instrument(name = "admit", parent = None, skip_all, fields(voice.session = %format!("{}/{}", a.session.namespace().unwrap_or_default(), a.session.name_any()), voice.session.uid = %a.session.uid().unwrap_or_default(), worker = %a.worker.pod))]
pub async fn admit(ctx: &Context, a: Admission) -> Outcome {
    let ns = a.session.namespace().unwrap_or_default();
    let name = a.session.name_any();
    let uid = a.session.uid().unwrap_or_default();
    let api: Api<VoiceSession> = Api::namespaced(ctx.client.clone(), &ns);

    let Some(ip) = a.worker.pod_ip.clone() else {
        return Outcome::NotStarted(format!("worker {} has no IP yet", a.worker.pod));
    };
    if !ctx.fence.is_open() {
        return Outcome::NotStarted("not leading".into());
    }
    if (a.session.spec.transport == Transport::LiveKit) != a.live_kit.is_some() {
        return Outcome::NotStarted(
            "the session's transport and its backend's liveKit changed".into(),
        );
    }
    // A room's endpoint and tokens are signed before the worker is asked: a failure then
    // leaves no reservation behind.
    let room = match a
        .live_kit
        .as_ref()
        .map(|r| session_livekit::endpoint_and_tokens(&a.session, r))
    {
        Some(Err(e)) => return Outcome::NotStarted(e.to_string()),
        Some(Ok(parts)) => Some(parts),
        None => None,
    };
    let request = ReserveSessionRequest {
        session_id: format!("{ns}/{name}"),
        uid: uid.clone(),
        token_key_id: None,
        session_config_json: session_config(&a.session, &a.backend).to_json(),
    };
    match ctx.workers.reserve(&ip, request, WORKER_TIMEOUT).await {
        Ok(r) => match r.result() {
            ReserveResult::Reserved | ReserveResult::AlreadyReserved => {}
            other => {
                let refusal = if other == ReserveResult::Conflict {
                    Refusal::Session
                } else {
                    Refusal::Worker
                };
                return Outcome::Refused {
                    refusal,
                    error: format!(
                        "worker {} refused: {} {}",
                        a.worker.pod,
                        other.as_str_name(),
                        r.message
                    ),
                };
            }
        },
        // The call may have reserved before it failed: the slot stays held.
        Err(e) => return Outcome::Retry(e),
    }
    if crashes_at(CRASH_AFTER_RESERVE) {
        crash(CRASH_AFTER_RESERVE);
    }

    let now = Timestamp::now();
    let (endpoint, tokens) = room.unwrap_or_else(|| {
        let tokens = mint_tokens(&a.session, &a.backend, &a.signing_keys, now);
        (endpoint(&a.session, &a.backend, &ip), tokens)
    });
    if !ctx.fence.is_open() {
        return Outcome::Retry("not leading".into());
    }
    let active = a
        .lifecycle
        .active(a.worker.clone(), endpoint.clone(), Time(now))
        .observing(a.session.metadata.generation);
    // Onto the session as it was planned: a leader deposed while it ran this admission
    // cannot turn back what its successor wrote since (an end, say) — see
    // docs/decisions.md, "Fencing a paused leader".
    let precondition = a.session.metadata.resource_version.as_deref();
    if crashes_at(CRASH_BEFORE_SECRET) {
        let _ = apply_status(&api, &name, &active, precondition).await;
        crash(CRASH_BEFORE_SECRET);
    }
    // Side by side: the Secret is not on the critical path, and a client that sees Active
    // before the Secret waits for it (it is named in the status it just read).
    let (status, secret) = tokio::join!(
        apply_status(&api, &name, &active, precondition),
        session_tokens::apply_token_secret(ctx, &a.session, &endpoint, &tokens),
    );
    match status {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            return Outcome::Retry(
                "the session changed after this admission was planned (resourceVersion \
                 precondition); planning it again from what the watch shows"
                    .into(),
            );
        }
        Err(e) => return Outcome::Retry(format!("marking the session Active: {e}")),
    }
    if let Err(e) = &secret {
        tracing::warn!(session = %format!("{ns}/{name}"), error = %e, "writing the token Secret failed; retrying beside the Active status");
    }
    Outcome::Admitted {
        lifecycle: Box::new(active),
        token_written: secret.is_ok(),
    }
}

/// Crash point: the worker reserved, nothing is written yet.
pub const CRASH_AFTER_RESERVE: &str = "admit-after-reserve";
/// Crash point: the status is Active, the token Secret not written.
pub const CRASH_BEFORE_SECRET: &str = "admit-before-secret";

/// Whether crash point `name` fires on this pass (`FAILPOINTS="name=3*off->return"` fires
/// on the fourth); inert without the variable.
fn crashes_at(name: &str) -> bool {
    fail::fail_point!(name, |_| true);
    false
}

/// Exits the process at once, as SIGKILL would (no Lease release, no cleanup): the
/// end-to-end tests' admission cut between two steps.
fn crash(point: &str) -> ! {
    tracing::error!(point, "crash point reached; exiting");
    std::process::exit(86)
}

/// The join tokens of an admitted session, keyed as its Secret holds them.
pub fn mint_tokens(
    session: &VoiceSession,
    backend: &VoiceBackend,
    keys: &KeySet,
    now: Timestamp,
) -> BTreeMap<String, String> {
    let lifetime = token_lifetime(session.spec.max_duration.map(Duration::from));
    let iat = u64::try_from(now.as_second()).unwrap_or(0);
    let claims = JoinClaims {
        sub: format!(
            "{}/{}",
            session.namespace().unwrap_or_default(),
            session.name_any()
        ),
        uid: session.uid().unwrap_or_default(),
        backend: backend.name_any(),
        user: session.spec.user.user_id.clone(),
        iat,
        exp: iat + lifetime.as_secs(),
    };
    session_tokens::mint_all(keys, &claims, session)
}

/// Writes the join-token Secret of a session that is already Active at `endpoint` (its
/// first write failed, or a leader crashed between the status and the Secret).
pub async fn write_tokens(
    ctx: &Context,
    session: &VoiceSession,
    backend: &VoiceBackend,
    endpoint: &SessionEndpoint,
    keys: &KeySet,
) -> Result<(), String> {
    if !ctx.fence.is_open() {
        return Err("not leading".into());
    }
    let tokens = match &endpoint.room {
        Some(room) => session_livekit::tokens_again(&ctx.client, session, backend, room).await?,
        None => mint_tokens(session, backend, keys, Timestamp::now()),
    };
    session_tokens::apply_token_secret(ctx, session, endpoint, &tokens)
        .await
        .map_err(|e| e.to_string())
}

/// How long a join token lives: the session's `maxDuration` when it has one, and never more
/// than [`MAX_TOKEN_LIFETIME`] (which is also how long a rotated-out key keeps verifying, so
/// the two must stay one constant).
pub fn token_lifetime(max_duration: Option<Duration>) -> Duration {
    max_duration.map_or(MAX_TOKEN_LIFETIME, |d| d.min(MAX_TOKEN_LIFETIME))
}

/// Applies the allocator's lifecycle fields to the session's status; with `precondition`,
/// only onto that resourceVersion of the session (409 Conflict otherwise). Returns the
/// resourceVersion the write made.
pub async fn apply_status(
    api: &Api<VoiceSession>,
    name: &str,
    lifecycle: &Lifecycle,
    precondition: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let mut body = lifecycle.apply_body();
    if let Some(rv) = precondition {
        body["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|s| s.metadata.resource_version)
}

/// Where the client connects: the WHIP offer URL or the WebSocket URL on the worker (a
/// `livekit` session's is its room: [`session_livekit::endpoint_and_tokens`]).
pub fn endpoint(session: &VoiceSession, backend: &VoiceBackend, ip: &str) -> SessionEndpoint {
    let ns = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    // A backend with `network.tls` has workers that speak only TLS on the HTTP port.
    let tls = crate::pod_network::serves_tls(&backend.spec.workers.network);
    let (scheme, path) = match (session.spec.transport, tls) {
        (Transport::WebSocket, false) => ("ws", "ws"),
        (Transport::WebSocket, true) => ("wss", "ws"),
        // Twilio reaches only public `wss://` URLs; a plain one serves a proxy that adds TLS.
        (Transport::Twilio, false) => ("ws", "twilio"),
        (Transport::Twilio, true) => ("wss", "twilio"),
        // A livekit session's endpoint is its room's (`session_livekit`), never a worker's.
        (Transport::WebRtc | Transport::LiveKit, false) => ("http", "offer"),
        (Transport::WebRtc | Transport::LiveKit, true) => ("https", "offer"),
    };
    let mut url = format!("{scheme}://{host}:{HTTP_PORT}/v1/sessions/{ns}/{name}/{path}");
    // The WebSocket states the PCM16 rate it serves by default (the session's sampleRate).
    if let Some(rate) = crate::session_audio::websocket_rate(session, backend) {
        url.push_str(&format!("?rate={rate}"));
    }
    SessionEndpoint {
        url,
        token_secret_name: token_secret_name(&name),
        ice_servers: backend
            .spec
            .workers
            .network
            .ice_servers
            .iter()
            .flat_map(|s| s.urls.iter().cloned())
            .collect(),
        room: None,
    }
}

/// The session's overrides handed to the worker (typed; never endpoints, URLs or Secret
/// names: the worker runs its backend's pipeline as its pod was started with), with the
/// persisted conversation when the session is re-admitted, and its WebSocket audio.
pub fn session_config(session: &VoiceSession, backend: &VoiceBackend) -> SessionConfig {
    let spec = &session.spec;
    let agent = spec.agent.as_ref().map(|o| AgentFlags {
        streaming_mode: o.streaming_mode,
        interruption_handling: o.interruption_handling,
        preemptive_generation: o.preemptive_generation,
        system_prompt: o.system_prompt.clone(),
    });
    let silence_timeout_ms = spec.turn_detection.as_ref().map(|t| {
        let ms = Duration::from(t.silence_timeout).as_millis();
        u32::try_from(ms)
            .unwrap_or(u32::MAX)
            .clamp(1, session_config::MAX_SILENCE_TIMEOUT_MS)
    });
    let context = session
        .status
        .as_ref()
        .and_then(|s| s.context.as_ref())
        .filter(|c| c.turns > 0 || !c.transcript.is_empty() || c.agent_state.is_some())
        .map(|c| Conversation {
            turns: u64::try_from(c.turns).unwrap_or(0),
            transcript: c
                .transcript
                .iter()
                .map(|e| Utterance {
                    speaker: match e.speaker {
                        voice_crds::Speaker::User => Speaker::User,
                        voice_crds::Speaker::Agent => Speaker::Agent,
                    },
                    text: e.text.clone(),
                })
                .collect(),
            agent_state: c.agent_state.clone(),
        });
    SessionConfig {
        agent: agent.unwrap_or_default(),
        silence_timeout_ms,
        user_id: Some(spec.user.user_id.clone()),
        metadata: spec.metadata.as_ref().and_then(|m| m.as_object().cloned()),
        context,
        audio: crate::session_audio::for_worker(session, backend),
        room: crate::session_livekit::worker_room(session),
        participants: spec
            .participants
            .iter()
            .map(|p| p.user_id.clone())
            .collect(),
        connection_metadata: std::iter::once((
            spec.user.user_id.clone(),
            spec.user.metadata.clone(),
        ))
        .chain(
            spec.participants
                .iter()
                .map(|p| (p.user_id.clone(), p.metadata.clone())),
        )
        .filter(|(_, metadata)| !metadata.is_empty())
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lives_the_shorter_of_the_sessions_max_duration_and_the_cap() {
        assert_eq!(token_lifetime(None), MAX_TOKEN_LIFETIME);
        assert_eq!(
            token_lifetime(Some(Duration::from_secs(300))),
            Duration::from_secs(300)
        );
        assert_eq!(
            token_lifetime(Some(Duration::from_secs(8 * 3600))),
            MAX_TOKEN_LIFETIME
        );
    }

    #[test]
    fn the_endpoint_lists_ice_server_urls_and_no_credentials() {
        let backend: VoiceBackend = serde_json::from_value(serde_json::json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceBackend",
            "metadata": {"name": "assistant", "namespace": "team"},
            "spec": {
                "provider": "voice-operator",
                "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}},
                "workers": {"network": {"iceServers": [
                    {"urls": ["stun:stun.example.com:3478"]},
                    {"urls": ["turn:turn.example.com:3478"], "authSecretRef": {"name": "turn", "key": "shared"}},
                ]}}
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let session: VoiceSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceSession",
            "metadata": {"name": "call-1", "namespace": "team"},
            "spec": {"backendRef": {"name": "assistant"}, "user": {"userID": "u1"}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let endpoint = endpoint(&session, &backend, "10.0.0.5");
        assert_eq!(
            endpoint.ice_servers,
            vec![
                "stun:stun.example.com:3478".to_owned(),
                "turn:turn.example.com:3478".to_owned()
            ]
        );
        let text = serde_json::to_string(&endpoint).unwrap_or_default();
        assert!(
            !text.contains("shared") && !text.contains("SecretRef"),
            "{text}"
        );
    }

    #[test]
    fn a_tls_backend_hands_out_https_and_wss_urls() {
        let backend = |network: serde_json::Value| -> VoiceBackend {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "voicebackends.dev/v1alpha1",
                "kind": "VoiceBackend",
                "metadata": {"name": "assistant", "namespace": "team"},
                "spec": {
                    "provider": "voice-operator",
                    "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}},
                    "workers": {"network": network}
                }
            }))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let session = |transport: &str| -> VoiceSession {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "voicebackends.dev/v1alpha1",
                "kind": "VoiceSession",
                "metadata": {"name": "call-1", "namespace": "team"},
                "spec": {"backendRef": {"name": "assistant"}, "user": {"userID": "u1"}, "transport": transport}
            }))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let plain = backend(serde_json::json!({}));
        let tls = backend(serde_json::json!({"tls": {"secretName": "cert"}}));
        let url = |s: &VoiceSession, b: &VoiceBackend, ip: &str| endpoint(s, b, ip).url;
        let (webrtc, ws) = (session("webrtc"), session("websocket"));
        assert_eq!(
            url(&webrtc, &plain, "10.0.0.5"),
            "http://10.0.0.5:8080/v1/sessions/team/call-1/offer"
        );
        assert_eq!(
            url(&ws, &plain, "10.0.0.5"),
            "ws://10.0.0.5:8080/v1/sessions/team/call-1/ws?rate=48000"
        );
        assert_eq!(
            url(&webrtc, &tls, "10.0.0.5"),
            "https://10.0.0.5:8080/v1/sessions/team/call-1/offer"
        );
        assert_eq!(
            url(&ws, &tls, "fd00::5"),
            "wss://[fd00::5]:8080/v1/sessions/team/call-1/ws?rate=48000"
        );
    }
}
