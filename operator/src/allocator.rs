//! The session allocator: the one place that admits, re-admits and ends VoiceSessions.
//!
//! It runs in the leader only, as a single loop that owns the [`Ledger`], so every admission
//! decision is serialized (per provider and globally) without locks. Each round it sorts the
//! sessions that changed since the last one into worklists (`allocator/worklists.rs`), so a
//! round costs O(changed + waiting) rather than O(all sessions); from them it reconciles the
//! ledger with the API state (deleted sessions, lost workers, deleted backends, clocks that
//! ran out), asks the pure [`admission_plan::plan`] which pending sessions fit,
//! and starts their admissions ([`admission_steps`]) as tasks whose outcomes come back to the
//! loop. Queue positions, ends and counts go to the [`StatusWriter`], which reports back what
//! the API took, so the loop does not wait for those writes; Events, TTL deletes and calls to
//! workers run on tasks too, so after the takeover a round never awaits the API server or a
//! worker (`round` is not async). At start the workers are fenced and listed
//! ([`crate::leader_takeover`]), then the ledger is rebuilt from the sessions' statuses plus
//! the workers' reservations: the API and the workers together are the truth.
//!
//! This file holds the loop, its state and the round; the round's parts are in
//! `allocator/`: `worklists`, `watches`, `rebuild`, `worker_views`, `admissions`, `waiting`,
//! `deletions`, `endings` (lost workers, clocks, worker-reported ends, TTL), `counts`,
//! `metadata`, `roster` (for the live-state writer), `repair`, `rooms` and `tokens`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use voice_crds::conditions::ACCEPTED;
use voice_crds::{SessionPhase, SessionWorker, VoiceBackend, VoiceProvider, VoiceSession};

use crate::admission_plan::{self, BackendView, Misfit, PendingSession};
use crate::admission_steps::{self, Admission, Outcome};
use crate::context::Context;
use crate::event_source::{Roster, WorkerRef};
use crate::heartbeat::Heartbeats;
use crate::ledger::{BackendKey, Ledger, SessionKey, Slot};
use crate::ledger_rebuild::{self, Reservation, SessionAtStart};
use crate::live_status_writer::Ended;
use crate::placement::WorkerView;
use crate::pod_template;
use crate::rate_limit::{self, RateLimits};
use crate::refusal_backoff::{Refusal, RefusalBackoff};
use crate::session_audio;
use crate::session_counts::BackendSessions;
use crate::session_index::{SessionIndex, key_of};
use crate::session_lifecycle::{Lifecycle, reason};
use crate::session_livekit;
use crate::session_metadata::MetadataSync;
use crate::session_participants;
use crate::session_timeouts::{self, Clocks, Expired};
use crate::session_tokens;
use crate::signing_keys;
use crate::status_writer::{Body, Done, StatusWriter, Target};
use crate::worker_pod_facts;
use crate::worker_repair;
use crate::world;
use voice_proto::token::KeySet;

mod admissions;
mod counts;
mod deletions;
mod endings;
mod metadata;
mod rebuild;
mod repair;
mod rooms;
mod roster;
mod tokens;
mod waiting;
mod watches;
mod worker_views;
mod worklists;

use tokens::backend_keys;
use waiting::waiting_message;
use watches::{reflect, watch_events};
use worklists::{Changed, Worklists};

/// Admissions running at once: enough to hide API and gRPC latency, few enough to keep the
/// API server's write rate sane during a burst.
const MAX_ADMISSIONS_IN_FLIGHT: usize = 64;
/// Shortest time between two allocation rounds.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(25);
/// How often a waiting session's queue position may be rewritten.
const WAITING_WRITE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the counts on backends and providers may be rewritten.
const COUNTS_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// How often workers are asked for reservations the API does not know about.
const REPAIR_INTERVAL: Duration = Duration::from_secs(30);
/// The allocator's name in `/healthz`.
const HEARTBEAT: &str = "allocator";
/// Bound on the gRPC calls made outside admissions.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest delay before writing a missing join-token Secret again.
const TOKEN_RETRY_FIRST: Duration = Duration::from_millis(200);
const TOKEN_RETRY_MAX: Duration = Duration::from_secs(10);

