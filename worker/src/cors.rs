//! Cross-origin calls to the WHIP endpoints (CORS), for a web app served from its own
//! origin: only origins listed in `ALLOWED_ORIGINS` (the backend's
//! `spec.workers.network.allowedOrigins`) get `Access-Control-Allow-Origin`; every other
//! origin gets no CORS header, so its browser refuses the call. With no origins listed
//! there is no CORS layer at all (same-origin only, as the worker's demo page).
//!
//! The answer's `Location` (where to trickle and hang up), `Link` (ICE servers) and `ETag`
//! (trickle `If-Match`) are exposed to the calling script, which needs all three.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a WHIP client sends.
const ALLOWED_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::IF_MATCH,
];

/// Response headers the calling script may read.
const EXPOSED_HEADERS: [HeaderName; 3] = [header::LOCATION, header::LINK, header::ETAG];

/// The CORS layer for `origins`; `None` when there are none (or none is a valid header).
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// Drops every CORS header from a response that does not allow its origin: `CorsLayer`
/// still lists exposed headers and methods for an origin it refuses, and a refused origin
/// should learn nothing.
pub async fn strip_refused(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
    }
    response
}
