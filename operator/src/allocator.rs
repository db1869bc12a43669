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
//! `allocator/`: `worklists`, `watches`, `admissions`, `deletions`, `endings` (lost workers,
//! clocks, worker-reported ends, TTL), `counts`, `roster` (for the live-state writer),
//! `repair`, `rooms` and `tokens`.

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
mod repair;
mod rooms;
mod roster;
mod tokens;
mod watches;
mod worklists;

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

    /// The rate limits' buckets as the sessions' `admittedAt` leave them, so a restart
    /// admits no faster than the limits allow.
    fn rebuild_rates(&mut self) {
        let admitted = self
            .sessions
            .sessions()
            .values()
            .filter_map(|s| {
                let at = s.status.as_ref()?.admitted_at.as_ref()?.0.as_millisecond();
                let backend = backend_key_of(s);
                let provider = self.provider_of(&backend)?;
                Some((at, provider, backend))
            })
            .collect();
        let limits = rate_limit::limits_of(
            self.providers.state().iter().map(|p| &**p),
            self.backends.state().iter().map(|b| &**b),
        );
        self.rates = rate_limit::rebuild(limits, admitted);
    }

    /// Rebuilds the ledger from the sessions' statuses and the reservations the workers
    /// listed at takeover ([`ledger_rebuild`]); returns how many admissions the next rounds
    /// finish (reserved by an earlier leader that stopped before `Active`).
    fn rebuild(&mut self, reservations: &[Reservation]) -> usize {
        let mut at_start = Vec::new();
        for s in self.sessions.sessions().values() {
            let key = key_of(s);
            let lifecycle = Lifecycle::observed(s.status.as_ref());
            let backend = backend_key_of(s);
            at_start.push(SessionAtStart {
                key: key.clone(),
                provider: self.provider_of(&backend),
                backend,
                pending: lifecycle.phase == SessionPhase::Pending,
                holder: lifecycle
                    .worker
                    .as_ref()
                    .filter(|_| lifecycle.holds_slot())
                    .map(|w| w.pod.clone()),
            });
            self.lifecycle.insert(key, lifecycle);
        }
        let rebuilt = ledger_rebuild::rebuild(&at_start, reservations);
        for key in &rebuilt.finishing {
            if let Some(slot) = rebuilt.ledger.slot(key) {
                tracing::info!(session = %key, worker = %slot.worker, "finishing an admission an earlier leader reserved");
            }
        }
        self.ledger = rebuilt.ledger;
        self.publish_metrics();
        rebuilt.finishing.len()
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

    /// Hands edited `spec.metadata` of held sessions to their workers (see
    /// [`crate::session_metadata`]); best effort on tasks, retried on failure. Only the
    /// sessions that changed or wait for a retry are compared, all of them after a start.
    fn push_metadata(&self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>, changed: &Changed) {
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

    /// Asks the worker (by pod name, via the backend's pods) to free a slot; best effort: the
    /// repair pass catches what fails here.
    fn release_on_worker(&self, key: &SessionKey, slot: &Slot, why: &str) {
        if !self.ctx.fence.is_open() {
            return;
        }
        let Some(ip) = self.pod_ip(&slot.backend.namespace, &slot.worker) else {
            return;
        };
        let ctx = self.ctx.clone();
        let (id, uid, why) = (key.session_id(), key.uid.clone(), why.to_owned());
        tokio::spawn(async move {
            if let Err(e) = ctx
                .workers
                .release(&ip, &id, &uid, &why, WORKER_TIMEOUT)
                .await
            {
                tracing::warn!(session = %id, error = %e, "releasing the slot on the worker failed; the repair pass will retry");
            }
        });
    }

    fn pod_ip(&self, namespace: &str, pod: &str) -> Option<String> {
        let reference = reflector::ObjectRef::new(pod).within(namespace);
        self.pods
            .get(&reference)
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
    }

    /// The allocator's view of every backend: acceptance, caps, placement and workers.
    fn backend_views(&self) -> HashMap<BackendKey, (BackendView, BTreeMap<String, String>)> {
        let now = Instant::now();
        let mut pods_by_backend: HashMap<BackendKey, Vec<Arc<Pod>>> = HashMap::new();
        for pod in self.pods.state() {
            let Some(backend) = pod.labels().get(pod_template::LABEL_BACKEND).cloned() else {
                continue;
            };
            pods_by_backend
                .entry(BackendKey {
                    namespace: pod.namespace().unwrap_or_default(),
                    name: backend,
                })
                .or_default()
                .push(pod);
        }
        let mut views = HashMap::new();
        for b in self.backends.state() {
            let key = BackendKey {
                namespace: b.namespace().unwrap_or_default(),
                name: b.name_any(),
            };
            let status = b.status.clone().unwrap_or_default();
            let accepted = b.meta().deletion_timestamp.is_none()
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == ACCEPTED && c.status == "True");
            let capacity = u32::try_from(b.spec.workers.sessions_per_worker).unwrap_or(0);
            let healthy: HashMap<&str, voice_crds::WorkerPhase> = status
                .worker_statuses
                .iter()
                .map(|w| (w.name.as_str(), w.phase))
                .collect();
            let mut ips = BTreeMap::new();
            let workers = pods_by_backend
                .get(&key)
                .map(|pods| {
                    pods.iter()
                        .filter_map(|p| {
                            let name = p.name_any();
                            let ip = p.status.as_ref()?.pod_ip.clone()?;
                            let facts = worker_pod_facts::of(p);
                            let health = healthy.get(name.as_str()).copied();
                            let draining = world::draining(&facts, health);
                            let ready = world::takes_sessions(&facts, health)
                                && !self
                                    .backoff
                                    .worker_waits(&format!("{}/{name}", key.namespace), now);
                            self.ctx.workers.register(&ip, &key.namespace, &key.name);
                            ips.insert(name.clone(), ip);
                            Some(WorkerView {
                                name,
                                ready,
                                draining,
                                capacity,
                                held: 0,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            views.insert(
                key,
                (
                    BackendView {
                        provider: b.spec.provider.clone(),
                        accepted,
                        max_sessions: u32::try_from(b.spec.max_sessions).unwrap_or(0),
                        placement: b.spec.placement,
                        workers,
                    },
                    ips,
                ),
            );
        }
        views
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn waiting_message(blocked: admission_plan::Blocked, backend: &str) -> String {
    use admission_plan::Blocked;
    match blocked {
        Blocked::ProviderLimit => {
            "the provider's maxConcurrentSessions is reached; waiting for a session to end".into()
        }
        Blocked::NamespaceQuota => format!(
            "the namespace is at its session quota (annotation {} on the Namespace); waiting for a session to end",
            admission_plan::NAMESPACE_QUOTA_ANNOTATION
        ),
        Blocked::BackendLimit => {
            format!("VoiceBackend {backend} is at spec.maxSessions; waiting for a session to end")
        }
        Blocked::NoWorkerCapacity => format!(
            "every ready worker of VoiceBackend {backend} is full; waiting for a slot or a new worker"
        ),
        Blocked::BackendNotReady => format!("VoiceBackend {backend} has no ready worker yet"),
        Blocked::BackendNotFound => format!(
            "VoiceBackend {backend} does not exist in this namespace: create it or fix spec.backendRef.name"
        ),
        Blocked::BackendNotAccepted => {
            format!("VoiceBackend {backend} is not Accepted: see its Accepted condition")
        }
        Blocked::RateLimited => format!(
            "the admissionRateLimit of VoiceBackend {backend} or its provider allows no admission yet; admitted in queue order as it refills"
        ),
        Blocked::AudioFormatNotSupported => {
            "spec.audio does not fit the session's transport, provider or worker".into()
        }
        Blocked::MultiUserNotSupported => format!(
            "spec.participants needs a provider with capabilities.multiUserSupport, which the provider of VoiceBackend {backend} lacks"
        ),
        Blocked::TransportNotSupported => {
            format!("spec.transport is not one VoiceBackend {backend} serves")
        }
        Blocked::UserIDReserved => {
            "a userID of the session is the one the agent joins LiveKit rooms with".into()
        }
        Blocked::RoomNameTooLong => {
            "the session's LiveKit room name is too long; set spec.room".into()
        }
        Blocked::RoomInUse => {
            "another session meets in the session's LiveKit room; waiting for it to end".into()
        }
    }
}

/// The backend's signing keys, from the watched signing-key Secrets (a rotation is seen as
/// soon as the watch delivers it; nothing is cached beyond the watch).
fn backend_keys(secrets: &Store<Secret>, backend: &VoiceBackend) -> Result<KeySet, String> {
    let namespace = backend.namespace().unwrap_or_default();
    let name = pod_template::signing_secret_name(&backend.name_any());
    let secret = secrets
        .get(&reflector::ObjectRef::new(&name).within(&namespace))
        .ok_or_else(|| format!("Secret {namespace}/{name} is not written yet"))?;
    // Another backend's Secret of the same name is not ours to sign with.
    let owned = secret
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == backend.metadata.uid.as_ref());
    if !owned {
        return Err(format!(
            "Secret {namespace}/{name} is not owned by the backend"
        ));
    }
    signing_keys::key_set_of(&secret).map_err(|e| format!("Secret {namespace}/{name}: {e}"))
}