/// The loop's state. Only the loop touches it.
struct Allocator {
    ctx: Arc<Context>,
    /// The live sessions, kept from the session watch's events.
    sessions: SessionIndex,
    /// Sessions deleted while their admission ran: released once its outcome is in.
    deleted_in_flight: HashSet<SessionKey>,
    /// Ends workers reported while the session's admission ran: taken once its outcome is in.
    ended_in_flight: HashMap<SessionKey, Ended>,
    backends: Store<VoiceBackend>,
    providers: Store<VoiceProvider>,
    pods: Store<Pod>,
    ledger: Ledger,
    /// What the allocator last applied to each session's status.
    lifecycle: HashMap<SessionKey, Lifecycle>,
    /// Sessions whose `lifecycle` entry changed since the roster was last published.
    lifecycle_changed: HashSet<SessionKey>,
    /// Whether the roster has been published whole once (later it follows the changes).
    roster_built: bool,
    /// Sessions with an admission task running.
    in_flight: HashSet<SessionKey>,
    /// When each waiting session's status was last written.
    waiting_written: HashMap<SessionKey, Instant>,
    /// Counts last written to backends and providers.
    counts_written: HashMap<String, (i32, i32)>,
    counts_at: Option<Instant>,
    repair_at: Instant,
    /// When the loop's state is next compared whole with the session index.
    sweep_at: Instant,
    /// The backends' signing-key Secrets, watched.
    secrets: Store<Secret>,
    outcomes: mpsc::Sender<(SessionKey, Outcome)>,
    admissions: Arc<Semaphore>,
    /// Sessions the repair pass found Active in the ledger but not held by their worker.
    repairs: mpsc::Sender<(SessionKey, String)>,
    /// Providers with gauges exported.
    metric_providers: HashSet<String>,
    /// Label pairs of `voice_sessions_waiting` set non-zero last time.
    waiting_labels: HashSet<(String, &'static str)>,
    /// Where the workers the live-state writer follows, and whom each speaks for, are published.
    roster: watch::Sender<Roster>,
    /// What metadata each held session's worker was last handed.
    metadata: MetadataSync,
    /// The admission rate limits' buckets.
    rates: RateLimits,
    /// Namespaces, for their session quota annotation.
    namespaces: Store<Namespace>,
    /// When a rate-limited session may next be admitted.
    rate_wake: Option<Instant>,
    /// Workers and sessions waiting out a refused reservation.
    backoff: RefusalBackoff,
    /// Applies the loop's status and count writes, so the loop never waits for them.
    writer: StatusWriter,
    /// Lifecycles handed to the writer and not yet reported back.
    proposed: HashMap<SessionKey, Lifecycle>,
    /// Admissions planned while the session still had a write in the writer: they start once
    /// it lands, so that write cannot overtake the admission's own (their slot is held).
    deferred: HashMap<SessionKey, (Arc<VoiceSession>, SessionWorker)>,
    /// Active sessions whose join-token Secret is still to be written: when next, and the
    /// delay after that.
    tokens_due: HashMap<SessionKey, (Instant, Duration)>,
    /// Token Secret writes running.
    tokens_writing: HashSet<SessionKey>,
    tokens_written: mpsc::Sender<(SessionKey, Result<(), String>)>,
    /// What the round must look at: the sessions that changed, sorted.
    lists: Worklists,
}

/// Runs the allocator until `cancel` fires. `ended` carries sessions the workers ended;
/// `roster` is where the allocator publishes the workers the live-state writer follows and
/// the sessions each of them may report on.
pub async fn run(
    ctx: Arc<Context>,
    cancel: CancellationToken,
    mut ended: mpsc::Receiver<Ended>,
    roster: watch::Sender<Roster>,
    heartbeats: Heartbeats,
) {
    // Before the first read of any session: see leader_takeover.rs for why.
    let takeover = crate::leader_takeover::fence_workers(&ctx).await;
    tracing::info!(
        fenced = takeover.fenced,
        unreachable = takeover.unreachable.len(),
        held = takeover.reservations.len(),
        "workers fenced against earlier leaders"
    );
    let wake = Arc::new(Notify::new());
    let client = ctx.client.clone();
    let (sessions, backends, pods, secrets) = match &ctx.scope.namespace {
        Some(ns) => (
            Api::<VoiceSession>::namespaced(client.clone(), ns),
            Api::<VoiceBackend>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<Secret>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let mut provider_config = watcher::Config::default();
    if let Some(selector) = &ctx.scope.provider_selector {
        provider_config = provider_config.labels(selector);
    }
    let pod_config =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=voice-operator");
    let mut session_events = watch_events(sessions, &cancel);
    let backends = reflect(backends, watcher::Config::default(), &wake, &cancel);
    let providers = reflect(Api::all(client.clone()), provider_config, &wake, &cancel);
    let pods = reflect(pods, pod_config, &wake, &cancel);
    let secret_config = watcher::Config::default().labels(&format!(
        "{}={}",
        signing_keys::SECRET_LABEL.0,
        signing_keys::SECRET_LABEL.1
    ));
    let secrets = reflect(secrets, secret_config, &wake, &cancel);
    // Namespaces are cluster-scoped; a namespace-scoped operator reads only its own.
    let mut namespace_config = watcher::Config::default();
    if let Some(ns) = &ctx.scope.namespace {
        namespace_config = namespace_config.fields(&format!("metadata.name={ns}"));
    }
    let namespaces = reflect(Api::all(client), namespace_config, &wake, &cancel);
    let mut sessions = SessionIndex::default();
    while !sessions.listed() {
        let Some(event) = session_events.recv().await else {
            return;
        };
        sessions.apply(event);
    }
    for ready in [
        backends.wait_until_ready().await.is_ok(),
        providers.wait_until_ready().await.is_ok(),
        pods.wait_until_ready().await.is_ok(),
        secrets.wait_until_ready().await.is_ok(),
        namespaces.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            return;
        }
    }

    let (outcomes, mut outcome_rx) = mpsc::channel(MAX_ADMISSIONS_IN_FLIGHT * 4);
    let (written, mut written_rx) = mpsc::unbounded_channel();
    let writer = StatusWriter::spawn(ctx.clone(), written, cancel.clone());
    let (repairs, mut repair_rx) = mpsc::channel(1024);
    let (tokens_written, mut token_rx) = mpsc::channel(1024);
    let mut a = Allocator {
        ctx,
        sessions,
        deleted_in_flight: HashSet::new(),
        ended_in_flight: HashMap::new(),
        backends,
        providers,
        pods,
        ledger: Ledger::new(),
        lifecycle: HashMap::new(),
        lifecycle_changed: HashSet::new(),
        roster_built: false,
        in_flight: HashSet::new(),
        waiting_written: HashMap::new(),
        counts_written: HashMap::new(),
        counts_at: None,
        // Soon after a start: events the workers sent while no operator listened are lost.
        repair_at: Instant::now() + Duration::from_secs(5),
        sweep_at: Instant::now() + REPAIR_INTERVAL,
        secrets,
        outcomes,
        admissions: Arc::new(Semaphore::new(MAX_ADMISSIONS_IN_FLIGHT)),
        waiting_labels: HashSet::new(),
        metric_providers: HashSet::new(),
        repairs,
        roster,
        metadata: MetadataSync::default(),
        rates: RateLimits::default(),
        namespaces,
        rate_wake: None,
        backoff: RefusalBackoff::default(),
        writer,
        proposed: HashMap::new(),
        deferred: HashMap::new(),
        tokens_due: HashMap::new(),
        tokens_writing: HashSet::new(),
        tokens_written,
        lists: Worklists::default(),
    };
    let finishing = a.rebuild(&takeover.reservations);
    a.rebuild_rates();
    a.find_missing_tokens().await;
    tracing::info!(
        held = a.ledger.len(),
        finishing,
        tokens_missing = a.tokens_due.len(),
        "session ledger rebuilt from the API and the workers"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_round = Instant::now();
    loop {
        // Once per turn (at least every second, from the tick): a round that never returns
        // stops the beat and fails /healthz.
        heartbeats.beat(HEARTBEAT);
        let mut clocks_due = false;
        tokio::select! {
            () = cancel.cancelled() => {
                crate::fault_injection::hang_if_asked(crate::fault_injection::ALLOCATOR_STOP_HANGS)
                    .await;
                return;
            }
            () = wake.notified() => {}
            Some(event) = session_events.recv() => a.take_event(event),
            Some((key, outcome)) = outcome_rx.recv() => a.settle(key, outcome),
            Some(done) = written_rx.recv() => a.written(done),
            Some(end) = ended.recv() => a.worker_ended(end),
            Some((key, worker)) = repair_rx.recv() => a.ended_unseen(key, worker),
            Some((key, result)) = token_rx.recv() => a.token_written(key, result),
            _ = tick.tick() => clocks_due = true,
            () = sleep_until_some(a.rate_wake) => a.rate_wake = None,
            () = sleep_until_some(a.backoff.next_due(Instant::now())) => {}
        }
        // Batch the watch events and outcomes of a burst into one round every
        // MIN_ROUND_INTERVAL rather than one round per event.
        let since = last_round.elapsed();
        if since < MIN_ROUND_INTERVAL {
            tokio::time::sleep(MIN_ROUND_INTERVAL - since).await;
        }
        while let Ok(event) = session_events.try_recv() {
            a.take_event(event);
        }
        while let Ok((key, outcome)) = outcome_rx.try_recv() {
            a.settle(key, outcome);
        }
        while let Ok(done) = written_rx.try_recv() {
            a.written(done);
        }
        if a.ctx.fence.is_open() {
            let started = Instant::now();
            a.round(clocks_due);
            a.ctx
                .metrics
                .allocator_round_duration
                .observe(started.elapsed().as_secs_f64());
        }
        last_round = Instant::now();
    }
}

fn backend_key_of(s: &VoiceSession) -> BackendKey {
    BackendKey {
        namespace: s.namespace().unwrap_or_default(),
        name: s.spec.backend_ref.name.clone(),
    }
}

fn timestamp(t: Option<&Time>) -> Option<Timestamp> {
    t.map(|t| t.0)
}

impl Allocator {
    /// Takes one session watch event into the index; the session it names is touched, and
    /// a relist touches every session.
    fn take_event(&mut self, event: watcher::Event<VoiceSession>) {
        match &event {
            watcher::Event::Apply(s) | watcher::Event::Delete(s) => self.touch(&key_of(s)),
            watcher::Event::InitDone => self.lists.touch_all(),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
        self.sessions.apply(event);
    }

    fn provider_of(&self, backend: &BackendKey) -> Option<String> {
        let reference = reflector::ObjectRef::new(&backend.name).within(&backend.namespace);
        self.backends
            .get(&reference)
            .map(|b| b.spec.provider.clone())
    }

    /// Why `session` cannot be served by its backend and provider as it is, if it cannot:
    /// first its transport against the backend's LiveKit server (and what a room needs),
    /// then its participants (a capability of the whole provider), then its audio.
    fn misfit(&self, session: &VoiceSession, namespace: &str) -> Option<Misfit> {
        let reference = reflector::ObjectRef::new(&session.spec.backend_ref.name).within(namespace);
        let backend = self.backends.get(&reference);
        let provider = backend.as_ref().and_then(|b| {
            self.providers
                .get(&reflector::ObjectRef::new(&b.spec.provider))
        });
        let (backend, provider) = (backend.as_deref(), provider.as_deref());
        session_livekit::misfit_of(session, backend)
            .or_else(|| {
                session_participants::misfit_of(session, backend, provider).map(Misfit::MultiUser)
            })
            .or_else(|| {
                session_audio::misfit_of(session, backend, provider).map(Misfit::AudioFormat)
            })
    }

    /// The lifecycle the allocator last applied to `session` (or the observed one).
    /// The loop's latest decision for the session: a lifecycle still with the status writer,
    /// else the one the API took, else what its status says. (A write the API refuses drops
    /// its proposal, and the decision falls back to what was applied.)
    fn lifecycle_of(&self, key: &SessionKey, session: &VoiceSession) -> Lifecycle {
        self.proposed
            .get(key)
            .or_else(|| self.lifecycle.get(key))
            .cloned()
            .unwrap_or_else(|| Lifecycle::observed(session.status.as_ref()))
    }

    /// The phase of `session` as the allocator knows it, without cloning its lifecycle.
    fn phase_of(&self, key: &SessionKey, session: &VoiceSession) -> SessionPhase {
        match self.proposed.get(key).or_else(|| self.lifecycle.get(key)) {
            Some(l) => l.phase,
            None => session.status.as_ref().map(|s| s.phase).unwrap_or_default(),
        }
    }

    /// One pass over the API state. Not async: the loop never waits for the API server or a
    /// worker; every call it decides runs on a task and reports back.
    fn round(&mut self, clocks_due: bool) {
        let now = Timestamp::now();
        // Lent out for the round (its methods take `&mut self`), and put back at its end.
        let mut index = std::mem::take(&mut self.sessions);
        let removed = index.take_removed();
        for key in &removed {
            self.touch(key);
        }
        self.forget_removed(removed);
        let sessions = index.sessions();
        let sweep = Instant::now() >= self.sweep_at;
        if sweep {
            self.sweep_at = Instant::now() + REPAIR_INTERVAL;
            self.forget_deleted(sessions);
        }
        let changed = self.sort_changed(sessions, sweep);
        let backends = self.backend_views();
        self.publish_roster(&backends);
        self.handle_lost_workers(sessions, &backends, &changed, now);
        if clocks_due {
            self.handle_clocks(sessions, now);
        }
        self.finish_reserved(sessions, &backends);
        self.admit_pending(sessions, &backends, now);
        self.write_missing_tokens(sessions);
        self.push_metadata(sessions, &changed);
        self.write_counts(sessions);
        if Instant::now() >= self.repair_at {
            self.repair_at = Instant::now() + REPAIR_INTERVAL;
            self.repair_orphans(&backends);
        }
        self.publish_metrics();
        self.sessions = index;
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
