//! The demo page, served by the real worker binary: its content types, that its script
//! offers where the worker listens, and a real browser — headless Chromium (Debian's
//! `chromium`, driven over the DevTools protocol, no extra flags) with a fake microphone —
//! that opens the page with a session link and:
//! - hears its 1 kHz tone back through the `echo` session, as the page's own `getStats()`
//!   and event log say;
//! - speaks a fixture sentence to the offline pipeline (pocketsphinx → echo agent →
//!   espeak-ng) and shows the conversation: the words heard, the agent's reply, the agent's
//!   states, the turn's latency and the configured providers;
//! - says in words why a call failed: an expired join token, a full worker.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{Worker, sine, token};

/// The fastest offline speech pipeline the other tests use (`pipeline_webrtc.rs`).
fn offline_pipeline() -> serde_json::Value {
    serde_json::json!({
        "pipeline": {"type": "STT_TTS", "stt": {"provider": "pocketsphinx"}, "tts": {"provider": "espeak"},
                     "vad": {"provider": "webrtc"},
                     "turnDetection": {"provider": "silence", "silenceTimeout": "600ms"}},
        "agent": {"type": "Echo"}
    })
}

/// Words pocketsphinx keeps getting right in espeak-ng's "please tell me about the weather".
const ROBUST: &[&str] = &["please", "aware", "about", "weather", "tell"];

/// The fixture sentence at 48 kHz, after half a second of silence and followed by 8 s of
/// it: Chromium loops the file, and the reply (about 3 s) must be over before the sentence
/// comes again, or the user would talk over it.
fn spoken_sentence() -> Vec<i16> {
    let wav = include_bytes!("fixtures/weather-16k.wav");
    let speech16 = voice_worker::pipeline::audio::parse_wav(wav).unwrap_or_else(|e| panic!("{e}"));
    let mut samples = vec![0i16; 24_000];
    samples.extend(voice_worker::pipeline::audio::resample(&speech16, 48_000));
    samples.extend(std::iter::repeat_n(0i16, 8 * 48_000));
    samples
}

/// The first turn of the page's conversation in which the user line has a word of the
/// sentence and the agent's line its words and its latency: (user line, agent line).
fn answered_turn(state: &serde_json::Value) -> Option<(&serde_json::Value, &serde_json::Value)> {
    lines(state, "user").into_iter().find_map(|user| {
        let heard = user["text"].as_str()?;
        if !heard.split_whitespace().any(|w| ROBUST.contains(&w)) {
            return None;
        }
        let agent = lines(state, "agent").into_iter().find(|a| {
            a["turnId"] == user["turnId"]
                && a["text"].as_str().is_some_and(|t| !t.is_empty())
                && a["latencyMs"].is_number()
        })?;
        Some((user, agent))
    })
}

/// The entries of the page's conversation spoken by `who`.
fn lines<'a>(state: &'a serde_json::Value, who: &str) -> Vec<&'a serde_json::Value> {
    state["conversation"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["who"] == who).collect())
        .unwrap_or_default()
}

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
        .watch_demo(Duration::from_secs(40), common::browser::heard_tone_back)
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

