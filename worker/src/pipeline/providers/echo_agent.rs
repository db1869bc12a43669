//! The built-in diagnostic agent `Echo`: repeats what the user said, one word per delta
//! (so streaming paths are exercised exactly as with a real agent).

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Agent, AgentTurn, ErrorKind, ProviderError};

/// Repeats the user.
#[derive(Debug, Default)]
pub struct EchoAgent;

impl Agent for EchoAgent {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn reply<'a>(
        &'a self,
        turn: AgentTurn,
        deltas: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            if turn.text.trim().is_empty() {
                return Ok(());
            }
            let mut first = true;
            for word in format!("You said: {}.", turn.text.trim()).split_whitespace() {
                let delta = if first {
                    word.to_owned()
                } else {
                    format!(" {word}")
                };
                first = false;
                deltas.send(delta).await.map_err(|_| {
                    ProviderError::new("echo", ErrorKind::Unavailable, "reply consumer went away")
                })?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repeats_the_user_word_by_word() {
        let (tx, mut rx) = mpsc::channel(64);
        let turn = AgentTurn {
            turn_id: "1".into(),
            text: "hello world".into(),
            history: vec![],
        };
        EchoAgent
            .reply(turn, tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut parts = Vec::new();
        while let Some(d) = rx.recv().await {
            parts.push(d);
        }
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.concat(), "You said: hello world.");
    }
}
