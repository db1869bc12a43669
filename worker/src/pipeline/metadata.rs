//! A session's metadata as the agent sees it: `VoiceSession.spec.metadata`, which the
//! application may edit while the session is live. The operator sends the new value with
//! `UpdateSession`; the worker's ledger keeps it and this feed hands it to the session's
//! agent, which reads it at each turn (so a change reaches the agent on its next turn).

use std::collections::HashMap;

use tokio::sync::watch;

/// Metadata as the agent gets it: string values as they are, others as JSON text.
pub type Metadata = HashMap<String, String>;

/// `spec.metadata` (a JSON object) flattened into [`Metadata`].
pub fn flatten(object: Option<&serde_json::Map<String, serde_json::Value>>) -> Metadata {
    object
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (k.clone(), text)
        })
        .collect()
}

/// The current metadata of one session, updated while it is live.
#[derive(Clone, Debug)]
pub struct MetadataFeed(watch::Receiver<Metadata>);

impl Default for MetadataFeed {
    fn default() -> Self {
        Self::fixed(Metadata::new())
    }
}

impl MetadataFeed {
    /// Metadata that never changes (tests, and sessions without a live ledger entry).
    pub fn fixed(metadata: Metadata) -> Self {
        let (_sender, receiver) = watch::channel(metadata);
        Self(receiver)
    }

    /// Metadata that follows `receiver`.
    pub fn live(receiver: watch::Receiver<Metadata>) -> Self {
        Self(receiver)
    }

    /// The metadata as it is now.
    pub fn current(&self) -> Metadata {
        self.0.borrow().clone()
    }

    /// The metadata if it changed since this feed last looked (by `current_and_mark` or
    /// this), and marks it seen.
    pub fn changed(&mut self) -> Option<Metadata> {
        if self.0.has_changed().unwrap_or(false) {
            Some(self.0.borrow_and_update().clone())
        } else {
            None
        }
    }

    /// The metadata as it is now, marked seen.
    pub fn current_and_mark(&mut self) -> Metadata {
        self.0.borrow_and_update().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_seen_once_and_values_that_are_not_strings_become_json() {
        let object = serde_json::json!({"plan": "gold", "seats": 3});
        let first = flatten(object.as_object());
        assert_eq!(first["plan"], "gold");
        assert_eq!(first["seats"], "3");
        let (sender, receiver) = watch::channel(first.clone());
        let mut feed = MetadataFeed::live(receiver);
        assert_eq!(feed.current_and_mark(), first);
        assert_eq!(feed.changed(), None, "nothing new yet");
        let second = flatten(serde_json::json!({"plan": "platinum"}).as_object());
        sender.send_replace(second.clone());
        assert_eq!(feed.changed(), Some(second.clone()));
        assert_eq!(feed.changed(), None, "seen once");
        assert_eq!(feed.current(), second);
        assert_eq!(MetadataFeed::fixed(first.clone()).current(), first);
    }
}