#[tokio::test]
async fn the_demo_page_shows_a_spoken_turn_of_the_offline_pipeline_as_a_conversation() {
    let worker = Worker::start_with_pipeline(1, Some(&offline_pipeline()));
    worker.reserve("team/talk-1", "uid-t1").await;
    let join = token("team/talk-1", "uid-t1", 600);
    let url = format!(
        "http://127.0.0.1:{}/demo?session=team/talk-1&token={join}",
        worker.http_port
    );
    let mut page = Browser::open(&url, &spoken_sentence(), &[]).await;

    // Done when a turn is answered. pocketsphinx does not hear every word of a sentence
    // that went through Chromium's audio processing and Opus, so a turn in which it heard
    // none of the sentence's words is followed by the next (the file loops every 10.5 s).
    let (state, connected_after) = page
        .watch_demo(Duration::from_secs(50), |state| {
            answered_turn(state).is_some()
        })
        .await;
    println!("chromium talking: connected after {connected_after:?}; {state}");
    assert!(
        state["errors"].as_array().is_some_and(Vec::is_empty),
        "the page reported errors: {state}"
    );
    assert_eq!(state["connectionState"], "connected", "{state}");

    // The backend the worker was configured with, not the transport's echo.
    assert_eq!(state["pipeline"], "STT_TTS", "{state}");
    assert_eq!(state["provider"], "pocketsphinx/echo/espeak", "{state}");

    // The user's line has words of the sentence; the agent's line answers that turn, with
    // the worker's own transcripts (not something the page made up).
    let (user, reply) = answered_turn(&state).unwrap_or_else(|| {
        panic!("no turn with a word of the sentence and an answer with its latency: {state}")
    });
    let heard = user["text"].as_str().unwrap_or_default();
    assert_eq!(reply["text"], format!("You said: {heard}."), "{state}");
    let said = |role: &str, text: &serde_json::Value| {
        state["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["type"] == "transcript"
                    && e["role"] == role
                    && e["turn_id"] == user["turnId"]
                    && &e["text"] == text
            })
        })
    };
    assert!(
        said("user", &user["text"]) && said("agent", &reply["text"]),
        "{state}"
    );
    // From the end of the user's speech to the reply's first audio: a real figure, not zero
    // and not a timestamp.
    let latency = reply["latencyMs"].as_f64().unwrap_or(-1.0);
    assert!(
        latency > 1.0 && latency < 20_000.0,
        "turn latency {latency} ms: {state}"
    );

    // The agent listened, thought and spoke, in that order.
    let states: Vec<&str> = state["agentStates"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    let at = |word: &str| {
        states
            .iter()
            .position(|s| *s == word)
            .unwrap_or_else(|| panic!("the agent was never {word}: {states:?}"))
    };
    assert!(
        at("listening") < at("thinking") && at("thinking") < at("speaking"),
        "{states:?}"
    );

    // And a person reading the page sees the same.
    let shown = page
        .evaluate("document.getElementById('conversation').innerText")
        .await;
    let shown = shown.as_str().unwrap_or_default();
    println!("the page shows:\n{shown}");
    assert!(
        shown.contains(heard) && shown.contains("You said:"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("answered {} ms", latency.round())),
        "{shown}"
    );
    let backend = page
        .evaluate("document.getElementById('provider').textContent")
        .await;
    assert_eq!(backend, "pocketsphinx/echo/espeak (STT_TTS)");
}

/// Waits until the page reports an error; its first one.
async fn first_error(page: &mut Browser) -> (serde_json::Value, serde_json::Value) {
    let (state, _) = page.watch_demo(Duration::from_secs(30), |_| false).await;
    let error = state["errors"][0].clone();
    assert!(error.is_object(), "the page reported no error: {state}");
    (error, state)
}

#[tokio::test]
async fn the_demo_page_says_in_words_that_the_link_expired_or_the_session_is_already_in_a_call() {
    let worker = Worker::start(1);
    worker.reserve("team/busy-1", "uid-busy").await;

    // A link whose token expired a minute ago.
    let expired = token("team/busy-1", "uid-busy", -60);
    let url = format!(
        "http://127.0.0.1:{}/demo?session=team/busy-1&token={expired}",
        worker.http_port
    );
    let mut page = Browser::open(&url, &sine(1_000.0, 48_000, 2.0), &[]).await;
    let (error, state) = first_error(&mut page).await;
    println!("chromium with an expired link: {state}");
    let expired_words = "The join link has expired: ask for a new session.";
    assert_eq!(error["code"], "TokenExpired", "{state}");
    assert_eq!(error["message"], expired_words, "{state}");
    assert_eq!(state["status"], expired_words, "{state}");
    let shown = page
        .evaluate("document.getElementById('status').textContent")
        .await;
    assert_eq!(shown, expired_words);
    drop(page);

    // A WebSocket client of the same session is already on: the page's offer is refused
    // `AlreadyConnected` (a session has one connection; a worker is never "full" for a
    // session it holds, because holding it is what takes the slot).
    let good = token("team/busy-1", "uid-busy", 600);
    let (_holder, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/v1/sessions/team/busy-1/ws?token={good}&rate=16000",
        worker.http_port
    ))
    .await
    .unwrap_or_else(|e| panic!("the WebSocket client could not connect: {e}"));
    let url = format!(
        "http://127.0.0.1:{}/demo?session=team/busy-1&token={good}",
        worker.http_port
    );
    let mut page = Browser::open(&url, &sine(1_000.0, 48_000, 2.0), &[]).await;
    let (error, state) = first_error(&mut page).await;
    println!("chromium on a session already in a call: {state}");
    assert_eq!(error["code"], "AlreadyConnected", "{state}");
    let busy_words = error["message"].as_str().unwrap_or_default();
    assert!(
        busy_words.starts_with("This session is already in a call"),
        "{state}"
    );
    assert_eq!(state["status"], busy_words, "{state}");
    assert_ne!(state["connectionState"], "connected", "{state}");
}
