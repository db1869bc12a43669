//! The allocator's status writer: applies the session lifecycle and count writes the
//! allocation loop decides, so the loop never waits for the API server.
//!
//! Writes are coalesced per object: a write asked for while an earlier one for the same object
//! is still queued replaces it (only the latest state matters), and one object has at most one
//! write in flight, so they land in the order asked. The queue is bounded; a write that does
//! not fit is refused and counted (`voice_operator_status_writes_dropped_total`), and the loop,
//! which records only what the API took, asks again in a later round. The leader fence is
//! checked here, once, before every write. What the API took, or refused, goes back to the
//! loop as [`Done`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use voice_crds::{VoiceBackend, VoiceProvider, VoiceSession};

use crate::admission_steps;
use crate::context::Context;
use crate::field_managers::SESSION_COUNTS;
use crate::ledger::{BackendKey, SessionKey};
use crate::session_lifecycle::Lifecycle;

/// Objects with a write queued or in flight, at most.
const MAX_QUEUED: usize = 16_384;
/// Writes in flight at once.
const MAX_IN_FLIGHT: usize = 16;

/// The object a write is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A VoiceSession's lifecycle fields.
    Session(SessionKey),
    /// A VoiceBackend's `status.pendingSessions`.
    Backend(BackendKey),
    /// A VoiceProvider's `status.sessionsInUse` and `sessionsPending`.
    Provider(String),
}

/// What to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// The session's lifecycle fields, as a whole (boxed: most writes are counts).
    Lifecycle(Box<Lifecycle>),
    /// A backend's pending count.
    Pending(i32),
    /// A provider's (in use, pending) counts.
    Counts(i32, i32),
}

/// A write that finished: `applied` when the API server took it.
#[derive(Debug)]
pub struct Done {
    /// The object.
    pub target: Target,
    /// What was written (or not).
    pub body: Body,
    /// Whether the API server took it; false on an error, a 404 or a closed fence.
    pub applied: bool,
    /// The object's resourceVersion after a session write the API took.
    pub resource_version: Option<String>,
}

#[derive(Debug, Default)]
struct Queue {
    latest: HashMap<Target, Body>,
    order: VecDeque<Target>,
    busy: HashSet<Target>,
}

impl Queue {
    /// Queues `body` for `target`, replacing a queued write for the same object; false when
    /// the object is new and the queue is full.
    fn put(&mut self, target: Target, body: Body) -> bool {
        if !self.latest.contains_key(&target) {
            if self.latest.len() + self.busy.len() >= MAX_QUEUED {
                return false;
            }
            self.order.push_back(target.clone());
        }
        self.latest.insert(target, body);
        true
    }

    /// The next queued write whose object has none in flight.
    fn next(&mut self) -> Option<(Target, Body)> {
        let at = self.order.iter().position(|t| !self.busy.contains(t))?;
        let target = self.order.remove(at)?;
        let body = self.latest.remove(&target)?;
        self.busy.insert(target.clone());
        Some((target, body))
    }
}

/// The handle the allocation loop submits writes through.
#[derive(Clone, Debug)]
pub struct StatusWriter {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    ctx: Arc<Context>,
}

impl StatusWriter {
    /// Starts the writer task; finished writes are sent to `done` until `cancel` fires.
    pub fn spawn(
        ctx: Arc<Context>,
        done: mpsc::UnboundedSender<Done>,
        cancel: CancellationToken,
    ) -> Self {
        let writer = Self {
            queue: Arc::default(),
            wake: Arc::new(Notify::new()),
            ctx,
        };
        tokio::spawn(writer.clone().run(done, cancel));
        writer
    }

