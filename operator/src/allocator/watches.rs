//! The watches that feed the loop: reflector stores for backends, providers, pods, Secrets
//! and namespaces, and the session watch's events for the [`SessionIndex`].

use super::*;

/// A reflector store kept current by a background task that wakes the loop on every change.
pub(super) fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    wake: &Arc<Notify>,
    cancel: &CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        // managedFields are most of a session's bytes and the allocator never reads them.
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    let (wake, cancel) = (wake.clone(), cancel.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(e)) => tracing::warn!(error = %e, "allocator watch error"),
                    None => return,
                },
            }
        }
    });
    reader
}

/// The session watch's events, forwarded to the loop (which keeps its [`SessionIndex`] from
/// them); the bounded channel makes a slow loop slow the watch, not grow a queue.
pub(super) fn watch_events(
    api: Api<VoiceSession>,
    cancel: &CancellationToken,
) -> mpsc::Receiver<watcher::Event<VoiceSession>> {
    let (tx, rx) = mpsc::channel(4096);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // managedFields are most of a session's bytes and the allocator never reads them.
        .modify(|s| s.managed_fields_mut().clear());
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(event)) => {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "allocator session watch error"),
                    None => return,
                },
            }
        }
    });
    rx
}
