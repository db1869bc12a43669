//! `GET /v1/sessions/{namespace}/{name}/ice-servers`: the session's STUN/TURN servers as
//! `RTCIceServer` JSON, for a client that must configure its peer connection *before* it
//! offers (the demo page: a browser gathers relay candidates only from the servers it was
//! built with, and the answer's `Link` headers come too late for that). Same bearer token
//! and the same time-limited credentials as the offer's `Link` headers.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::signaling::{MediaContext, admit, bearer};

/// The route.
pub const PATH: &str = "/v1/sessions/{namespace}/{name}/ice-servers";

/// Answers the session's ICE servers, or the signaling refusal.
pub async fn serve(
    State(ctx): State<Arc<MediaContext>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let session_id = format!("{namespace}/{name}");
    match admit(&ctx, &session_id, bearer(&headers)) {
        Ok(claims) => {
            let servers = ctx.ice_servers.for_session(&session_id, claims.exp);
            let body = serde_json::json!({ "iceServers": servers });
            let mut response = (StatusCode::OK, body.to_string()).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // Credentials: never stored by a cache on the way.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => e.into_response(),
    }
}