    /// Queues `body` for `target`, replacing a queued write for the same object; false (and
    /// counted) when the queue is full.
    pub fn submit(&self, target: Target, body: Body) -> bool {
        let queued = self.lock().put(target, body);
        if queued {
            self.wake.notify_one();
        } else {
            self.ctx.metrics.status_writes_dropped.inc();
        }
        queued
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self, done: mpsc::UnboundedSender<Done>, cancel: CancellationToken) {
        let mut writes: JoinSet<Done> = JoinSet::new();
        loop {
            while writes.len() < MAX_IN_FLIGHT {
                let Some((target, body)) = self.lock().next() else {
                    break;
                };
                let ctx = self.ctx.clone();
                writes.spawn(async move {
                    let written = if ctx.fence.is_open() {
                        write(&ctx, &target, &body).await
                    } else {
                        None
                    };
                    Done {
                        target,
                        body,
                        applied: written.is_some(),
                        resource_version: written.flatten(),
                    }
                });
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.wake.notified() => {}
                Some(finished) = writes.join_next() => {
                    let Ok(finished) = finished else { continue };
                    self.lock().busy.remove(&finished.target);
                    if done.send(finished).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Applies one write; `Some` when the API server took it, with the session's new
/// resourceVersion for a session write.
async fn write(ctx: &Context, target: &Target, body: &Body) -> Option<Option<String>> {
    let result = match (target, body) {
        (Target::Session(key), Body::Lifecycle(lifecycle)) => {
            let api: Api<VoiceSession> = Api::namespaced(ctx.client.clone(), &key.namespace);
            admission_steps::apply_status(&api, &key.name, lifecycle, None).await
        }
        (Target::Backend(key), Body::Pending(pending)) => {
            let api: Api<VoiceBackend> = Api::namespaced(ctx.client.clone(), &key.namespace);
            let body = serde_json::json!({
                "apiVersion": VoiceBackend::api_version(&()),
                "kind": VoiceBackend::kind(&()),
                "status": { "pendingSessions": pending },
            });
            api.patch_status(
                &key.name,
                &PatchParams::apply(SESSION_COUNTS).force(),
                &Patch::Apply(body),
            )
            .await
            .map(|_| None)
        }
        (Target::Provider(name), Body::Counts(in_use, pending)) => {
            let api: Api<VoiceProvider> = Api::all(ctx.client.clone());
            let body = serde_json::json!({
                "apiVersion": VoiceProvider::api_version(&()),
                "kind": VoiceProvider::kind(&()),
                "status": { "sessionsInUse": in_use, "sessionsPending": pending },
            });
            api.patch_status(
                name,
                &PatchParams::apply(SESSION_COUNTS).force(),
                &Patch::Apply(body),
            )
            .await
            .map(|_| None)
        }
        (target, body) => {
            tracing::error!(
                ?target,
                ?body,
                "a status write whose body does not fit its object"
            );
            return None;
        }
    };
    match result {
        Ok(rv) => Some(rv),
        // The object is gone: nothing to write, and nothing to retry.
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(e) => {
            tracing::warn!(?target, error = %e, "status write failed; the allocator asks again");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> Target {
        Target::Backend(BackendKey {
            namespace: "ns".into(),
            name: name.into(),
        })
    }

    #[test]
    fn a_queued_write_is_replaced_by_a_later_one_for_the_same_object() {
        let mut queue = Queue::default();
        for (target, body) in [
            (backend("a"), Body::Pending(1)),
            (backend("b"), Body::Pending(7)),
            (backend("a"), Body::Pending(2)),
        ] {
            assert!(queue.put(target, body));
        }
        assert_eq!(queue.next(), Some((backend("a"), Body::Pending(2))));
        assert_eq!(queue.next(), Some((backend("b"), Body::Pending(7))));
        assert_eq!(queue.next(), None);
    }

    #[test]
    fn an_object_with_a_write_in_flight_waits_for_it() {
        let mut queue = Queue::default();
        queue.busy.insert(backend("a"));
        for target in [backend("a"), backend("b")] {
            assert!(queue.put(target, Body::Pending(1)));
        }
        assert_eq!(queue.next().map(|(t, _)| t), Some(backend("b")));
        assert_eq!(queue.next(), None, "a is still in flight");
        queue.busy.remove(&backend("a"));
        assert_eq!(queue.next().map(|(t, _)| t), Some(backend("a")));
    }

    #[test]
    fn a_full_queue_refuses_new_objects_but_still_replaces_queued_ones() {
        let mut queue = Queue::default();
        for i in 0..MAX_QUEUED {
            assert!(queue.put(Target::Provider(i.to_string()), Body::Counts(0, 0)));
        }
        assert!(!queue.put(Target::Provider("new".into()), Body::Counts(1, 1)));
        assert!(queue.put(Target::Provider("7".into()), Body::Counts(1, 1)));
        assert_eq!(queue.latest.len(), MAX_QUEUED);
    }
}
