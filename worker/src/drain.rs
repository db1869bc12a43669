//! The drain supervisor: once the worker drains, wait until its sessions are gone or the
//! drain deadline passes, then end whatever is left.
//!
//! One task enforces the deadline for both ways a drain starts (the operator's `Drain`
//! call and SIGTERM), so the deadline means the same thing whoever asked for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::sessions::Sessions;

/// Returns once the worker is draining and holds no session, ending the remaining
/// sessions itself when the deadline passes. Returns early only if the session state
/// is dropped.
pub async fn supervise(sessions: Arc<Sessions>) {
    let mut occupancy = sessions.watch();
    loop {
        let now = *occupancy.borrow_and_update();
        let Some(deadline) = now.drain_deadline else {
            if occupancy.changed().await.is_err() {
                return;
            }
            continue;
        };
        if now.held == 0 {
            tracing::info!("drained: no sessions left");
            return;
        }
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            changed = occupancy.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(wait) => {
                let ended = sessions.expire(SystemTime::now());
                tracing::warn!(ended, "drain deadline passed; ended the remaining sessions");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::SessionRequest;
    use crate::metrics::Metrics;

    fn sessions() -> Arc<Sessions> {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Sessions::new(2, Duration::from_secs(60), 16, metrics))
    }

    fn reserve(sessions: &Sessions, id: &str) {
        let request = SessionRequest {
            session_id: id.to_owned(),
            uid: "u".to_owned(),
            token_key_id: None,
            config: Default::default(),
        };
        assert!(sessions.reserve(request, SystemTime::now()).outcome.is_ok());
    }

    async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(secs), f)
            .await
            .unwrap_or_else(|_| panic!("did not finish within {secs}s"))
    }

    #[tokio::test]
    async fn finishes_when_the_last_session_is_released() {
        let sessions = sessions();
        reserve(&sessions, "ns/a");
        let task = tokio::spawn(supervise(sessions.clone()));
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "not draining yet");
        sessions.drain(None, SystemTime::now());
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "a session is still held");
        sessions.release("ns/a", "u", "Completed", SystemTime::now());
        within(5, task).await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn ends_remaining_sessions_at_the_deadline() {
        let sessions = sessions();
        reserve(&sessions, "ns/a");
        reserve(&sessions, "ns/b");
        sessions.drain(Some(Duration::from_millis(200)), SystemTime::now());
        within(5, supervise(sessions.clone())).await;
        assert!(sessions.snapshot().sessions.is_empty());
    }

    #[tokio::test]
    async fn a_shorter_drain_deadline_takes_effect_at_once() {
        let sessions = sessions();
        reserve(&sessions, "ns/a");
        sessions.drain(Some(Duration::from_secs(3_600)), SystemTime::now());
        let task = tokio::spawn(supervise(sessions.clone()));
        tokio::task::yield_now().await;
        sessions.drain(Some(Duration::ZERO), SystemTime::now());
        within(5, task).await.unwrap_or_else(|e| panic!("{e}"));
    }
}
