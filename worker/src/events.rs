//! The session event bus behind `WatchEvents`.
//!
//! A bounded broadcast: publishing never waits for subscribers, so a slow operator
//! connection can never stall the worker. A subscriber that falls a full buffer behind
//! loses events; that loss is counted, logged and reported to it as `DATA_LOSS`, so it
//! resynchronises with `ListSessions` instead of silently holding a stale view.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use voice_proto::worker::v1::{SessionEvent, session_event::Event};

use crate::metrics::Metrics;

/// What `WatchEvents` streams to one subscriber.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;

/// Publishes session events to every current subscriber.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<SessionEvent>,
    sequence: AtomicU64,
}

impl EventBus {
    /// A bus that buffers `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            sequence: AtomicU64::new(0),
        }
    }

    /// Stamps and sends one event. Having no subscriber is normal (the operator may be
    /// reconnecting), so a send with nobody listening is not an error.
    pub fn publish(&self, session_id: &str, uid: &str, now: SystemTime, event: Event) {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let event = SessionEvent {
            sequence,
            session_id: session_id.to_owned(),
            uid: uid.to_owned(),
            timestamp: Some(now.into()),
            event: Some(event),
        };
        let _no_subscribers = self.sender.send(event);
    }

    /// Events from now on for one subscriber. The stream ends with `DATA_LOSS` if the
    /// subscriber falls behind, and ends quietly when the bus is dropped or `stop` is
    /// cancelled — but only after every event published before the stop: a stopping
    /// worker's last events (the endings at its drain deadline) must reach the operator.
    pub fn subscribe(&self, metrics: Metrics, stop: CancellationToken) -> EventStream {
        let receiver = self.sender.subscribe();
        let stream = futures::stream::unfold(Some(receiver), move |receiver| {
            let metrics = metrics.clone();
            let stop = stop.clone();
            async move {
                let mut receiver = receiver?;
                // Biased: an event already published is always taken before the stop.
                let received = tokio::select! {
                    biased;
                    received = receiver.recv() => received,
                    () = stop.cancelled() => return None,
                };
                match received {
                    Ok(event) => Some((Ok(event), Some(receiver))),
                    Err(RecvError::Lagged(missed)) => {
                        metrics.count_lagged_events(missed);
                        tracing::warn!(
                            missed,
                            "WatchEvents subscriber fell behind; ending its stream"
                        );
                        let status = Status::data_loss(format!(
                            "missed {missed} session events; call ListSessions and watch again"
                        ));
                        Some((Err(status), None))
                    }
                    Err(RecvError::Closed) => None,
                }
            }
        });
        Box::pin(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use voice_proto::worker::v1::Reserved;

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_data_loss_and_is_counted() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let bus = EventBus::new(2);
        let mut stream = bus.subscribe(metrics.clone(), CancellationToken::new());
        for _ in 0..5 {
            bus.publish(
                "ns/a",
                "1",
                SystemTime::UNIX_EPOCH,
                Event::Reserved(Reserved {}),
            );
        }
        let first = stream.next().await.map(|r| r.map_err(|s| s.code()));
        assert!(
            matches!(first, Some(Err(tonic::Code::DataLoss))),
            "{first:?}"
        );
        assert!(
            stream.next().await.is_none(),
            "the stream ends after the loss"
        );
        assert!(
            metrics
                .render()
                .unwrap_or_default()
                .contains("voice_worker_events_lagged_total 3")
        );
    }

    #[tokio::test]
    async fn events_carry_increasing_sequence_numbers() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let bus = EventBus::new(8);
        let mut stream = bus.subscribe(metrics, CancellationToken::new());
        bus.publish(
            "ns/a",
            "1",
            SystemTime::UNIX_EPOCH,
            Event::Reserved(Reserved {}),
        );
        bus.publish(
            "ns/b",
            "2",
            SystemTime::UNIX_EPOCH,
            Event::Reserved(Reserved {}),
        );
        let a = stream.next().await.and_then(Result::ok).map(|e| e.sequence);
        let b = stream.next().await.and_then(Result::ok).map(|e| e.sequence);
        assert_eq!((a, b), (Some(1), Some(2)));
    }

    #[tokio::test]
    async fn a_stopped_stream_hands_out_what_was_published_before_it_ends() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let bus = EventBus::new(8);
        let stop = CancellationToken::new();
        let mut stream = bus.subscribe(metrics, stop.clone());
        for id in ["ns/a", "ns/b"] {
            bus.publish(
                id,
                "1",
                SystemTime::UNIX_EPOCH,
                Event::Reserved(Reserved {}),
            );
        }
        stop.cancel();
        let mut ids = Vec::new();
        while let Some(event) = stream.next().await {
            ids.push(
                event
                    .map(|e| e.session_id)
                    .unwrap_or_else(|s| panic!("{s}")),
            );
        }
        assert_eq!(ids, ["ns/a", "ns/b"]);
    }
}
