//! Stopping a kube `Controller` within a bound.
//!
//! kube's graceful shutdown stops the controller's trigger stream, then waits for the
//! reconciles in flight. But its runner starts only once the controller's store has seen
//! its first list, and that list arrives through the very trigger stream the shutdown just
//! stopped: a SIGTERM in the first moments of leading (before the first list) would wait
//! forever (seen in `tests/operator_leader.rs`; kube-runtime 5.0). No reconcile runs before
//! the first list, so a controller cancelled before it is dropped at once, cutting nothing
//! short; after it, reconciles in flight get [`STOP_GRACE`] to finish, which is far longer
//! than one takes.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

/// Passes a reflected watch's events through, cancelling `listed` at its first complete list
/// (when the reflector's store has become ready). Unlike `Store::wait_until_ready`, whose
/// one-shot channel wakes only its last waiter, this cannot steal the controller's wake-up.
pub fn mark_listed<K, S>(events: S, listed: CancellationToken) -> impl Stream<Item = S::Item>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    events.inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            listed.cancel();
        }
    })
}

/// How long a controller's reconciles in flight may take to finish after `cancel`. Below
/// the operator's whole shutdown limit (`--shutdown-timeout-seconds`, 20 by default).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs `controller` to its end, or until `cancel` fires: at once when its store has not
/// been `listed` yet (nothing can be reconciling), else `grace` later. Returns whether it
/// ended by itself.
pub async fn run_until_stopped(
    controller: impl Future<Output = ()>,
    cancel: &CancellationToken,
    listed: &CancellationToken,
    grace: Duration,
) -> bool {
    tokio::select! {
        () = controller => true,
        () = async {
            cancel.cancelled().await;
            if listed.is_cancelled() {
                tokio::time::sleep(grace).await;
            }
        } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cancels a fresh token after `after` (paused time).
    fn cancelled_after(after: Duration) -> CancellationToken {
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            stopper.cancel();
        });
        cancel
    }

    fn listed(yes: bool) -> CancellationToken {
        let token = CancellationToken::new();
        if yes {
            token.cancel();
        }
        token
    }

    #[tokio::test(start_paused = true)]
    async fn a_listed_controller_that_never_ends_is_dropped_a_grace_after_the_cancel() {
        let started = tokio::time::Instant::now();
        let cancel = cancelled_after(Duration::from_secs(3));
        let listed = listed(true);
        let run = run_until_stopped(std::future::pending(), &cancel, &listed, STOP_GRACE);
        assert!(!run.await);
        assert_eq!(started.elapsed(), Duration::from_secs(3) + STOP_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_cancelled_before_its_first_list_is_dropped_at_once() {
        let started = tokio::time::Instant::now();
        let cancel = cancelled_after(Duration::from_secs(3));
        let listed = listed(false);
        let run = run_until_stopped(std::future::pending(), &cancel, &listed, STOP_GRACE);
        assert!(!run.await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_first_complete_list_marks_the_store_listed() {
        let token = CancellationToken::new();
        let events = futures::stream::iter([
            Ok(watcher::Event::<String>::Init),
            Ok(watcher::Event::InitApply("a".to_owned())),
        ]);
        let seen: Vec<_> = mark_listed(events, token.clone()).collect().await;
        assert_eq!(seen.len(), 2);
        assert!(!token.is_cancelled());
        let done = futures::stream::iter([Ok(watcher::Event::<String>::InitDone)]);
        let _: Vec<_> = mark_listed(done, token.clone()).collect().await;
        assert!(token.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_stops_on_the_cancel_ends_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = tokio::time::Instant::now();
        let stops = {
            let cancel = cancel.clone();
            async move { cancel.cancelled().await }
        };
        assert!(run_until_stopped(stops, &cancel, &listed(true), STOP_GRACE).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_cancel_the_controller_runs_as_long_as_it_likes() {
        let cancel = CancellationToken::new();
        let long = tokio::time::sleep(Duration::from_secs(3600));
        assert!(run_until_stopped(long, &cancel, &listed(true), STOP_GRACE).await);
    }
}
