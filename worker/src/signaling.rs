//! Signaling on the worker's HTTP server: WHIP-style (RFC 9725) offer/answer for WebRTC,
//! hang-up by `DELETE`, and the WebSocket upgrade; every refusal is a JSON error with a
//! stable `code`.
//!
//! | request | success | refusals |
//! |---|---|---|
//! | `POST /v1/sessions/{namespace}/{name}/offer` (`application/sdp`, bearer token) | `201`, SDP answer, `Location`, `ETag`, `Link: rel="ice-server"` per STUN/TURN URL (with credentials) | 400 401 403 404 409 413 415 503 |
//! | `GET /v1/sessions/{namespace}/{name}/ice-servers` (bearer token) | `200`, `{"iceServers": [RTCIceServer]}` | 401 403 404 503 |
//! | `PATCH /v1/sessions/{namespace}/{name}/connections/{id}` (`application/trickle-ice-sdpfrag`, bearer token, optional `If-Match`) | `204` | 400 401 403 404 412 413 415 422 |
//! | `DELETE /v1/sessions/{namespace}/{name}/connections/{id}` (bearer token) | `200` | 401 403 404 |
//! | `GET /v1/sessions/{namespace}/{name}/ws?rate=8000\|16000\|24000\|48000` (default: the session's `spec.audio.sampleRate`; bearer token, or `Sec-WebSocket-Protocol: voice.v1, token.<jwt>`, or `?token=` as a fallback) | `101` | 400 401 403 404 409 503 |
//! | `GET /v1/sessions/{namespace}/{name}/twilio` (Twilio Media Streams; the token comes in the `start` message's `customParameters.token`, see [`twilio_stream`]) | `101` | 404 503 |
//!
//! Any other method on these paths is answered `405` with an `Allow` header (RFC 9725
//! §4.3: a `PATCH` on the offer endpoint, for one). Trickle ICE follows RFC 9725 §4.3.1–2:
//! the `201` carries the ICE session's strong `ETag`; a `PATCH` whose `If-Match` names
//! another tag gets `412`. `If-Match` is optional here (RFC 9725 requires the tag only of
//! sessions that support ICE restarts, which this one does not), and a fragment with new
//! ICE credentials — an ICE restart — is refused with `422` (see [`trickle`]). A connection
//! signals at most [`MAX_CANDIDATES`] candidates (`400 TooManyCandidates`), and candidates
//! on internal addresses are not checked unless allowed ([`candidate_policy`]).
//! Cross-origin calls need the page's origin in `ALLOWED_ORIGINS` ([`crate::cors`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use voice_proto::token::{self, TokenError};

use crate::connections::{AlreadyConnected, Connections, Transport};
use crate::metrics::MediaMetrics;
use crate::sessions::Sessions;
use crate::transport::candidate_policy::{self, MAX_CANDIDATES, TooManyCandidates, Verdict};
use crate::transport::peers::Peers;
use crate::transport::sdp::{self, OfferError};
use crate::transport::trickle::{self, FragError};
use crate::transport::udp_mux::UdpMux;
use crate::transport::{peer, twilio_stream, websocket, ws_rules};

/// Where a client posts its WebRTC offer (the WHIP endpoint).
pub const OFFER_PATH: &str = "/v1/sessions/{namespace}/{name}/offer";

/// The WHIP session resource of one connection: `PATCH` for trickle ICE, `DELETE` to hang up.
pub const CONNECTION_PATH: &str = "/v1/sessions/{namespace}/{name}/connections/{connection}";

/// The WebSocket endpoint.
pub const WEBSOCKET_PATH: &str = "/v1/sessions/{namespace}/{name}/ws";

/// The Twilio Media Streams endpoint (a TwiML `<Connect><Stream url>`).
pub const TWILIO_PATH: &str = "/v1/sessions/{namespace}/{name}/twilio";

/// The media type of a trickle ICE `PATCH` body (RFC 8840).
pub const TRICKLE_CONTENT_TYPE: &str = "application/trickle-ice-sdpfrag";

