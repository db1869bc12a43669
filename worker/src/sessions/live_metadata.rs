//! A held session's metadata while it is live: the ledger keeps the latest value (so a
//! reconnect starts from it) and each running pipeline follows it through a watch channel.
//! Both change under the ledger lock, so a pipeline that subscribes while an update
//! arrives sees either the old value and then the update, or the new value.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

use super::Sessions;
use crate::pipeline::metadata::{Metadata, MetadataFeed, flatten};

/// One watch per live session, keyed by session id, with the uid it belongs to.
#[derive(Debug, Default)]
pub struct MetadataFeeds {
    feeds: Mutex<HashMap<String, (String, watch::Sender<Metadata>)>>,
}

impl MetadataFeeds {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, (String, watch::Sender<Metadata>)>) -> T,
    ) -> T {
        // Each use is one map operation: a poisoned lock is still whole.
        f(&mut self.feeds.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Forgets the feed of `session_id` held under `uid`; its pipelines keep the last value.
    pub fn forget(&self, session_id: &str, uid: &str) {
        self.with(|feeds| {
            if feeds.get(session_id).is_some_and(|(held, _)| held == uid) {
                feeds.remove(session_id);
            }
        });
    }
}

impl Sessions {
    /// The live metadata of `session_id` held under `uid`, for its pipeline; fixed (empty)
    /// when no such session is held.
    pub fn metadata_feed(&self, session_id: &str, uid: &str) -> MetadataFeed {
        let ledger = self.lock();
        let Some(held) = ledger.get(session_id).filter(|s| s.request.uid == uid) else {
            return MetadataFeed::default();
        };
        let current = flatten(held.request.config.metadata.as_ref());
        self.metadata.with(|feeds| {
            let entry = feeds
                .entry(session_id.to_owned())
                .or_insert_with(|| (uid.to_owned(), watch::channel(current.clone()).0));
            if entry.0 != uid {
                *entry = (uid.to_owned(), watch::channel(current).0);
            }
            MetadataFeed::live(entry.1.subscribe())
        })
    }

    /// Replaces the metadata of `session_id` held under `uid`: the ledger keeps it and its
    /// running pipeline sees it at the next turn. False when no such session is held.
    pub fn update_metadata(
        &self,
        session_id: &str,
        uid: &str,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        let mut ledger = self.lock();
        let flat = flatten(Some(&metadata));
        if !ledger.set_metadata(session_id, uid, metadata) {
            return false;
        }
        self.metadata.with(|feeds| {
            if let Some((held, sender)) = feeds.get(session_id)
                && held == uid
            {
                sender.send_replace(flat);
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::capacity::SessionRequest;
    use crate::metrics::Metrics;

    #[test]
    fn an_update_reaches_a_running_pipeline_and_the_next_one_and_only_the_same_uid() {
        let sessions = Sessions::new(
            2,
            Duration::from_secs(1),
            16,
            Metrics::new().unwrap_or_else(|e| panic!("{e}")),
        );
        let config = voice_proto::session_config::SessionConfig {
            metadata: serde_json::json!({"plan": "gold"}).as_object().cloned(),
            ..Default::default()
        };
        let request = SessionRequest {
            session_id: "ns/s".into(),
            uid: "u1".into(),
            token_key_id: None,
            config,
        };
        let _ = sessions.reserve(request, SystemTime::now());
        let mut running = sessions.metadata_feed("ns/s", "u1");
        assert_eq!(running.current_and_mark()["plan"], "gold");
        let platinum = serde_json::json!({"plan": "platinum"});
        let other = platinum.as_object().cloned().unwrap_or_default();
        assert!(
            !sessions.update_metadata("ns/s", "u0", other.clone()),
            "another incarnation"
        );
        assert_eq!(running.changed(), None);
        assert!(sessions.update_metadata("ns/s", "u1", other));
        assert_eq!(
            running.changed().map(|m| m["plan"].clone()),
            Some("platinum".into())
        );
        let reconnect = sessions.metadata_feed("ns/s", "u1");
        assert_eq!(reconnect.current()["plan"], "platinum");
        let _ = sessions.release("ns/s", "u1", "Completed", SystemTime::now());
        assert!(sessions.metadata_feed("ns/s", "u1").current().is_empty());
        assert_eq!(
            running.current()["plan"],
            "platinum",
            "a pipeline keeps the last value"
        );
    }
}
