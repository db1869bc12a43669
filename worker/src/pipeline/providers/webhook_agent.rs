//! The seed's AgentCallback as an HTTP webhook: the worker POSTs each user turn as JSON
//! and the agent answers with
//! - `text/event-stream`: each event's data is a text delta (or JSON `{"text": ...}`),
//!   ended by `[DONE]` or the end of the body;
//! - `application/json`: `{"text": "..."}`, the whole reply; `"hangup": "<reason>"` beside
//!   it ends the session once the reply has been spoken;
//! - anything else: the body itself, streamed chunk by chunk as deltas.
//!
//! The request body carries the session (`session_id`, `uid`, `user_id`), its metadata as
//! it is at this turn (edits to `spec.metadata` show up here), the turn and the history.
//!
//! A connection error, a timeout before the first byte, 429 or a 5xx is retried `retries`
//! times with exponential backoff (200 ms, 400 ms, ...) — but only while nothing of the
//! reply has been passed on, so the user never hears a reply twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::sse::SseParser;
use super::{
    AfterTurn, Agent, AgentTurn, BodyLimit, ErrorKind, HttpTarget, MAX_JSON_BODY_BYTES,
    MAX_STREAM_BYTES, MAX_STREAM_DURATION, ProviderError,
};

const NAME: &str = "webhook";

/// First retry delay; doubled each time.
const BACKOFF: Duration = Duration::from_millis(200);

/// An HTTP agent callback.
#[derive(Clone, Debug)]
pub struct WebhookAgent {
    /// The URL (as `base`, with an empty path) and timeout; `model` is unused.
    pub target: HttpTarget,
    /// Retries after a retryable failure.
    pub retries: u32,
    /// Session id sent along, so one webhook can serve many sessions.
    pub session_id: String,
    /// The session's uid and user, sent along.
    pub identity: crate::pipeline::spec::Identity,
    /// The session's metadata, read at each turn.
    pub metadata: crate::pipeline::metadata::MetadataFeed,
    /// A hang-up the last reply asked for.
    pub after: Arc<Mutex<AfterTurn>>,
}

impl WebhookAgent {
    /// A webhook at `target` for session `session_id`, retrying `retries` times.
    pub fn new(target: HttpTarget, retries: u32, session_id: &str) -> Self {
        Self {
            target,
            retries,
            session_id: session_id.to_owned(),
            identity: Default::default(),
            metadata: Default::default(),
            after: Default::default(),
        }
    }
}

