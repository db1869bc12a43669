//! The demo page (`GET /demo`): a person opens it in a browser, gives a join token (or
//! follows a link with `?session=ns/name&token=…`), talks into the microphone and hears
//! the backend answer — through the same WHIP endpoint any client uses. Its peer connection
//! is built with the session's STUN/TURN servers (`GET …/ice-servers`, credentials minted
//! for the session); `&relay=1` forces every packet through TURN. The page and its
//! script are compiled into the binary (no CDN, nothing fetched at run time).
//!
//! The script names the offer endpoint by the same template as the router
//! ([`crate::signaling::OFFER_PATH`]); a unit test here and an end-to-end test against the
//! worker keep the two from drifting apart.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page.
pub const PAGE: &str = include_str!("../static/demo.html");

/// The page's script.
pub const SCRIPT: &str = include_str!("../static/demo.js");

/// Where the page is served.
pub const PAGE_PATH: &str = "/demo";

/// Where the page's script is served (the page refers to it by this path).
pub const SCRIPT_PATH: &str = "/demo/demo.js";

/// What the page may load and connect to: only this worker. Media and the WHIP requests
/// are same-origin; `media-src blob:` is not needed as the audio element plays a stream.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; media-src 'self'";

/// The page's routes.
pub fn router() -> Router {
    Router::new()
        .route(PAGE_PATH, get(page))
        .route(SCRIPT_PATH, get(script))
}

async fn page() -> Response {
    static_response(PAGE, "text/html; charset=utf-8")
}

async fn script() -> Response {
    static_response(SCRIPT, "text/javascript; charset=utf-8")
}

fn static_response(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// The string constant `name` of the script (`const NAME = "…";`), if it has one.
pub fn script_constant(script: &str, name: &str) -> Option<String> {
    let start = script.find(&format!("const {name} = \""))? + name.len() + 10;
    let len = script[start..].find('"')?;
    Some(script[start..start + len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::{OFFER_PATH, TRICKLE_CONTENT_TYPE};

    #[test]
    fn the_script_offers_where_the_router_listens() {
        assert_eq!(
            script_constant(SCRIPT, "OFFER_PATH").as_deref(),
            Some(OFFER_PATH)
        );
        assert_eq!(
            script_constant(SCRIPT, "TRICKLE_CONTENT_TYPE").as_deref(),
            Some(TRICKLE_CONTENT_TYPE)
        );
        assert_eq!(
            script_constant(SCRIPT, "ICE_SERVERS_PATH").as_deref(),
            Some(crate::ice_endpoint::PATH)
        );
    }

    #[test]
    fn the_page_loads_its_script_from_its_route_and_nothing_from_elsewhere() {
        assert!(PAGE.contains(&format!("src=\"{SCRIPT_PATH}\"")), "{PAGE}");
        for text in [PAGE, SCRIPT] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