/// Everything the signaling handlers and the media tasks they start need.
#[derive(Debug)]
pub struct MediaContext {
    /// The slot ledger and its events.
    pub sessions: Arc<Sessions>,
    /// Open media connections.
    pub connections: Arc<Connections>,
    /// Live WebRTC connections, for trickle ICE.
    pub peers: Arc<Peers>,
    /// The shared WebRTC UDP socket.
    pub mux: Arc<UdpMux>,
    /// The join-token keys, reloaded when the operator rotates them.
    pub signing_keys: Arc<crate::signing_keys::SigningKeys>,
    /// Application JWTs accepted besides join tokens (`spec.clientAuth`), or why the
    /// configuration cannot be used.
    pub client_auth: Option<Arc<Result<crate::client_auth::AppTokens, String>>>,
    /// The address put in ICE candidates (advertised IP, mux port).
    pub advertised: SocketAddr,
    /// The shared ICE-TCP listener, when `TCP_MEDIA_PORT` is set.
    pub tcp_mux: Option<Arc<crate::transport::tcp_mux::TcpMux>>,
    /// The address put in passive TCP candidates (advertised IP, TCP port), with `tcp_mux`.
    pub advertised_tcp: Option<SocketAddr>,
    /// STUN/TURN servers handed to clients, with their credentials.
    pub ice_servers: crate::ice_servers::IceServers,
    /// Web origins allowed to call the WHIP endpoints (CORS); empty: same-origin only.
    pub allowed_origins: Vec<String>,
    /// Whether the worker may check loopback/private/link-local candidates clients signal.
    pub allow_private_candidates: bool,
    /// Largest accepted offer body.
    pub max_offer_bytes: usize,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// How long a WebRTC connection attempt may take.
    pub connect_timeout: Duration,
    /// Send timeout, ping interval and pong deadline of WebSocket connections.
    pub websocket: crate::transport::ws_rules::Timing,
    /// Receive-side jitter buffer depth of each WebRTC connection, in 20 ms packets
    /// (providerConfig `jitterBufferMs`).
    pub jitter_packets: usize,
    /// Data-plane metrics.
    pub metrics: MediaMetrics,
    /// Fires when the worker stops.
    pub shutdown: CancellationToken,
}

