//! The demo page, served by the real worker binary: its content types, that its script
//! offers where the worker listens, and a real browser — headless Chromium (Debian's
//! `chromium`, driven over the DevTools protocol) with a fake microphone playing a 1 kHz
//! tone — that opens the page with a session link, connects, and hears its tone back
//! through the `echo` session, as the page's own `getStats()` and event log say.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{Worker, sine, token};

#[tokio::test]
async fn the_demo_page_is_served_and_its_script_offers_where_the_worker_listens() {
    let worker = Worker::start(1);
    // Reserving first also waits until the worker listens.
    worker.reserve("team/page-1", "uid-p1").await;
    let page = worker.request("GET", "/demo", &[], b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.header("content-security-policy").is_some());
    assert!(
        page.body.contains(r#"<script src="/demo/demo.js">"#),
        "{}",
        page.body
    );

    let script = worker.request("GET", "/demo/demo.js", &[], b"").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );

    // The offer path the served script uses must reach the offer handler: with no token
    // it answers the handler's JSON refusal, not the router's bare 404 or 405.
    let template = voice_worker::demo::script_constant(&script.body, "OFFER_PATH")
        .unwrap_or_else(|| panic!("the script has no OFFER_PATH:\n{}", script.body));
    let path = template
        .replace("{namespace}", "team")
        .replace("{name}", "page-1");
    let refused = worker
        .request(
            "POST",
            &path,
            &[("Content-Type", "application/sdp")],
            b"v=0\r\n",
        )
        .await;
    assert_eq!(refused.status, 401, "{path}: {}", refused.body);
    assert_eq!(refused.code(), "TokenMissing", "{path}");
    // And the trickle media type it patches with is the one the server takes.
    assert_eq!(
        voice_worker::demo::script_constant(&script.body, "TRICKLE_CONTENT_TYPE").as_deref(),
        Some(voice_worker::signaling::TRICKLE_CONTENT_TYPE)
    );
}

#[tokio::test]
async fn headless_chromium_hears_its_tone_back_through_the_demo_page() {
    let worker = Worker::start(1);
    worker.reserve("team/browser-1", "uid-b1").await;
    let join = token("team/browser-1", "uid-b1", 600);
    let url = format!(
        "http://127.0.0.1:{}/demo?session=team/browser-1&token={join}",
        worker.http_port
    );
    // Chromium loops the file, so the microphone plays the tone for the whole call. A stock
    // browser: nothing lets it gather loopback candidates, so it reaches the worker's loopback
    // address from this machine's own address, as the local cluster's demo link must.
    let mut page = Browser::open(&url, &sine(1_000.0, 48_000, 2.0), &[]).await;

    // The page connects on its own (the link carries session and token); watch what it says.
    let (state, connected_after) = page
        .watch_demo(Duration::from_secs(40), |state| {
            state["maxAudioLevel"].as_f64().unwrap_or(0.0) > 0.05
                && state["inboundBytes"].as_u64().unwrap_or(0) > 10_000
        })
        .await;
    println!("chromium demo: connected after {connected_after:?}; {state}");
    assert!(
        state["errors"].as_array().is_some_and(Vec::is_empty),
        "the page reported errors: {state}"
    );
    assert_eq!(state["connectionState"], "connected", "{state}");
    let level = state["maxAudioLevel"].as_f64().unwrap_or(0.0);
    assert!(
        level > 0.05,
        "the echo of the tone never came back loud (max audioLevel {level}): {state}"
    );
    let kinds: Vec<&str> = state["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert!(kinds.contains(&"connected"), "session events: {kinds:?}");
    let address = page.evaluate("window.location.href").await;
    assert!(
        !address.as_str().unwrap_or_default().contains("token="),
        "the token stays in the address bar: {address}"
    );

    // Hanging up from the page ends the session on the worker.
    page.evaluate("document.getElementById('hangup').click(); true")
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let metrics = worker.metrics().await;
            if metrics.contains(r#"voice_worker_sessions_active{transport="webrtc"} 0"#)
                && metrics.contains(r#"voice_worker_sessions{state="active"} 0"#)
            {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the session did not end after the page hung up"));
    let trickled = ended
        .lines()
        .find(|l| l.starts_with(r#"voice_worker_trickle_patches_total{result="accepted"}"#))
        .unwrap_or("no trickle PATCH accepted");
    println!("chromium demo: {trickled}");
    assert!(worker.healthy().await);
}
