//! The seed's AgentCallback as an HTTP webhook: the worker POSTs each user turn as JSON
//! and the agent answers with
//! - `text/event-stream`: each event's data is a text delta (or JSON `{"text": ...}`),
//!   ended by `[DONE]` or the end of the body;
//! - `application/json`: `{"text": "..."}`, the whole reply;
//! - anything else: the body itself, streamed chunk by chunk as deltas.
//!
//! A connection error, a timeout before the first byte, 429 or a 5xx is retried `retries`
//! times with exponential backoff (200 ms, 400 ms, ...) — but only while nothing of the
//! reply has been passed on, so the user never hears a reply twice.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::sse::SseParser;
use super::{Agent, AgentTurn, ErrorKind, HttpTarget, ProviderError};

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
            let body = tokio::time::timeout(self.target.timeout, response.bytes())
                .await
                .map_err(|_| {
                    ProviderError::new(NAME, ErrorKind::Timeout, "the reply body stalled")
                })?
                .map_err(|e| super::http_error(NAME, &e))?;
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
            *sent = true;
            let _ = deltas.send(text.to_owned()).await;
            return Ok(());
        }
        let sse = kind.starts_with("text/event-stream");
        let mut parser = SseParser::default();
        while let Some(chunk) = self.target.chunk(NAME, &mut response).await? {
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
                vec![String::from_utf8_lossy(&chunk).into_owned()]
            };
            for text in texts.into_iter().filter(|t| !t.is_empty()) {
                *sent = true;
                if deltas.send(text).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
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
}
