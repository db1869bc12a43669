//! The session allocator: the one place that admits, re-admits and ends VoiceSessions.
//!
//! It runs in the leader only, as a single loop that owns the [`Ledger`], so every admission
//! decision is serialized (per provider and globally) without locks. Each round it reads the
//! watched API state, reconciles the ledger with it (deleted sessions, lost workers, deleted
//! backends, expired clocks), asks the pure [`admission_plan::plan`] which pending sessions fit,
//! and starts their admissions ([`admission_steps`]) as tasks whose outcomes come back to the
//! loop. Queue positions, ends and counts go to the [`StatusWriter`], which reports back what
//! the API took, so the loop does not wait for those writes. At start the workers are fenced
//! and listed ([`crate::leader_takeover`]), then the ledger is rebuilt from the sessions'
//! statuses plus the workers' reservations: the API and the workers together are the truth.

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
use crate::session_lifecycle::{Lifecycle, reason};
use crate::session_metadata::MetadataSync;
use crate::session_participants;
use crate::session_timeouts::{self, Clocks, Expired};
use crate::session_tokens;
use crate::signing_keys;
use crate::status_writer::{Body, Done, StatusWriter, Target};
use crate::worker_repair;
use voice_proto::token::KeySet;

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
    sessions: Store<VoiceSession>,
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
    let sessions = reflect(sessions, watcher::Config::default(), &wake, &cancel);
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
    for ready in [
        sessions.wait_until_ready().await.is_ok(),
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
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            Some((key, outcome)) = outcome_rx.recv() => a.settle(key, outcome),
            Some(done) = written_rx.recv() => a.written(done),
            Some(end) = ended.recv() => a.worker_ended(end).await,
            Some((key, worker)) = repair_rx.recv() => a.ended_unseen(key, worker).await,
            Some((key, result)) = token_rx.recv() => a.token_written(key, result),
            _ = tick.tick() => clocks_due = true,
            () = sleep_until_some(a.rate_wake) => a.rate_wake = None,
            () = sleep_until_some(a.backoff.next_due(Instant::now())) => {}
        }
        // Rounds are O(sessions): batch the watch events and outcomes of a burst into one
        // round every MIN_ROUND_INTERVAL rather than one round per event.
        let since = last_round.elapsed();
        if since < MIN_ROUND_INTERVAL {
            tokio::time::sleep(MIN_ROUND_INTERVAL - since).await;
        }
        while let Ok((key, outcome)) = outcome_rx.try_recv() {
            a.settle(key, outcome);
        }
        while let Ok(done) = written_rx.try_recv() {
            a.written(done);
        }
        if a.ctx.fence.is_open() {
            let started = Instant::now();
            a.round(clocks_due).await;
            a.ctx
                .metrics
                .allocator_round_duration
                .observe(started.elapsed().as_secs_f64());
        }
        last_round = Instant::now();
    }
}