/// Why a signaling request was refused. Each variant has an HTTP status and a stable
/// `code` (its [`reason`](SignalingError::reason)).
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// No usable `Authorization: Bearer` header or `token` parameter.
    #[error(
        "a join token is required (Authorization: Bearer <token>; a browser WebSocket offers the subprotocols voice.v1 and token.<token>)"
    )]
    MissingToken,
    /// The token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token is neither the session's join token nor an application token
    /// (`spec.clientAuth`) that checks out.
    #[error(
        "the token is neither a join token of this session ({join}) nor a valid application token ({app})"
    )]
    ClientToken {
        /// Why it is not a join token.
        join: TokenError,
        /// Why it is not an application token.
        app: String,
    },
    /// The session holds no slot on this worker.
    #[error("session {0} is not reserved on this worker")]
    SessionNotFound(String),
    /// No such connection to hang up.
    #[error("no connection {0} for this session")]
    ConnectionNotFound(String),
    /// The participant already has a media connection.
    #[error(transparent)]
    AlreadyConnected(#[from] AlreadyConnected),
    /// A valid token naming a participant the session does not list.
    #[error(transparent)]
    UnknownParticipant(#[from] crate::sessions::UnknownParticipant),
    /// The body is not of the media type the request takes (named in the message).
    #[error("the body must be sent as Content-Type: {0}")]
    UnsupportedMediaType(&'static str),
    /// A trickle fragment that cannot be used.
    #[error(transparent)]
    Fragment(#[from] FragError),
    /// `If-Match` names an ICE session that is not the current one.
    #[error("If-Match {given} does not match the ICE session's entity-tag {current}")]
    PreconditionFailed {
        /// The client's `If-Match`.
        given: String,
        /// The current entity-tag.
        current: String,
    },
    /// A trickle fragment with new ICE credentials.
    #[error(
        "ICE restarts are not supported: the fragment's ice-ufrag/ice-pwd differ from the offer's; post a new offer instead"
    )]
    IceRestartUnsupported,
    /// More ICE candidates than one connection may signal.
    #[error(transparent)]
    TooManyCandidates(#[from] TooManyCandidates),
    /// The peer connection refused a candidate that parsed.
    #[error("the candidate was refused: {0}")]
    CandidateRefused(String),
    /// The body is larger than the configured limit.
    #[error("the offer is larger than {0} bytes")]
    TooLarge(usize),
    /// The client did not finish sending its body in time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The body could not be read or is not UTF-8.
    #[error("the request body could not be read: {0}")]
    BadBody(String),
    /// The offer is not acceptable SDP.
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// Negotiation failed on an offer that passed the checks.
    #[error("the offer could not be negotiated: {0}")]
    Negotiation(String),
    /// A bad query parameter (WebSocket `rate`).
    #[error("{0}")]
    BadParameter(String),
    /// The worker drains and takes no new connections.
    #[error("the worker is draining and accepts no new connections")]
    Draining,
    /// The worker has no signing key, so no token can be checked.
    #[error("the worker has no SESSION_SIGNING_KEY and cannot check join tokens")]
    NotConfigured,
    /// Setting up media failed on the worker's side.
    #[error("the worker could not set up media: {0}")]
    Internal(String),
}

impl SignalingError {
    /// Stable CamelCase reason: the JSON `code` and the `result` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SignalingError::MissingToken => "TokenMissing",
            SignalingError::Token(e) => e.reason(),
            SignalingError::ClientToken { .. } => "TokenRefused",
            SignalingError::SessionNotFound(_) => "SessionNotFound",
            SignalingError::ConnectionNotFound(_) => "ConnectionNotFound",
            SignalingError::AlreadyConnected(_) => "AlreadyConnected",
            SignalingError::UnknownParticipant(_) => "UnknownParticipant",
            SignalingError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            SignalingError::Fragment(e) => e.reason(),
            SignalingError::PreconditionFailed { .. } => "PreconditionFailed",
            SignalingError::IceRestartUnsupported => "IceRestartUnsupported",
            SignalingError::TooManyCandidates(_) => "TooManyCandidates",
            SignalingError::CandidateRefused(_) => "CandidateRefused",
            SignalingError::TooLarge(_) => "BodyTooLarge",
            SignalingError::BodyTimeout(_) => "BodyTimeout",
            SignalingError::BadBody(_) => "BadBody",
            SignalingError::Offer(e) => e.reason(),
            SignalingError::Negotiation(_) => "NegotiationFailed",
            SignalingError::BadParameter(_) => "BadParameter",
            SignalingError::Draining => "Draining",
            SignalingError::NotConfigured => "NotConfigured",
            SignalingError::Internal(_) => "Internal",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            SignalingError::MissingToken | SignalingError::ClientToken { .. } => {
                StatusCode::UNAUTHORIZED
            }
            SignalingError::Token(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            SignalingError::SessionNotFound(_) | SignalingError::ConnectionNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            SignalingError::AlreadyConnected(_) => StatusCode::CONFLICT,
            SignalingError::UnknownParticipant(_) => StatusCode::FORBIDDEN,
            SignalingError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            SignalingError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            SignalingError::IceRestartUnsupported => StatusCode::UNPROCESSABLE_ENTITY,
            SignalingError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            SignalingError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            SignalingError::BadBody(_)
            | SignalingError::Fragment(_)
            | SignalingError::CandidateRefused(_)
            | SignalingError::TooManyCandidates(_)
            | SignalingError::Offer(_)
            | SignalingError::Negotiation(_)
            | SignalingError::BadParameter(_) => StatusCode::BAD_REQUEST,
            SignalingError::Draining | SignalingError::NotConfigured => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SignalingError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for SignalingError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.reason(), "message": self.to_string() });
        let mut response = (self.status(), body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status() == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The signaling routes and the demo page, merged into the worker's HTTP router. The WHIP
/// routes answer cross-origin requests from `allowed_origins` only (see [`crate::cors`]).
pub fn router(ctx: Arc<MediaContext>) -> Router {
    let whip = Router::new()
        .route(OFFER_PATH, post(offer))
        .route(
            CONNECTION_PATH,
            axum::routing::patch(trickle_ice).delete(hang_up),
        )
        .route(crate::ice_endpoint::PATH, get(crate::ice_endpoint::serve))
        .with_state(ctx.clone());
    let whip = match crate::cors::layer(&ctx.allowed_origins) {
        Some(cors) => whip
            .layer(cors)
            .layer(axum::middleware::map_response(crate::cors::strip_refused)),
        None => whip,
    };
    Router::new()
        .route(WEBSOCKET_PATH, get(websocket_upgrade))
        .route(TWILIO_PATH, get(twilio_upgrade))
        .with_state(ctx)
        .merge(whip)
        .merge(crate::demo::router())
}

/// Who a client is, once its token checked out.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The held session's uid.
    pub uid: String,
    /// The participant (userID) the token admits.
    pub participant: String,
    /// When the token expires, Unix seconds (it bounds TURN credentials).
    pub exp: u64,
}

/// Checks that a client may connect to `session_id` now: the worker takes connections,
/// the session holds a slot here, and the token is the session's join token or (with
/// `spec.clientAuth`) an application JWT, naming one of its participants.
pub(crate) fn admit(
    ctx: &MediaContext,
    session_id: &str,
    token: Option<&str>,
) -> Result<Admitted, SignalingError> {
    if ctx.sessions.watch().borrow().draining() {
        return Err(SignalingError::Draining);
    }
    identify(ctx, session_id, token)
}

/// [`admit`] without the drain check: requests on an existing connection (hang-up, trickle)
/// concern media already admitted.
fn identify(
    ctx: &MediaContext,
    session_id: &str,
    token: Option<&str>,
) -> Result<Admitted, SignalingError> {
    let keys = ctx
        .signing_keys
        .get()
        .ok_or(SignalingError::NotConfigured)?;
    let uid = ctx
        .sessions
        .held_uid(session_id)
        .ok_or_else(|| SignalingError::SessionNotFound(session_id.to_owned()))?;
    let token = token.ok_or(SignalingError::MissingToken)?;
    let (user, exp) = match token::verify_with(&keys, token, session_id, &uid, unix_now()) {
        Ok(claims) => (claims.user, claims.exp),
        Err(join) => match ctx.client_auth.as_deref() {
            None => return Err(join.into()),
            Some(Err(config)) => {
                return Err(SignalingError::ClientToken {
                    join,
                    app: format!("spec.clientAuth cannot be used: {config}"),
                });
            }
            Some(Ok(app)) => match app.verify(token) {
                Ok(user) => (user.user, user.exp),
                Err(app) => return Err(SignalingError::ClientToken { join, app }),
            },
        },
    };
    let participant = ctx.sessions.participant(session_id, &user)?;
    Ok(Admitted {
        uid,
        participant,
        exp,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Counts the outcome of an offer or upgrade and turns an error into its response.
fn counted(metrics: &MediaMetrics, result: Result<Response, SignalingError>) -> Response {
    match result {
        Ok(response) => {
            metrics.count_offer("accepted");
            response
        }
        Err(e) => {
            metrics.count_offer(e.reason());
            tracing::info!(code = e.reason(), error = %e, "signaling request refused");
            e.into_response()
        }
    }
}

async fn offer(
    State(ctx): State<Arc<MediaContext>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = answer_offer(&ctx, format!("{namespace}/{name}"), &headers, body).await;
    counted(&ctx.metrics, result)
}

async fn answer_offer(
    ctx: &Arc<MediaContext>,
    session_id: String,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, SignalingError> {
    require_content_type(headers, "application/sdp")?;
    let offer = read_body(ctx, headers, body).await?;
    let claims = admit(ctx, &session_id, bearer(headers))?;
    let (uid, participant) = (claims.uid.clone(), claims.participant.clone());
    let info = sdp::check_offer(&offer)?;
    let offer = candidate_policy::filter_offer(&offer, ctx.allow_private_candidates)?;
    for reason in &offer.skipped {
        ctx.metrics.count_dropped(reason);
    }
    // No capacity check here: only a session this worker holds gets this far, and each
    // holds one slot, so a second client of a connected session is `AlreadyConnected`, and a
    // held session keeps its right to connect even if the worker's capacity was lowered.
    let claim = ctx
        .connections
        .claim(&session_id, &uid, &participant, Transport::WebRtc)?;
    let connection_id = claim.connection_id.clone();
    let answered = peer::answer(ctx.clone(), claim, offer, info).await?;
    let location = format!("/v1/sessions/{session_id}/connections/{connection_id}");
    let mut response = (StatusCode::CREATED, answered.sdp).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(etag) = HeaderValue::from_str(&answered.etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    let servers = ctx.ice_servers.for_session(&session_id, claims.exp);
    for link in crate::ice_servers::link_headers(&servers) {
        if let Ok(link) = HeaderValue::from_str(&link) {
            headers.append(header::LINK, link);
        }
    }
    tracing::info!(session = %session_id, connection = %connection_id, "WebRTC offer answered");
    Ok(response)
}

/// Refuses a body whose `Content-Type` is not `expected` (parameters allowed).
fn require_content_type(headers: &HeaderMap, expected: &'static str) -> Result<(), SignalingError> {
    let matches = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected));
    if matches {
        Ok(())
    } else {
        Err(SignalingError::UnsupportedMediaType(expected))
    }
}

/// Reads the offer body within the size limit and the body timeout.
async fn read_body(
    ctx: &MediaContext,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, SignalingError> {
    let limit = ctx.max_offer_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(SignalingError::TooLarge(limit));
    }
    let bytes = tokio::time::timeout(ctx.body_timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| SignalingError::BodyTimeout(ctx.body_timeout))?
        .map_err(|e| {
            // `to_bytes` reports the limit as a length-limit error in its source chain.
            let text = format!("{e:?}");
            if text.contains("LengthLimit") {
                SignalingError::TooLarge(limit)
            } else {
                SignalingError::BadBody(e.to_string())
            }
        })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| SignalingError::BadBody("not UTF-8".into()))
}

/// Checks the token of a request on an existing connection (hang-up, trickle). Unlike
/// [`admit`], a draining worker still takes these: they concern media already admitted.
fn authorize_existing(
    ctx: &MediaContext,
    session_id: &str,
    headers: &HeaderMap,
) -> Result<(), SignalingError> {
    identify(ctx, session_id, bearer(headers)).map(|_| ())
}

/// Trickle ICE (RFC 9725 §4.3.2): adds the client's candidates to its connection.
async fn trickle_ice(
    State(ctx): State<Arc<MediaContext>>,
    Path((namespace, name, connection)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let session_id = format!("{namespace}/{name}");
    let result = add_trickled(&ctx, &session_id, &connection, &headers, body).await;
    match result {
        Ok(()) => {
            ctx.metrics.count_trickle("accepted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            ctx.metrics.count_trickle(e.reason());
            tracing::info!(session = %session_id, connection = %connection, code = e.reason(), error = %e, "trickle ICE refused");
            e.into_response()
        }
    }
}

async fn add_trickled(
    ctx: &MediaContext,
    session_id: &str,
    connection: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), SignalingError> {
    require_content_type(headers, TRICKLE_CONTENT_TYPE)?;
    let body = read_body(ctx, headers, body).await?;
    authorize_existing(ctx, session_id, headers)?;
    let peer = ctx
        .peers
        .get(session_id, connection)
        .ok_or_else(|| SignalingError::ConnectionNotFound(connection.to_owned()))?;
    if let Some(given) = headers.get(header::IF_MATCH) {
        let given = given.to_str().unwrap_or_default();
        if !trickle::if_match(given, &peer.etag) {
            return Err(SignalingError::PreconditionFailed {
                given: given.to_owned(),
                current: peer.etag.clone(),
            });
        }
    }
    let fragment = trickle::parse(&body)?;
    let (remote_ufrag, remote_pwd) = &peer.remote_credentials;
    let restarts = |given: &Option<String>, current: &Option<String>| {
        given.is_some() && current.is_some() && given != current
    };
    if restarts(&fragment.ufrag, remote_ufrag) || restarts(&fragment.pwd, remote_pwd) {
        return Err(SignalingError::IceRestartUnsupported);
    }
    let signalled = peer.signalled.fetch_add(
        fragment.candidates.len(),
        std::sync::atomic::Ordering::AcqRel,
    ) + fragment.candidates.len();
    if signalled > MAX_CANDIDATES {
        return Err(TooManyCandidates(signalled).into());
    }
    for candidate in fragment.candidates {
        if let Verdict::Skip(reason) =
            candidate_policy::judge(&candidate.candidate, ctx.allow_private_candidates)
        {
            ctx.metrics.count_dropped(reason);
            tracing::debug!(session = %session_id, reason, "trickled candidate not used");
            continue;
        }
        let init = webrtc::peer_connection::RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.mid,
            sdp_mline_index: Some(candidate.mline_index),
            username_fragment: fragment.ufrag.clone(),
            ..Default::default()
        };
        peer.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| SignalingError::CandidateRefused(e.to_string()))?;
    }
    // `a=end-of-candidates` needs no action: the `webrtc` 0.21 ICE agent has no remote
    // end-of-candidates signal and keeps checking the pairs it has until ICE completes.
    Ok(())
}

async fn hang_up(
    State(ctx): State<Arc<MediaContext>>,
    Path((namespace, name, connection)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let session_id = format!("{namespace}/{name}");
    let result = (|| {
        authorize_existing(&ctx, &session_id, &headers)?;
        if ctx.connections.hang_up(&session_id, &connection) {
            Ok(StatusCode::OK.into_response())
        } else {
            Err(SignalingError::ConnectionNotFound(connection.clone()))
        }
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn websocket_upgrade(
    State(ctx): State<Arc<MediaContext>>,
    Path((namespace, name)): Path<(String, String)>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: WebSocketUpgrade,
) -> Response {
    let session_id = format!("{namespace}/{name}");
    let result = (|| {
        let query = uri.query().unwrap_or_default();
        // Browsers cannot set Authorization on a WebSocket: they offer the token as a
        // subprotocol. The query string stays a fallback (it ends up in access logs).
        let protocols = headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let offered = ws_rules::token_from_protocols(protocols)
            .map_err(|e| SignalingError::BadParameter(e.to_owned()))?;
        let token = bearer(&headers)
            .or(offered)
            .or_else(|| query_param(query, "token"));
        let Admitted {
            uid, participant, ..
        } = admit(&ctx, &session_id, token)?;
        let shape = websocket_shape(&ctx, &session_id, query_param(query, "rate"))?;
        let claim = ctx
            .connections
            .claim(&session_id, &uid, &participant, Transport::WebSocket)?;
        let ctx = ctx.clone();
        // Sizes are enforced by the framing layer while reading (before buffering); only
        // the non-secret subprotocol is echoed.
        Ok(upgrade
            .max_message_size(shape.max_message)
            .max_frame_size(shape.max_message)
            .protocols([ws_rules::SUBPROTOCOL])
            .on_upgrade(move |socket| websocket::serve(ctx, claim, socket, shape, remote))
            .into_response())
    })();
    counted(&ctx.metrics, result)
}

/// Twilio cannot send a token with the upgrade (no headers, no query string): the worker
/// upgrades for a session it holds and checks the token in the stream's `start` message.
async fn twilio_upgrade(
    State(ctx): State<Arc<MediaContext>>,
    Path((namespace, name)): Path<(String, String)>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let session_id = format!("{namespace}/{name}");
    let result = (|| {
        if ctx.sessions.watch().borrow().draining() {
            return Err(SignalingError::Draining);
        }
        if ctx.sessions.held_uid(&session_id).is_none() {
            return Err(SignalingError::SessionNotFound(session_id.clone()));
        }
        let ctx = ctx.clone();
        Ok(upgrade
            .max_message_size(twilio_stream::MAX_MESSAGE_BYTES)
            .max_frame_size(twilio_stream::MAX_MESSAGE_BYTES)
            .on_upgrade(move |socket| twilio_stream::serve(ctx, session_id, socket, remote))
            .into_response())
    })();
    counted(&ctx.metrics, result)
}

/// The rate and message limit of a WebSocket to `session_id`: the client's `rate` if it
/// names one, else the session's `spec.audio` as reserved (48 kHz and 96000 bytes unless set).
fn websocket_shape(
    ctx: &MediaContext,
    session_id: &str,
    asked: Option<&str>,
) -> Result<websocket::Shape, SignalingError> {
    let audio = ctx
        .sessions
        .session_config(session_id)
        .and_then(|c| c.audio)
        .unwrap_or_default();
    let hz = match asked {
        None => Some(audio.sample_rate),
        Some(text) => text.parse().ok(),
    };
    let rate = hz.and_then(websocket::Rate::new).ok_or_else(|| {
        SignalingError::BadParameter(format!(
            "rate must be one of 8000, 16000, 24000 or 48000 (PCM16 Hz), not {}",
            asked.unwrap_or_default()
        ))
    })?;
    // The reservation's limit was checked when it was parsed; the clamp keeps the rule
    // here too, so no session can make the framing layer buffer more.
    let max = audio
        .buffer_bytes
        .clamp(1, voice_proto::session_audio::MAX_BUFFER_BYTES);
    Ok(websocket::Shape {
        rate,
        max_message: usize::try_from(max).unwrap_or(ws_rules::MAX_MESSAGE_BYTES),
    })
}

/// The value of `name` in a query string. Tokens and rates need no percent-decoding
/// (JWTs are URL-safe base64 with dots).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_the_documented_status() {
        let cases = [
            (SignalingError::MissingToken, 401),
            (
                SignalingError::Token(TokenError::Expired { exp: 1, now: 2 }),
                401,
            ),
            (
                SignalingError::Token(TokenError::WrongSession {
                    token_session: "a/b".into(),
                    requested: "a/c".into(),
                }),
                403,
            ),
            (SignalingError::SessionNotFound("a/b".into()), 404),
            (SignalingError::Offer(OfferError::NoOpus), 400),
            (SignalingError::TooLarge(65_536), 413),
            (
                SignalingError::UnsupportedMediaType(TRICKLE_CONTENT_TYPE),
                415,
            ),
            (
                SignalingError::PreconditionFailed {
                    given: "\"a\"".into(),
                    current: "\"b\"".into(),
                },
                412,
            ),
            (SignalingError::IceRestartUnsupported, 422),
            (SignalingError::Fragment(FragError::Empty), 400),
            (SignalingError::ConnectionNotFound("c".into()), 404),
            (SignalingError::Draining, 503),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{}", error.reason());
        }
    }

    #[test]
    fn bearer_tokens_and_query_parameters_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(bearer(&headers), Some("abc.def"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&headers), None);
        assert_eq!(query_param("token=t.u.v&rate=16000", "rate"), Some("16000"));
        assert_eq!(query_param("token=t.u.v", "rate"), None);
    }
}
