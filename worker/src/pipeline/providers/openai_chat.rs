//! LLM agent over an OpenAI-compatible chat-completions API (`POST /chat/completions`
//! with `stream: true`), which also serves vLLM, llama.cpp and other self-hosted servers.
//! The reply streams as server-sent events; each `choices[0].delta.content` is a delta.

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::sse::SseParser;
use super::{
    Agent, AgentTurn, BodyLimit, ErrorKind, HttpTarget, MAX_STREAM_BYTES, MAX_STREAM_DURATION,
    ProviderError,
};

const NAME: &str = "openai-chat";

/// A chat-completions agent.
#[derive(Clone, Debug)]
pub struct OpenAiChat {
    /// Where and which model.
    pub target: HttpTarget,
    /// The system prompt, if any.
    pub system_prompt: Option<String>,
}

impl OpenAiChat {
    fn body(&self, turn: &AgentTurn) -> serde_json::Value {
        let mut messages = Vec::new();
        if let Some(prompt) = &self.system_prompt {
            messages.push(serde_json::json!({"role": "system", "content": prompt}));
        }
        for (role, text) in &turn.history {
            messages.push(serde_json::json!({"role": role, "content": text}));
        }
        if turn
            .history
            .last()
            .is_none_or(|(role, text)| role != "user" || text != &turn.text)
        {
            messages.push(serde_json::json!({"role": "user", "content": turn.text}));
        }
        serde_json::json!({"model": self.target.model, "stream": true, "messages": messages})
    }

    async fn run(
        &self,
        turn: AgentTurn,
        deltas: mpsc::Sender<String>,
    ) -> Result<(), ProviderError> {
        let request = self
            .target
            .post("chat/completions")
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(self.body(&turn).to_string());
        let mut response = self.target.send(NAME, request).await?;
        let mut parser = SseParser::default();
        let mut limit = BodyLimit::new(MAX_STREAM_BYTES, MAX_STREAM_DURATION);
        while let Some(chunk) = self.target.chunk(NAME, &mut response, &mut limit).await? {
            if deltas.is_closed() {
                return Ok(()); // cancelled, or the reply reached its length cap
            }
            let events = parser
                .push(&chunk)
                .map_err(|e| ProviderError::new(NAME, ErrorKind::Malformed, e.to_string()))?;
            for event in events {
                if event.data.trim() == "[DONE]" {
                    return Ok(());
                }
                let value: serde_json::Value = serde_json::from_str(&event.data).map_err(|e| {
                    ProviderError::new(
                        NAME,
                        ErrorKind::Malformed,
                        format!("an event is not JSON: {e}"),
                    )
                })?;
                if let Some(message) = value.pointer("/error/message").and_then(|m| m.as_str()) {
                    return Err(ProviderError::new(
                        NAME,
                        ErrorKind::Status(500),
                        message.to_owned(),
                    ));
                }
                let content = value
                    .pointer("/choices/0/delta/content")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default();
                if !content.is_empty() && deltas.send(content.to_owned()).await.is_err() {
                    return Ok(()); // the turn was cancelled
                }
            }
        }
        Err(ProviderError::new(
            NAME,
            ErrorKind::Malformed,
            "the stream ended without [DONE]",
        ))
    }
}

impl Agent for OpenAiChat {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reply<'a>(
        &'a self,
        turn: AgentTurn,
        deltas: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.run(turn, deltas))
    }
}