/// A reflector store kept current by a background task that wakes the loop on every change.
fn reflect<K>(
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

fn key_of(s: &VoiceSession) -> SessionKey {
    SessionKey {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
        uid: s.uid().unwrap_or_default(),
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
    /// The rate limits' buckets as the sessions' `admittedAt` leave them, so a restart
    /// admits no faster than the limits allow.
    fn rebuild_rates(&mut self) {
        let admitted = self
            .sessions
            .state()
            .iter()
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
        for s in self.sessions.state() {
            let key = key_of(&s);
            let lifecycle = Lifecycle::observed(s.status.as_ref());
            let backend = backend_key_of(&s);
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

    /// Active sessions whose join-token Secret is missing (a leader stopped between the
    /// status and the Secret): queued for [`Allocator::write_missing_tokens`]. One list of
    /// the Secrets' names, at start only; later failures are remembered as they happen.
    async fn find_missing_tokens(&mut self) {
        let api: Api<Secret> = match &self.ctx.scope.namespace {
            Some(ns) => Api::namespaced(self.ctx.client.clone(), ns),
            None => Api::all(self.ctx.client.clone()),
        };
        let params = ListParams::default().fields(&format!("type={}", session_tokens::SECRET_TYPE));
        let names: HashSet<(String, String)> = match api.list_metadata(&params).await {
            Ok(list) => list
                .items
                .iter()
                .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing join-token Secrets failed; not checking for missing ones");
                return;
            }
        };
        let now = Instant::now();
        for (key, _) in self.ledger.iter() {
            let active = self.lifecycle.get(key).map(|l| l.phase) == Some(SessionPhase::Active);
            let name = session_tokens::token_secret_name(&key.name);
            if active && !names.contains(&(key.namespace.clone(), name)) {
                self.tokens_due
                    .insert(key.clone(), (now, TOKEN_RETRY_FIRST));
            }
        }
    }

    fn provider_of(&self, backend: &BackendKey) -> Option<String> {
        let reference = reflector::ObjectRef::new(&backend.name).within(&backend.namespace);
        self.backends
            .get(&reference)
            .map(|b| b.spec.provider.clone())
    }

    /// Why `session` cannot be served by its backend and provider as it is, if it cannot:
    /// first its participants (a capability of the whole provider), then its audio.
    fn misfit(&self, session: &VoiceSession, namespace: &str) -> Option<Misfit> {
        let reference = reflector::ObjectRef::new(&session.spec.backend_ref.name).within(namespace);
        let backend = self.backends.get(&reference);
        let provider = backend.as_ref().and_then(|b| {
            self.providers
                .get(&reflector::ObjectRef::new(&b.spec.provider))
        });
        let (backend, provider) = (backend.as_deref(), provider.as_deref());
        session_participants::misfit_of(session, backend, provider)
            .map(Misfit::MultiUser)
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

    /// One pass over the API state.
    async fn round(&mut self, clocks_due: bool) {
        let now = Timestamp::now();
        let sessions: HashMap<SessionKey, Arc<VoiceSession>> = self
            .sessions
            .state()
            .into_iter()
            .filter(|s| s.meta().deletion_timestamp.is_none())
            .map(|s| (key_of(&s), s))
            .collect();
        self.forget_deleted(&sessions);
        let backends = self.backend_views();
        self.publish_roster(&backends);
        self.handle_lost_workers(&sessions, &backends, now).await;
        if clocks_due {
            self.handle_clocks(&sessions, now).await;
        }
        self.finish_reserved(&sessions, &backends);
        self.admit_pending(&sessions, &backends, now).await;
        self.write_missing_tokens(&sessions);
        self.push_metadata(&sessions);
        self.write_counts(&sessions).await;
        if Instant::now() >= self.repair_at {
            self.repair_at = Instant::now() + REPAIR_INTERVAL;
            self.repair_orphans(&backends);
        }
        self.publish_metrics();
    }

    /// Frees the slots of sessions that are gone from the API and tells their workers.
    fn forget_deleted(&mut self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>) {
        let gone: Vec<SessionKey> = self
            .ledger
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !sessions.contains_key(k) && !self.in_flight.contains(k))
            .collect();
        for key in gone {
            if let Some(slot) = self.ledger.release(&key) {
                tracing::info!(session = %key, worker = %slot.worker, "session deleted; slot released");
                self.release_on_worker(&key, &slot, "Deleted");
            }
        }
        let removed: Vec<SessionKey> = self
            .lifecycle
            .keys()
            .filter(|k| !sessions.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            self.lifecycle.remove(&key);
            self.lifecycle_changed.insert(key);
        }
        self.waiting_written.retain(|k, _| sessions.contains_key(k));
        self.metadata.retain(|k| sessions.contains_key(k));
        self.backoff.retain_sessions(|k| sessions.contains_key(k));
    }

    /// Hands edited `spec.metadata` of held sessions to their workers (see
    /// [`crate::session_metadata`]); best effort on tasks, retried next round on failure.
    fn push_metadata(&self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>) {
        for (key, slot) in self.ledger.iter() {
            if self.in_flight.contains(key) {
                continue;
            }
            let Some(session) = sessions.get(key) else {
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
                            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
                            let deleting = p.meta().deletion_timestamp.is_some();
                            let draining = p.labels().contains_key(pod_template::LABEL_DRAINING)
                                || healthy.get(name.as_str())
                                    == Some(&voice_crds::WorkerPhase::Draining);
                            let ready = running
                                && !deleting
                                && healthy.get(name.as_str())
                                    == Some(&voice_crds::WorkerPhase::Ready)
                                && !self
                                    .backoff
                                    .worker_waits(&format!("{}/{name}", key.namespace), now);
                            self.ctx.workers.register(&ip, &key.namespace, &key.name);
                            ips.insert(name.clone(), ip);
                            Some(WorkerView {
                                name,
                                ready,
                                draining: draining || deleting,
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

    /// Publishes every worker's address and the sessions each may report on: the ledger's
    /// holder, or for a session no longer held, the worker its status names.
    fn publish_roster(
        &mut self,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
    ) {
        let workers: BTreeMap<String, WorkerRef> = backends
            .iter()
            .flat_map(|(backend, (_, ips))| {
                ips.iter().map(|(pod, ip)| {
                    let worker = WorkerRef {
                        namespace: backend.namespace.clone(),
                        pod: pod.clone(),
                    };
                    (ip.clone(), worker)
                })
            })
            .collect();
        let id = |k: &SessionKey| (k.session_id(), k.uid.clone());
        let changed: HashSet<SessionKey> = self
            .ledger
            .take_changed()
            .into_iter()
            .chain(self.lifecycle_changed.drain())
            .collect();
        if self.roster_built {
            // Only the sessions that moved: the holders are O(sessions) to build whole.
            let updates: Vec<((String, String), Option<WorkerRef>)> =
                changed.iter().map(|k| (id(k), self.holder_of(k))).collect();
            self.roster.send_if_modified(|current| {
                let mut modified = current.workers != workers;
                if modified {
                    current.workers = workers;
                }
                for (id, holder) in updates {
                    modified |= match holder {
                        Some(h) if current.holders.get(&id) != Some(&h) => {
                            current.holders.insert(id, h);
                            true
                        }
                        Some(_) => false,
                        None => current.holders.remove(&id).is_some(),
                    };
                }
                modified
            });
            return;
        }
        self.roster_built = true;
        let mut holders: HashMap<(String, String), WorkerRef> = self
            .lifecycle
            .iter()
            .filter_map(|(k, l)| {
                let pod = l.worker.as_ref()?.pod.clone();
                let namespace = k.namespace.clone();
                Some((id(k), WorkerRef { namespace, pod }))
            })
            .collect();
        // The ledger wins: it moves first when a session is placed on a worker.
        holders.extend(self.ledger.iter().map(|(k, slot)| {
            let worker = WorkerRef {
                namespace: slot.backend.namespace.clone(),
                pod: slot.worker.clone(),
            };
            (id(k), worker)
        }));
        let roster = Roster { workers, holders };
        self.roster.send_if_modified(|current| {
            if *current == roster {
                false
            } else {
                *current = roster;
                true
            }
        });
    }

    /// The worker that may speak for `key`: its ledger slot's, else (an ended session) the
    /// one its status still names.
    fn holder_of(&self, key: &SessionKey) -> Option<WorkerRef> {
        if let Some(slot) = self.ledger.slot(key) {
            return Some(WorkerRef {
                namespace: slot.backend.namespace.clone(),
                pod: slot.worker.clone(),
            });
        }
        let pod = self.lifecycle.get(key)?.worker.as_ref()?.pod.clone();
        Some(WorkerRef {
            namespace: key.namespace.clone(),
            pod,
        })
    }

    /// Sessions whose worker pod is gone or finished go back to Pending (WorkerLost) to be
    /// re-admitted elsewhere with their persisted context; sessions of a deleted backend end.
    async fn handle_lost_workers(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
        now: Timestamp,
    ) {
        let held: Vec<(SessionKey, Slot)> = self
            .ledger
            .iter()
            .filter(|(k, _)| !self.in_flight.contains(*k))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, slot) in held {
            let Some(session) = sessions.get(&key) else {
                continue;
            };
            let Some((_, ips)) = backends.get(&slot.backend) else {
                self.end(
                    session,
                    &key,
                    SessionPhase::Completed,
                    reason::BACKEND_DELETED,
                    "its VoiceBackend was deleted",
                    now,
                )
                .await;
                continue;
            };
            if self.worker_alive(&slot.backend.namespace, &slot.worker)
                && ips.contains_key(&slot.worker)
            {
                continue;
            }
            if self.phase_of(&key, session) == SessionPhase::Pending {
                // Reserved but never Active: nobody was connected; plan it again.
                tracing::info!(session = %key, worker = %slot.worker, "worker lost before the admission finished; planning again");
                self.ledger.release(&key);
                continue;
            }
            if !self.persistent(&slot.provider) {
                let message = format!(
                    "worker {} was lost and provider {} does not offer capabilities.sessionPersistence",
                    slot.worker, slot.provider
                );
                self.ctx.metrics.sessions_lost.inc();
                self.end(
                    session,
                    &key,
                    SessionPhase::Failed,
                    reason::WORKER_LOST,
                    &message,
                    now,
                )
                .await;
                continue;
            }
            self.ledger.release(&key);
            let lifecycle = self.lifecycle_of(&key, session);
            let message = format!(
                "worker {} was lost; waiting for another worker (the client reconnects with the same token)",
                slot.worker
            );
            let next = lifecycle
                .pending(reason::WORKER_LOST, &message, None, Time(now))
                .observing(session.metadata.generation);
            tracing::warn!(session = %key, worker = %slot.worker, "worker lost; re-admitting");
            self.ctx.metrics.sessions_lost.inc();
            crate::events::publish_session_warning(
                &self.ctx.session_recorder,
                &key.namespace,
                &key.name,
                &key.uid,
                reason::WORKER_LOST,
                &message,
            )
            .await;
            self.write(&key, next);
        }
    }

    /// Whether the provider's sessions survive worker loss (FR-025): re-admitted with their
    /// context rather than failed.
    fn persistent(&self, provider: &str) -> bool {
        self.providers
            .get(&reflector::ObjectRef::new(provider))
            .is_some_and(|p| p.spec.capabilities.session_persistence)
    }

    fn worker_alive(&self, namespace: &str, pod: &str) -> bool {
        let reference = reflector::ObjectRef::new(pod).within(namespace);
        self.pods.get(&reference).is_some_and(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            )
        })
    }

    /// Pending timeouts, maximum durations, idle timeouts and TTLs.
    async fn handle_clocks(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        now: Timestamp,
    ) {
        for (key, session) in sessions {
            if self.in_flight.contains(key) {
                continue;
            }
            let observed;
            let lifecycle = match self.lifecycle.get(key) {
                Some(l) => l,
                None => {
                    observed = Lifecycle::observed(session.status.as_ref());
                    &observed
                }
            };
            let lost_at = (lifecycle.admitted_reason() == Some(reason::WORKER_LOST))
                .then(|| timestamp(lifecycle.admitted_since()))
                .flatten();
            let clocks = Clocks {
                phase: lifecycle.phase,
                holds_slot: self.ledger.slot(key).is_some(),
                created: timestamp(session.metadata.creation_timestamp.as_ref()),
                lost_worker_at: lost_at,
                admitted_at: timestamp(lifecycle.admitted_at.as_ref()),
                last_activity: timestamp(
                    session
                        .status
                        .as_ref()
                        .and_then(|s| s.last_activity.as_ref()),
                ),
                ended_at: timestamp(lifecycle.ended_at.as_ref()),
                pending_timeout: session.spec.pending_timeout.map(Duration::from),
                max_duration: session.spec.max_duration.map(Duration::from),
                idle_timeout: session.spec.idle_timeout.map(Duration::from),
                ttl_after_finished: Duration::from_secs(
                    u64::try_from(session.spec.ttl_seconds_after_finished).unwrap_or(0),
                ),
            };
            let expired = session_timeouts::check(&clocks, now);
            match expired {
                None => {}
                Some(Expired::Fail(why)) => {
                    let message = if why == reason::WORKER_LOST {
                        "its worker was lost and no other worker had room within spec.pendingTimeout"
                    } else {
                        "no capacity within spec.pendingTimeout"
                    };
                    self.end(session, key, SessionPhase::Failed, why, message, now)
                        .await;
                }
                Some(Expired::End(why)) => {
                    let message = if why == reason::MAX_DURATION {
                        "the session reached spec.maxDuration"
                    } else {
                        "no client activity within spec.idleTimeout"
                    };
                    self.end(session, key, SessionPhase::Completed, why, message, now)
                        .await;
                }
                Some(Expired::Delete) => self.delete_finished(session).await,
            }
        }
    }

    /// Ends a session: frees its slot, tells its worker, and records the end.
    async fn end(
        &mut self,
        session: &VoiceSession,
        key: &SessionKey,
        phase: SessionPhase,
        why: &str,
        message: &str,
        now: Timestamp,
    ) {
        if let Some(slot) = self.ledger.release(key) {
            self.release_on_worker(key, &slot, why);
        }
        let next = self
            .lifecycle_of(key, session)
            .ended(phase, why, message, Time(now))
            .observing(session.metadata.generation);
        self.ctx
            .metrics
            .sessions_ended
            .with_label_values(&[why])
            .inc();
        if phase == SessionPhase::Failed {
            crate::events::publish_session_warning(
                &self.ctx.session_recorder,
                &key.namespace,
                &key.name,
                &key.uid,
                why,
                message,
            )
            .await;
        }
        self.write(key, next);
    }

    /// A worker reported that a session ended (client hang-up, drain deadline, ...). Only the
    /// worker holding the session in the ledger may end it; the live writer checked that
    /// against the published roster, and it is checked again here against the ledger itself,
    /// which may have moved since.
    async fn worker_ended(&mut self, end: Ended) {
        let Some((key, slot)) = self
            .ledger
            .iter()
            .find(|(k, _)| k.is(&end.session_id, &end.uid))
            .map(|(k, s)| (k.clone(), s.clone()))
        else {
            return;
        };
        if slot.worker != end.worker.pod || key.namespace != end.worker.namespace {
            self.ctx
                .metrics
                .session_events_dropped
                .with_label_values(&[crate::event_source::DropReason::OtherWorker.as_str()])
                .inc();
            tracing::warn!(session = %end.session_id, worker = %end.worker.pod, holder = %slot.worker, "a worker that does not hold the session reported its end; ignored");
            return;
        }
        if self.in_flight.contains(&key) {
            return;
        }
        let reference = reflector::ObjectRef::new(&key.name).within(&key.namespace);
        let Some(session) = self.sessions.get(&reference) else {
            return;
        };
        let message = if end.message.is_empty() {
            format!("the worker ended the session: {}", end.reason)
        } else {
            format!(
                "the worker ended the session ({}): {}",
                end.reason, end.message
            )
        };
        self.end(
            &session,
            &key,
            SessionPhase::Completed,
            &end.reason,
            &message,
            Timestamp::now(),
        )
        .await;
    }

    async fn delete_finished(&mut self, session: &VoiceSession) {
        let api: Api<VoiceSession> = Api::namespaced(
            self.ctx.client.clone(),
            &session.namespace().unwrap_or_default(),
        );
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: session.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&session.name_any(), &params).await {
            Ok(_) => {
                tracing::info!(session = %session.name_any(), "finished session deleted after its TTL")
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(session = %session.name_any(), error = %e, "deleting a finished session failed")
            }
        }
    }

    /// Sessions that hold a slot but are not Active yet (an admission to retry, one an
    /// earlier leader reserved, or a status an earlier version wrote ahead): admit them onto
    /// the worker that holds the slot, which answers ALREADY_RESERVED if it reserved before.
    fn finish_reserved(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
    ) {
        let now = Instant::now();
        let unfinished: Vec<(SessionKey, Slot)> = self
            .ledger
            .iter()
            .filter(|(k, _)| !self.in_flight.contains(*k) && !self.backoff.session_waits(k, now))
            .filter(|(k, _)| {
                sessions
                    .get(*k)
                    .is_some_and(|s| self.phase_of(k, s) == SessionPhase::Pending)
            })
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, slot) in unfinished {
            let (Some(session), Some((_, ips))) = (sessions.get(&key), backends.get(&slot.backend))
            else {
                continue;
            };
            let worker = SessionWorker {
                pod: slot.worker.clone(),
                pod_ip: ips.get(&slot.worker).cloned(),
            };
            self.start(session.clone(), key, worker, true);
        }
    }

    /// Writes the join-token Secrets of Active sessions that still lack theirs, on tasks.
    fn write_missing_tokens(&mut self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>) {
        let now = Instant::now();
        let due: Vec<SessionKey> = self
            .tokens_due
            .iter()
            .filter(|(k, (at, _))| *at <= now && !self.tokens_writing.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let lifecycle = sessions.get(&key).map(|s| self.lifecycle_of(&key, s));
            let (Some(session), Some(endpoint)) = (
                sessions.get(&key),
                lifecycle
                    .filter(|l| l.phase == SessionPhase::Active && !self.in_flight.contains(&key))
                    .and_then(|l| l.endpoint),
            ) else {
                // Ended, deleted or being admitted again (which writes its own Secret).
                self.tokens_due.remove(&key);
                continue;
            };
            let reference =
                reflector::ObjectRef::new(&session.spec.backend_ref.name).within(&key.namespace);
            let Some(backend) = self.backends.get(&reference) else {
                self.tokens_due.remove(&key);
                continue;
            };
            let keys = backend_keys(&self.secrets, &backend);
            let (ctx, session, results) = (
                self.ctx.clone(),
                session.clone(),
                self.tokens_written.clone(),
            );
            self.tokens_writing.insert(key.clone());
            tokio::spawn(async move {
                let result = match keys {
                    Ok(keys) => {
                        admission_steps::write_tokens(&ctx, &session, &backend, &endpoint, &keys)
                            .await
                    }
                    Err(e) => Err(e),
                };
                let _ = results.send((key, result)).await;
            });
        }
    }

    /// Takes a token Secret write's result: done, or due again after a longer delay.
    fn token_written(&mut self, key: SessionKey, result: Result<(), String>) {
        self.tokens_writing.remove(&key);
        match result {
            Ok(()) => {
                tracing::info!(session = %key, "join-token Secret written");
                self.tokens_due.remove(&key);
            }
            Err(error) => {
                if let Some((at, delay)) = self.tokens_due.get_mut(&key) {
                    tracing::warn!(session = %key, %error, retry_in = ?*delay, "writing the join-token Secret failed");
                    *at = Instant::now() + *delay;
                    *delay = (*delay * 2).min(TOKEN_RETRY_MAX);
                }
            }
        }
    }

    /// Plans the pending sessions, starts the admissions that fit, and records why the rest wait.
    async fn admit_pending(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
        now: Timestamp,
    ) {
        let pending: Vec<PendingSession> = sessions
            .iter()
            .filter(|(k, s)| {
                !self.in_flight.contains(*k)
                    && !self.backoff.session_waits(k, Instant::now())
                    && self.ledger.slot(k).is_none()
                    && self.phase_of(k, s) == SessionPhase::Pending
            })
            .map(|(k, s)| PendingSession {
                key: k.clone(),
                backend: backend_key_of(s),
                created: s
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_millisecond()),
                misfit: self.misfit(s, &k.namespace),
            })
            .collect();
        if pending.is_empty() {
            self.record_waiting(&[]);
            return;
        }
        let views: HashMap<BackendKey, BackendView> = backends
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let caps = admission_plan::Caps {
            providers: self
                .providers
                .state()
                .iter()
                .map(|p| {
                    let cap = p.spec.capabilities.max_concurrent_sessions;
                    (p.name_any(), u32::try_from(cap).unwrap_or(0))
                })
                .collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .filter_map(|n| {
                    let quota = n
                        .annotations()
                        .get(admission_plan::NAMESPACE_QUOTA_ANNOTATION)?;
                    Some((n.name_any(), quota.trim().parse().unwrap_or(0)))
                })
                .collect(),
        };
        self.rates.set_limits(rate_limit::limits_of(
            self.providers.state().iter().map(|p| &**p),
            self.backends.state().iter().map(|b| &**b),
        ));
        let now_ms = now.as_millisecond();
        let plan = admission_plan::plan(&self.ledger, &pending, &views, &caps, &self.rates, now_ms);
        self.rates = plan.rates;
        self.rate_wake = plan.next_due.map(|due| {
            Instant::now() + Duration::from_millis(u64::try_from(due - now_ms).unwrap_or(0))
        });
        self.record_waiting(&plan.waiting);
        for (key, slot) in plan.admit {
            let Some(session) = sessions.get(&key) else {
                continue;
            };
            let ip = backends
                .get(&slot.backend)
                .and_then(|(_, ips)| ips.get(&slot.worker).cloned());
            let worker = SessionWorker {
                pod: slot.worker.clone(),
                pod_ip: ip,
            };
            self.ledger.hold(key.clone(), slot);
            if self.proposed.contains_key(&key) {
                self.in_flight.insert(key.clone());
                self.deferred.insert(key, (session.clone(), worker));
            } else {
                self.start(session.clone(), key, worker, false);
            }
        }
        // The new holders must be known before their workers can report: a client connects
        // only after the admission wrote its token, but the waiting writes below may be slow.
        self.publish_roster(backends);
        for waiting in plan.waiting {
            let Some(session) = sessions.get(&waiting.key) else {
                continue;
            };
            // The latest decision, applied or still with the writer: a wait is counted once,
            // and an end the writer has not applied yet is not turned back into a wait.
            let lifecycle = self.lifecycle_of(&waiting.key, session);
            // A session that lost its worker keeps saying so while it waits.
            let why = if lifecycle.admitted_reason() == Some(reason::WORKER_LOST) {
                reason::WORKER_LOST
            } else {
                waiting.blocked.reason()
            };
            let message = waiting.detail.clone().unwrap_or_else(|| {
                waiting_message(waiting.blocked, &session.spec.backend_ref.name)
            });
            let next = lifecycle
                .pending(
                    why,
                    &message,
                    waiting
                        .queue_position
                        .map(|p| i32::try_from(p).unwrap_or(i32::MAX)),
                    Time(now),
                )
                .observing(session.metadata.generation);
            if next == lifecycle {
                continue;
            }
            let due = self
                .waiting_written
                .get(&waiting.key)
                .is_none_or(|at| at.elapsed() >= WAITING_WRITE_INTERVAL);
            // The reason changing is news; a shifted position can wait for the next interval.
            let new_reason = next.admitted_reason() != lifecycle.admitted_reason();
            if new_reason {
                self.ctx
                    .metrics
                    .session_waits
                    .with_label_values(&[why])
                    .inc();
            }
            if due || new_reason {
                self.waiting_written
                    .insert(waiting.key.clone(), Instant::now());
                self.write(&waiting.key, next);
            }
        }
    }

    /// Starts an admission task for `session` onto `worker`; its slot is already in the ledger.
    fn start(
        &mut self,
        session: Arc<VoiceSession>,
        key: SessionKey,
        worker: SessionWorker,
        resume: bool,
    ) {
        let backend_ref =
            reflector::ObjectRef::new(&session.spec.backend_ref.name).within(&key.namespace);
        let Some(backend) = self.backends.get(&backend_ref) else {
            return;
        };
        let lifecycle = self.lifecycle_of(&key, &session);
        let ctx = self.ctx.clone();
        let outcomes = self.outcomes.clone();
        let permits = self.admissions.clone();
        let keys = backend_keys(&self.secrets, &backend);
        self.metadata.reserved(
            &key,
            session.metadata.generation,
            session.spec.metadata.as_ref(),
        );
        self.in_flight.insert(key.clone());
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            let outcome = match keys {
                Ok(signing_keys) => {
                    let admission = Admission {
                        session: (*session).clone(),
                        backend: (*backend).clone(),
                        lifecycle,
                        worker,
                        signing_keys,
                    };
                    admission_steps::admit(&ctx, admission).await
                }
                // A resumed slot may be reserved on its worker: keep it.
                Err(e) if resume => Outcome::Retry(e),
                Err(e) => Outcome::NotStarted(e),
            };
            ctx.metrics
                .admission_step_duration
                .observe(started.elapsed().as_secs_f64());
            if let Outcome::Admitted { .. } = &outcome
                && let Some(created) = session.metadata.creation_timestamp.as_ref()
            {
                let waited = Timestamp::now().duration_since(created.0);
                ctx.metrics
                    .admission_latency
                    .observe(waited.as_secs_f64().max(0.0));
            }
            let _ = outcomes.send((key, outcome)).await;
        });
    }

    /// Takes an admission's outcome into the loop's state.
    fn settle(&mut self, key: SessionKey, outcome: Outcome) {
        self.in_flight.remove(&key);
        let result = match &outcome {
            Outcome::Admitted { .. } => "admitted",
            Outcome::Refused { .. } => "refused",
            Outcome::Retry { .. } => "retry",
            Outcome::NotStarted(_) => "not_started",
        };
        self.ctx
            .metrics
            .admissions
            .with_label_values(&[result])
            .inc();
        let worker = self
            .ledger
            .slot(&key)
            .map(|slot| format!("{}/{}", slot.backend.namespace, slot.worker));
        match outcome {
            Outcome::Admitted {
                lifecycle,
                token_written,
            } => {
                if let Some(worker) = &worker {
                    self.backoff.took(worker, &key);
                }
                self.waiting_written.remove(&key);
                if token_written {
                    self.tokens_due.remove(&key);
                } else {
                    self.tokens_due
                        .insert(key.clone(), (Instant::now(), TOKEN_RETRY_FIRST));
                }
                self.lifecycle_changed.insert(key.clone());
                self.lifecycle.insert(key, *lifecycle);
            }
            Outcome::Refused { refusal, error } => {
                tracing::info!(session = %key, %error, ?refusal, "worker refused the reservation; backing off, then planning again");
                if let Some(worker) = &worker {
                    self.backoff.refused(worker, &key, refusal, Instant::now());
                }
                self.ledger.release(&key);
            }
            Outcome::Retry(error) => {
                // The slot stays held (the worker may have reserved it); this session alone
                // waits a little before the next try.
                tracing::warn!(session = %key, %error, "admission step failed; retrying");
                if let Some(worker) = &worker {
                    self.backoff
                        .refused(worker, &key, Refusal::Session, Instant::now());
                }
            }
            Outcome::NotStarted(error) => {
                tracing::warn!(session = %key, %error, "admission did not start; planning again");
                self.ledger.release(&key);
            }
        }
    }

    /// Hands `next` to the status writer as the session's lifecycle; it is remembered as
    /// applied only once the writer reports that the API took it ([`Allocator::written`]).
    fn write(&mut self, key: &SessionKey, next: Lifecycle) {
        if self.proposed.get(key) == Some(&next) {
            return;
        }
        if self.writer.submit(
            Target::Session(key.clone()),
            Body::Lifecycle(Box::new(next.clone())),
        ) {
            self.proposed.insert(key.clone(), next);
        }
    }

    /// Takes a finished write into the loop's state, and starts an admission that waited
    /// for it.
    fn written(&mut self, done: Done) {
        match (done.target, done.body) {
            (Target::Session(key), Body::Lifecycle(lifecycle)) => {
                let lifecycle = *lifecycle;
                if self.proposed.get(&key) == Some(&lifecycle) {
                    self.proposed.remove(&key);
                }
                if done.applied {
                    self.lifecycle.insert(key.clone(), lifecycle);
                    self.lifecycle_changed.insert(key.clone());
                }
                if !self.proposed.contains_key(&key)
                    && let Some((session, worker)) = self.deferred.remove(&key)
                {
                    self.in_flight.remove(&key);
                    self.start(session, key, worker, false);
                }
            }
            (Target::Backend(key), Body::Pending(pending)) if done.applied => {
                self.counts_written.insert(
                    format!("backend/{}/{}", key.namespace, key.name),
                    (pending, 0),
                );
            }
            (Target::Provider(name), Body::Counts(in_use, pending)) if done.applied => {
                self.counts_written
                    .insert(format!("provider/{name}"), (in_use, pending));
            }
            _ => {}
        }
    }

    async fn write_counts(&mut self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>) {
        let mut per_backend: HashMap<BackendKey, BackendSessions> = HashMap::new();
        let mut provider_pending: HashMap<String, i32> = HashMap::new();
        for (key, session) in sessions {
            let backend = backend_key_of(session);
            let entry = per_backend.entry(backend.clone()).or_default();
            if self.ledger.slot(key).is_some() {
                entry.active += 1;
            } else if self.phase_of(key, session) == SessionPhase::Pending
                // A session that cannot run as it is asks for no worker.
                && !self
                    .lifecycle_of(key, session)
                    .admitted_reason()
                    .is_some_and(Misfit::is_reason)
            {
                entry.pending += 1;
                if let Some(provider) = self.provider_of(&backend) {
                    *provider_pending.entry(provider).or_default() += 1;
                }
            }
        }
        self.ctx.session_counts.publish(per_backend.clone());
        if self
            .counts_at
            .is_some_and(|at| at.elapsed() < COUNTS_WRITE_INTERVAL)
        {
            return;
        }
        self.counts_at = Some(Instant::now());
        for b in self.backends.state() {
            let key = BackendKey {
                namespace: b.namespace().unwrap_or_default(),
                name: b.name_any(),
            };
            let pending =
                i32::try_from(per_backend.get(&key).map_or(0, |c| c.pending)).unwrap_or(i32::MAX);
            let id = format!("backend/{}/{}", key.namespace, key.name);
            let observed = b.status.as_ref().map_or(0, |s| s.pending_sessions);
            if self.counts_written.get(&id) == Some(&(pending, 0)) && observed == pending {
                continue;
            }
            self.writer
                .submit(Target::Backend(key), Body::Pending(pending));
        }
        // A deleted provider's gauges would otherwise be scraped (and alerted on) forever.
        let providers: HashSet<String> = self
            .providers
            .state()
            .iter()
            .map(|p| p.name_any())
            .collect();
        for gone in self
            .metric_providers
            .iter()
            .filter(|p| !providers.contains(*p))
        {
            let m = &self.ctx.metrics;
            let _ = m.provider_session_limit.remove_label_values(&[gone]);
            let _ = m.provider_sessions.remove_label_values(&[gone, "in_use"]);
            let _ = m.provider_sessions.remove_label_values(&[gone, "pending"]);
        }
        self.metric_providers = providers;
        for p in self.providers.state() {
            let name = p.name_any();
            let in_use = i32::try_from(self.ledger.provider_count(&name)).unwrap_or(i32::MAX);
            let pending = provider_pending.get(&name).copied().unwrap_or(0);
            self.ctx
                .metrics
                .provider_session_limit
                .with_label_values(&[&name])
                .set(i64::from(p.spec.capabilities.max_concurrent_sessions));
            let id = format!("provider/{name}");
            let observed = p
                .status
                .as_ref()
                .map_or((0, 0), |s| (s.sessions_in_use, s.sessions_pending));
            if self.counts_written.get(&id) == Some(&(in_use, pending))
                && observed == (in_use, pending)
            {
                continue;
            }
            self.writer.submit(
                Target::Provider(name.clone()),
                Body::Counts(in_use, pending),
            );
            self.ctx
                .metrics
                .provider_sessions
                .with_label_values(&[&name, "in_use"])
                .set(i64::from(in_use));
            self.ctx
                .metrics
                .provider_sessions
                .with_label_values(&[&name, "pending"])
                .set(i64::from(pending));
        }
    }

    /// Releases reservations that workers hold but the ledger does not (an admission refused
    /// after a timeout, a session deleted while the operator was down).
    fn repair_orphans(
        &self,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
    ) {
        // Each known session with the IP of the worker the ledger says holds it: the same
        // session held by another worker is an orphan there (an earlier leader's reservation
        // on a worker that did not answer at takeover).
        let ip_of = |slot: &Slot| {
            backends
                .get(&slot.backend)
                .and_then(|(_, ips)| ips.get(&slot.worker).cloned())
        };
        let mut known = worker_repair::Known::default();
        for (key, slot) in self.ledger.iter() {
            let id = (key.session_id(), key.uid.clone());
            if self.in_flight.contains(key) {
                known.holders.insert(id, None);
                continue;
            }
            let ip = ip_of(slot);
            if let Some(ip) = &ip
                && self.lifecycle.get(key).map(|l| l.phase) == Some(SessionPhase::Active)
            {
                known
                    .active
                    .entry(ip.clone())
                    .or_default()
                    .push((key.clone(), slot.worker.clone()));
            }
            known.holders.insert(id, ip);
        }
        for k in &self.in_flight {
            known.holders.insert((k.session_id(), k.uid.clone()), None);
        }
        let ips: BTreeSet<String> = backends
            .values()
            .flat_map(|(_, ips)| ips.values().cloned())
            .collect();
        let ctx = self.ctx.clone();
        let repairs = self.repairs.clone();
        tokio::spawn(async move {
            for ip in ips {
                let Ok(listed) = ctx.workers.list_sessions(&ip, WORKER_TIMEOUT).await else {
                    continue;
                };
                let held: Vec<worker_repair::Held> = listed
                    .into_iter()
                    .map(|s| worker_repair::Held {
                        session_id: s.session_id,
                        uid: s.uid,
                        reserved_at: s.reserved_at.map(|t| t.seconds),
                    })
                    .collect();
                let grace = i64::try_from(REPAIR_INTERVAL.as_secs()).unwrap_or(i64::MAX);
                let findings =
                    worker_repair::compare(&ip, &held, &known, Timestamp::now().as_second(), grace);
                for (key, worker) in findings.ended_unseen {
                    let _ = repairs.send((key, worker)).await;
                }
                for (session_id, uid) in findings.orphans {
                    tracing::warn!(session = %session_id, %uid, worker = %ip, "worker holds a slot the API does not know; releasing it");
                    ctx.metrics.orphans_released.inc();
                    let _ = ctx
                        .workers
                        .release(&ip, &session_id, &uid, "Orphaned", WORKER_TIMEOUT)
                        .await;
                }
            }
        });
    }

    /// The repair pass found `key` Active on `worker` in the ledger, but the worker does not
    /// hold it: it ended there unseen. End it here too, if nothing moved it meanwhile.
    async fn ended_unseen(&mut self, key: SessionKey, worker: String) {
        let still = self.ledger.slot(&key).is_some_and(|s| s.worker == worker)
            && !self.in_flight.contains(&key)
            && self.lifecycle.get(&key).map(|l| l.phase) == Some(SessionPhase::Active);
        if !still {
            return;
        }
        let reference = reflector::ObjectRef::new(&key.name).within(&key.namespace);
        let Some(session) = self.sessions.get(&reference) else {
            return;
        };
        tracing::warn!(session = %key, %worker, "the worker no longer holds an Active session; ending it");
        self.end(
            &session,
            &key,
            SessionPhase::Completed,
            reason::ENDED_ON_WORKER,
            "the worker no longer holds the session: it ended there while the operator was not listening",
            Timestamp::now(),
        )
        .await;
    }

    /// `voice_sessions_waiting{backend,reason}`; reasons that no longer apply drop to 0.
    fn record_waiting(&mut self, waiting: &[admission_plan::Waiting]) {
        let mut counts: HashMap<(String, &'static str), i64> = HashMap::new();
        for w in waiting {
            let Some(backend) = self.ledger_backend_of(&w.key) else {
                continue;
            };
            *counts.entry((backend, w.blocked.reason())).or_default() += 1;
        }
        for key in self.waiting_labels.drain() {
            counts.entry(key).or_default();
        }
        for ((backend, reason), n) in &counts {
            self.ctx
                .metrics
                .sessions_waiting
                .with_label_values(&[backend.as_str(), reason])
                .set(*n);
        }
        self.waiting_labels = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, _)| k)
            .collect();
    }

    fn ledger_backend_of(&self, key: &SessionKey) -> Option<String> {
        let reference = reflector::ObjectRef::new(&key.name).within(&key.namespace);
        let s = self.sessions.get(&reference)?;
        Some(format!("{}/{}", key.namespace, s.spec.backend_ref.name))
    }

    fn publish_metrics(&self) {
        self.ctx
            .metrics
            .ledger_sessions
            .set(i64::try_from(self.ledger.len()).unwrap_or(i64::MAX));
        self.ctx
            .metrics
            .admissions_in_flight
            .set(i64::try_from(self.in_flight.len()).unwrap_or(i64::MAX));
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