impl WebhookAgent {
    async fn attempt(
        &self,
        turn: &AgentTurn,
        deltas: &mpsc::Sender<String>,
        sent: &mut bool,
    ) -> Result<(), ProviderError> {
        let history: Vec<serde_json::Value> = turn
            .history
            .iter()
            .map(|(role, text)| serde_json::json!({"role": role, "text": text}))
            .collect();
        let body = serde_json::json!({
            "session_id": self.session_id,
            "uid": self.identity.uid,
            "user_id": self.identity.user_id,
            "user_metadata": self.identity.user_metadata(),
            "participants": self.identity.participants()
                .map(|(id, metadata)| serde_json::json!({"user_id": id, "metadata": metadata}))
                .collect::<Vec<_>>(),
            "metadata": self.metadata.current(),
            "turn_id": turn.turn_id,
            "text": turn.text,
            "history": history,
        });
        let request = self
            .target
            .post("")
            .header("content-type", "application/json")
            .header(
                "accept",
                "text/event-stream, application/json;q=0.9, text/plain;q=0.8",
            )
            .body(body.to_string());
        let mut response = self.target.send(NAME, request).await?;
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if kind.starts_with("application/json") {
            let body = self
                .target
                .body(NAME, response, MAX_JSON_BODY_BYTES)
                .await?;
            let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                ProviderError::new(
                    NAME,
                    ErrorKind::Malformed,
                    format!("the reply is not JSON: {e}"),
                )
            })?;
            let text = value.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                ProviderError::new(NAME, ErrorKind::Malformed, "the JSON reply has no \"text\"")
            })?;
            if let Some(reason) = value.get("hangup") {
                let reason = reason
                    .as_str()
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or("the agent ended the call");
                self.after
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .hangup = Some(reason.to_owned());
            }
            *sent = true;
            let _ = deltas.send(text.to_owned()).await;
            return Ok(());
        }
        let sse = kind.starts_with("text/event-stream");
        let mut parser = SseParser::default();
        let mut limit = BodyLimit::new(MAX_STREAM_BYTES, MAX_STREAM_DURATION);
        // Plain-text bodies may split a character across chunks: carry the incomplete tail.
        let mut partial: Vec<u8> = Vec::new();
        while let Some(chunk) = self.target.chunk(NAME, &mut response, &mut limit).await? {
            if deltas.is_closed() {
                return Ok(()); // cancelled, or the reply reached its length cap
            }
            let texts: Vec<String> = if sse {
                let events = parser
                    .push(&chunk)
                    .map_err(|e| ProviderError::new(NAME, ErrorKind::Malformed, e.to_string()))?;
                let mut texts = Vec::new();
                for event in events {
                    if event.data.trim() == "[DONE]" {
                        for t in texts {
                            *sent = true;
                            let _ = deltas.send(t).await;
                        }
                        return Ok(());
                    }
                    let text = serde_json::from_str::<serde_json::Value>(&event.data)
                        .ok()
                        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned))
                        .unwrap_or(event.data);
                    texts.push(text);
                }
                texts
            } else {
                partial.extend_from_slice(&chunk);
                vec![take_text(&mut partial)]
            };
            for text in texts.into_iter().filter(|t| !t.is_empty()) {
                *sent = true;
                if deltas.send(text).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !partial.is_empty() {
            // The body ended inside a character: what is left is invalid, shown as U+FFFD.
            *sent = true;
            let _ = deltas
                .send(String::from_utf8_lossy(&partial).into_owned())
                .await;
        }
        Ok(())
    }
}

/// The text of `bytes` up to its last complete character, leaving an incomplete tail (at
/// most three bytes) in `bytes` for the next chunk; invalid sequences become U+FFFD.
fn take_text(bytes: &mut Vec<u8>) -> String {
    let rest = bytes.split_off(bytes.len() - incomplete_tail(bytes));
    let text = String::from_utf8_lossy(bytes).into_owned();
    *bytes = rest;
    text
}

/// How many bytes at the end of `bytes` start a multibyte character that is not complete.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let lead = bytes[bytes.len() - back];
        if lead & 0xC0 == 0x80 {
            continue; // a continuation byte: the character starts further back
        }
        let width = match lead {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { back } else { 0 };
    }
    0
}

impl Agent for WebhookAgent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reply<'a>(
        &'a self,
        turn: AgentTurn,
        deltas: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let mut delay = BACKOFF;
            let mut attempt = 0;
            loop {
                let mut sent = false;
                match self.attempt(&turn, &deltas, &mut sent).await {
                    Ok(()) => return Ok(()),
                    Err(e) if !sent && e.retryable() && attempt < self.retries => {
                        attempt += 1;
                        tracing::debug!(attempt, error = %e, "webhook agent failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn after_turn(&self) -> AfterTurn {
        std::mem::take(
            &mut *self
                .after
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_character_split_across_chunks_is_joined_and_invalid_bytes_are_replaced() {
        let mut partial = "caf\u{e9}".as_bytes()[..4].to_vec();
        assert_eq!(take_text(&mut partial), "caf");
        partial.extend_from_slice(&"\u{e9}!".as_bytes()[1..]);
        assert_eq!(take_text(&mut partial), "\u{e9}!");
        let mut invalid = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_text(&mut invalid), "a\u{fffd}b");
        assert!(invalid.is_empty());
    }

    proptest! {
        /// However valid UTF-8 is cut into chunks, the texts join to the original.
        #[test]
        fn chunking_never_changes_the_text(text in "\\PC{0,80}", cuts in proptest::collection::vec(0usize..400, 0..8)) {
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut partial = Vec::new();
            let mut out = String::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                partial.extend_from_slice(&bytes[last..c]);
                out.push_str(&take_text(&mut partial));
                last = c;
            }
            prop_assert!(partial.is_empty());
            prop_assert_eq!(out, text);
        }
    }
}
