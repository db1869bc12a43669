//! Malicious providers (on loopback, OpenAI wire formats) behind a real worker process:
//! each case speaks one turn over a WebSocket and asserts the exact event the client gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::Worker;
use crate::hostile::providers::{self, Chat, Seen, Stt, find, one_turn};
use crate::hostile::{recovered_serving_events, reserve_with};

/// A worker whose pipeline uses the fake providers, with one session reserved on it.
async fn with_providers(stt: Stt, chat: Chat, stt_timeout: &str) -> (Worker, Arc<Mutex<Seen>>) {
    let (addr, seen) = providers::serve(stt, chat).await;
    let pipeline = providers::pipeline(addr, stt_timeout, "5");
    let worker = Worker::start_with_env(2, &[("VOICE_PIPELINE", &pipeline)]);
    reserve_with(&worker, "team/call", "uid-call", "").await;
    (worker, seen)
}

fn is_error(event: &serde_json::Value) -> bool {
    event["type"] == "error"
}

fn is_agent_transcript(event: &serde_json::Value) -> bool {
    event["type"] == "transcript" && event["role"] == "agent"
}

fn hello() -> Chat {
    Chat::Deltas(vec!["It is ".into(), "noon.".into()])
}

#[tokio::test]
async fn a_huge_provider_error_body_is_not_read_and_its_message_is_capped() {
    let (worker, _) = with_providers(Stt::HugeErrorBody, hello(), "10").await;
    let (events, took) = one_turn(&worker, "team/call", "uid-call", is_error).await;
    let error = find(&events, "error", None).unwrap_or_else(|| panic!("no error: {events:?}"));
    assert_eq!(error["reason"], "ProviderFailed");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("openai-stt: HTTP 500: xxx"),
        "{message}"
    );
    assert!(message.len() <= 600, "{} bytes", message.len());
    assert!(took < Duration::from_secs(5), "{took:?}");
    recovered_serving_events(&worker).await;
}

#[tokio::test]
async fn a_stalled_provider_error_body_still_reports_the_status_in_time() {
    let (worker, _) = with_providers(Stt::StalledErrorBody, hello(), "10").await;
    let (events, took) = one_turn(&worker, "team/call", "uid-call", is_error).await;
    let error = find(&events, "error", None).unwrap_or_else(|| panic!("no error: {events:?}"));
    assert_eq!(error["reason"], "ProviderFailed");
    assert_eq!(error["message"], "openai-stt: HTTP 500: {\"error\":");
    // ERROR_BODY_TIMEOUT (2 s) after the turn ended, not the minute the server stalls.
    assert!(took < Duration::from_secs(5), "{took:?}");
    recovered_serving_events(&worker).await;
}

#[tokio::test]
async fn a_stalled_provider_answer_times_out() {
    let (worker, _) = with_providers(Stt::StalledAnswer, hello(), "1").await;
    let (events, took) = one_turn(&worker, "team/call", "uid-call", is_error).await;
    let error = find(&events, "error", None).unwrap_or_else(|| panic!("no error: {events:?}"));
    assert_eq!(error["reason"], "ProviderTimeout");
    assert!(took < Duration::from_secs(5), "{took:?}");
    recovered_serving_events(&worker).await;
}

#[tokio::test]
async fn out_of_range_numbers_and_unparsable_timeouts_do_not_panic() {
    for stt_timeout in ["NaN", "inf", "-1", "1e300", "0"] {
        let (worker, _) = with_providers(Stt::OutOfRangeNumbers, hello(), stt_timeout).await;
        let (events, _) = one_turn(&worker, "team/call", "uid-call", is_agent_transcript).await;
        let user = find(&events, "transcript", Some("user"))
            .unwrap_or_else(|| panic!("{stt_timeout}: {events:?}"));
        assert_eq!(user["text"], "what time is it");
        let agent =
            find(&events, "transcript", Some("agent")).unwrap_or_else(|| panic!("{events:?}"));
        assert_eq!(agent["text"], "It is noon.");
        recovered_serving_events(&worker).await;
    }
}

#[tokio::test]
async fn nan_in_a_provider_answer_is_a_malformed_answer() {
    let (worker, _) = with_providers(Stt::NanNumber, hello(), "10").await;
    let (events, _) = one_turn(&worker, "team/call", "uid-call", is_error).await;
    let error = find(&events, "error", None).unwrap_or_else(|| panic!("no error: {events:?}"));
    assert_eq!(error["reason"], "ProviderMalformed");
    recovered_serving_events(&worker).await;
}

#[tokio::test]
async fn an_endless_agent_reply_is_cut_at_the_reply_cap_and_the_turn_ends() {
    let (worker, seen) = with_providers(Stt::Fine, Chat::Endless, "10").await;
    let (events, _) = one_turn(&worker, "team/call", "uid-call", is_agent_transcript).await;
    let agent = find(&events, "transcript", Some("agent")).unwrap_or_else(|| panic!("{events:?}"));
    let text = agent["text"].as_str().unwrap_or_default();
    // MAX_REPLY_BYTES is 4096: "word " repeated, cut there and trimmed.
    assert_eq!(
        text,
        "word ".repeat(819).trim_end().to_owned() + " w",
        "{} bytes",
        text.len()
    );
    let spoken: usize = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tts_inputs
        .iter()
        .map(String::len)
        .sum();
    assert!(spoken <= 4_096, "{spoken} bytes spoken");
    recovered_serving_events(&worker).await;
}

#[tokio::test]
async fn invalid_utf8_from_a_provider_becomes_replacement_characters() {
    let (worker, _) = with_providers(Stt::Fine, Chat::InvalidUtf8, "10").await;
    let (events, _) = one_turn(&worker, "team/call", "uid-call", is_agent_transcript).await;
    let agent = find(&events, "transcript", Some("agent")).unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(agent["text"], "ok \u{fffd}\u{fffd}\u{fffd} done");
    recovered_serving_events(&worker).await;
}

#[tokio::test]
async fn a_non_ascii_reply_without_a_sentence_end_is_spoken_in_whole_characters() {
    let reply = "天気は晴れで気温は二十度です".repeat(10);
    let deltas = reply
        .chars()
        .collect::<Vec<_>>()
        .chunks(7)
        .map(|c| c.iter().collect())
        .collect();
    let (worker, seen) = with_providers(Stt::Fine, Chat::Deltas(deltas), "10").await;
    let (events, _) = one_turn(&worker, "team/call", "uid-call", is_agent_transcript).await;
    let agent = find(&events, "transcript", Some("agent")).unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(agent["text"], reply.as_str());
    let inputs = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tts_inputs
        .clone();
    assert!(
        inputs.len() >= 2,
        "the reply went to TTS in pieces: {inputs:?}"
    );
    assert!(
        inputs.iter().all(|i| !i.is_empty() && i.len() <= 200),
        "{inputs:?}"
    );
    assert_eq!(inputs.concat(), reply);
    recovered_serving_events(&worker).await;
}
