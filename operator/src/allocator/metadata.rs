//! Live metadata: edits of a held session's `spec.metadata` handed to its worker.

use super::*;

impl Allocator {
    /// Hands edited `spec.metadata` of held sessions to their workers (see
    /// [`crate::session_metadata`]); best effort on tasks, retried on failure. Only the
    /// sessions that changed or wait for a retry are compared, all of them after a start.
    pub(super) fn push_metadata(
        &self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        changed: &Changed,
    ) {
        let candidates: Vec<&SessionKey> = if changed.all {
            self.ledger.iter().map(|(k, _)| k).collect()
        } else {
            let retrying = self.metadata.retrying();
            let mut keys: Vec<&SessionKey> = changed.keys.iter().collect();
            keys.extend(
                retrying
                    .iter()
                    .filter_map(|k| sessions.get_key_value(k).map(|(k, _)| k)),
            );
            keys
        };
        for key in candidates {
            if self.in_flight.contains(key) {
                continue;
            }
            let (Some(slot), Some(session)) = (self.ledger.slot(key), sessions.get(key)) else {
                continue;
            };
            let due = self.metadata.due(
                key,
                session.metadata.generation,
                session.spec.metadata.as_ref(),
                Instant::now(),
            );
            let Some(json) = due else {
                continue;
            };
            let Some(ip) = self.pod_ip(&slot.backend.namespace, &slot.worker) else {
                self.metadata.failed(key, Instant::now());
                continue;
            };
            let (ctx, sync, key) = (self.ctx.clone(), self.metadata.clone(), key.clone());
            tokio::spawn(async move {
                let id = key.session_id();
                match ctx
                    .workers
                    .update_metadata(&ip, &id, &key.uid, json, WORKER_TIMEOUT)
                    .await
                {
                    Ok(true) => tracing::info!(session = %id, "metadata handed to the worker"),
                    Ok(false) => sync.failed(&key, Instant::now()),
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "handing metadata to the worker failed; retrying");
                        sync.failed(&key, Instant::now());
                    }
                }
            });
        }
    }
}
