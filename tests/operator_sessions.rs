//! End to end: session admission by the real operator against the real API server, with
//! workers as local processes. A watch samples every status change of every session and
//! checks the caps at each one, so an over-admission that lasted one write would be seen.

mod operator_common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use operator_common::*;
use serde_json::json;
use voice_crds::{SessionPhase, VoiceProvider, VoiceSession};
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};
use voice_tests::{OperatorProcess, TestNamespace};

const T: Duration = Duration::from_secs(120);

/// Operator flags for a lease another replica takes over within seconds of a kill.
const SHORT_LEASE: [&str; 4] = [
    "--lease-duration-seconds",
    "3",
    "--lease-renew-seconds",
    "1",
];

/// The highest counts of Active sessions the watch ever saw.
#[derive(Debug, Default)]
struct Maxima {
    total: usize,
    per_backend: BTreeMap<String, usize>,
    per_worker: BTreeMap<String, usize>,
    events: usize,
}

/// Follows every session of `ns` and records, after each change, the Active counts.
fn sample_caps(ns: &TestNamespace) -> (Arc<Mutex<Maxima>>, tokio::task::JoinHandle<()>) {
    let maxima = Arc::new(Mutex::new(Maxima::default()));
    let api: Api<VoiceSession> = ns.api();
    let m = maxima.clone();
    let task = tokio::spawn(async move {
        let mut state: HashMap<String, (String, Option<String>)> = HashMap::new();
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            let apply = |state: &mut HashMap<_, _>, s: VoiceSession| {
                let status = s.status.clone().unwrap_or_default();
                if status.phase == SessionPhase::Active {
                    let worker = status.worker.map(|w| w.pod);
                    state.insert(s.name_any(), (s.spec.backend_ref.name.clone(), worker));
                } else {
                    state.remove(&s.name_any());
                }
            };
            match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => apply(&mut state, s),
                watcher::Event::Delete(s) => {
                    state.remove(&s.name_any());
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            let mut m = m.lock().unwrap();
            m.events += 1;
            m.total = m.total.max(state.len());
            let mut backends: BTreeMap<String, usize> = BTreeMap::new();
            let mut workers: BTreeMap<String, usize> = BTreeMap::new();
            for (backend, worker) in state.values() {
                *backends.entry(backend.clone()).or_default() += 1;
                if let Some(w) = worker {
                    *workers.entry(w.clone()).or_default() += 1;
                }
            }
            for (k, v) in backends {
                let e = m.per_backend.entry(k).or_default();
                *e = (*e).max(v);
            }
            for (k, v) in workers {
                let e = m.per_worker.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
    });
    (maxima, task)
}

/// Creates `count` sessions `<prefix>-000..` on `backend`, 50 at a time in parallel.
async fn create_sessions(
    ns: &TestNamespace,
    prefix: &str,
    backend: &str,
    count: usize,
) -> Duration {
    let api: Api<VoiceSession> = ns.api();
    let start = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let s = session(&format!("{prefix}-{i:03}"), backend, json!({}));
            async move { api.create(&PostParams::default(), &s).await }
        })
        .buffer_unordered(50)
        .try_collect::<Vec<_>>()
        .await
        .expect("creating sessions");
    start.elapsed()
}

async fn sessions(ns: &TestNamespace) -> Vec<VoiceSession> {
    let api: Api<VoiceSession> = ns.api();
    api.list(&ListParams::default()).await.expect("list").items
}

/// The HTTP status a worker answers to an offer of a non-SDP body with `token`: 400 means
/// the token passed (the SDP is what failed), 401/403 that it did not.
fn offer_status(url: &str, token: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-H",
            "Content-Type: application/sdp",
            "--data",
            "not sdp",
            url,
        ])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// An operator stack with one Healthy worker of backend `echo`, and the sessions API.
async fn echo_stack(prefix: &str) -> (OperatorStack, Api<VoiceSession>) {
    let stack = OperatorStack::start(prefix).await;
    stack.apply_backend("echo", json!({"replicas": 1}));
    wait_healthy(&stack.ns, "echo", 1, T).await;
    let api = stack.ns.api();
    (stack, api)
}

/// Waits until exactly `n` sessions of `backend` are Active and every other one is Pending with
/// a queue position.
async fn wait_settled(ns: &TestNamespace, backend: &str, n: usize) -> Vec<VoiceSession> {
    wait_for(
        T,
        &format!("{n} Active sessions of {backend}, the rest queued"),
        || async {
            let all: Vec<VoiceSession> = sessions(ns)
                .await
                .into_iter()
                .filter(|s| s.spec.backend_ref.name == backend)
                .collect();
            let active = all
                .iter()
                .filter(|s| phase(s) == SessionPhase::Active)
                .count();
            let queued = all
                .iter()
                .filter(|s| phase(s) == SessionPhase::Pending)
                .filter(|s| s.status.as_ref().and_then(|s| s.queue_position).is_some())
                .count();
            // Positions are rewritten at most every 2 s per session: wait for them to agree.
            let mut positions: Vec<i32> = all
                .iter()
                .filter(|s| phase(s) == SessionPhase::Pending)
                .filter_map(|s| s.status.as_ref()?.queue_position)
                .collect();
            positions.sort_unstable();
            let contiguous = positions
                .iter()
                .enumerate()
                .all(|(i, p)| usize::try_from(*p) == Ok(i + 1));
            if active == n && active + queued == all.len() && contiguous {
                Ok(all)
            } else {
                Err(format!("{active} active, {queued} queued of {}", all.len()))
            }
        },
    )
    .await
}

/// Queue positions must follow creation order (names are created in order within a second).
fn assert_fcfs(all: &[VoiceSession]) {
    let mut pending: Vec<(&str, i32)> = all
        .iter()
        .filter(|s| phase(s) == SessionPhase::Pending)
        .map(|s| {
            (
                s.metadata.name.as_deref().unwrap_or(""),
                s.status.as_ref().unwrap().queue_position.unwrap(),
            )
        })
        .collect();
    pending.sort_by_key(|(_, p)| *p);
    let positions: Vec<i32> = pending.iter().map(|(_, p)| *p).collect();
    let expected: Vec<i32> = (1..=i32::try_from(pending.len()).unwrap()).collect();
    assert_eq!(positions, expected, "positions are 1..n without gaps");
    let created: Vec<_> = pending
        .iter()
        .map(|(n, _)| {
            let s = all
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(n))
                .unwrap();
            (
                s.metadata.creation_timestamp.clone().unwrap().0,
                n.to_string(),
            )
        })
        .collect();
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(created, sorted, "queue order is creation order");
}

async fn provider_counts(name: &str) -> (i32, i32) {
    let api: Api<VoiceProvider> = Api::all(voice_tests::client().await);
    let p = api.get(name).await.expect("provider");
    p.status
        .map_or((0, 0), |s| (s.sessions_in_use, s.sessions_pending))
}

async fn delete_sessions(ns: &TestNamespace, names: &[String]) {
    let api: Api<VoiceSession> = ns.api();
    futures::stream::iter(names.to_vec())
        .map(|n| {
            let api = api.clone();
            async move { api.delete(&n, &DeleteParams::default()).await }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
}

/// Deletes every session and waits for every count to return to zero: the provider's, the
/// backends' and every worker's own.
async fn assert_no_leak(ns: &TestNamespace, provider: &str, backends: &[&str]) {
    let names: Vec<String> = sessions(ns)
        .await
        .into_iter()
        .map(|s| s.name_any())
        .collect();
    delete_sessions(ns, &names).await;
    wait_for(T, "every count back to 0", || async {
        let (in_use, pending) = provider_counts(provider).await;
        let mut held = 0;
        let mut pending_b = 0;
        for b in backends {
            if let Ok(status) = backend_status(ns, b).await {
                held += status.worker_statuses.iter().map(|w| w.sessions).sum::<i32>();
                pending_b += status.pending_sessions.unwrap_or(0);
            }
        }
        if (in_use, pending, held, pending_b) == (0, 0, 0, 0) {
            Ok(())
        } else {
            Err(format!("provider in use {in_use}, pending {pending}; workers hold {held}; backends pending {pending_b}"))
        }
    })
    .await;
}

/// The two backends of the burst tests: `a` (10 workers × 10, maxSessions 80) and `b`
/// (3 workers × 10, no backend cap) on a provider capped at 100.
async fn burst_stack(prefix: &str, provider_cap: i32) -> OperatorStack {
    let stack = OperatorStack::start_with(
        prefix,
        json!({"capabilities": {"maxConcurrentSessions": provider_cap}}),
    )
    .await;
    let workers = |replicas: i32, max: i32| {
        json!({
            "replicas": replicas,
            "maxSessions": max,
            "workers": {"sessionsPerWorker": 10},
            "scaling": {"minWorkers": 0, "maxWorkers": 12},
            "healthCheck": {"interval": "2s", "timeout": "2s", "failureThreshold": 3},
        })
    };
    stack.apply_backend("a", workers(10, 80));
    stack.apply_backend("b", workers(3, 0));
    wait_healthy(&stack.ns, "a", 10, T).await;
    wait_healthy(&stack.ns, "b", 3, T).await;
    stack
}

fn assert_caps(m: &Maxima) {
    eprintln!(
        "watch saw {} changes; max active: total {}, per backend {:?}, per worker max {:?}",
        m.events,
        m.total,
        m.per_backend,
        m.per_worker.values().max()
    );
    assert!(m.total <= 100, "provider cap exceeded: {}", m.total);
    assert!(
        m.per_backend.get("a").copied().unwrap_or(0) <= 80,
        "backend cap exceeded: {m:?}"
    );
    assert!(
        m.per_worker.values().all(|n| *n <= 10),
        "worker cap exceeded: {m:?}"
    );
}

#[tokio::test]
async fn a_burst_of_400_never_exceeds_a_cap_queues_in_order_and_leaks_nothing() {
    let stack = burst_stack("sess-burst", 100).await;
    let ns = &stack.ns;
    let (maxima, sampler) = sample_caps(ns);

    let created = create_sessions(ns, "s", "a", 400).await;
    let start = Instant::now();
    let all = wait_settled(ns, "a", 80).await;
    eprintln!(
        "400 sessions created in {created:?}; 80 admitted and 320 queued {:?} later",
        start.elapsed()
    );
    assert_fcfs(&all);
    let waiting: Vec<&VoiceSession> = all
        .iter()
        .filter(|s| phase(s) == SessionPhase::Pending)
        .collect();
    assert!(
        waiting
            .iter()
            .all(|s| admitted_reason(s).as_deref() == Some("BackendLimit"))
    );
    let metrics = http_get(stack.operator.metrics_port(), "/metrics");
    for line in [
        format!(
            "voice_sessions_waiting{{backend=\"{}/a\",reason=\"BackendLimit\"}} 320",
            ns.name()
        ),
        format!(
            "voice_provider_session_limit{{provider=\"{}\"}} 100",
            stack.provider
        ),
        "voice_sessions_ledger 80".to_owned(),
        "voice_session_waits_total{reason=\"BackendLimit\"} 320".to_owned(),
    ] {
        assert!(
            metrics.contains(&line),
            "{line} missing from the operator's metrics"
        );
    }
    let packed = maxima
        .lock()
        .unwrap()
        .per_worker
        .values()
        .filter(|n| **n == 10)
        .count();
    assert_eq!(packed, 8, "packed placement fills 8 workers to 10");

    // The provider cap binds for backend b: 100 - 80 = 20 of its 30 slots.
    create_sessions(ns, "t", "b", 30).await;
    let all_b = wait_settled(ns, "b", 20).await;
    assert!(
        all_b
            .iter()
            .filter(|s| phase(s) == SessionPhase::Pending)
            .all(|s| admitted_reason(s).as_deref() == Some("ProviderLimit")),
        "b's waiting sessions say ProviderLimit"
    );
    wait_for(T, "provider status 100 in use, 330 pending", || async {
        match provider_counts(&stack.provider).await {
            (100, 330) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Deleting 10 of a's active sessions admits exactly the first 10 of its queue.
    let mut first_ten: Vec<(i32, String)> = all
        .iter()
        .filter(|s| phase(s) == SessionPhase::Pending)
        .map(|s| {
            (
                s.status.as_ref().unwrap().queue_position.unwrap(),
                s.name_any(),
            )
        })
        .collect();
    first_ten.sort();
    first_ten.truncate(10);
    let active: Vec<String> = all
        .iter()
        .filter(|s| phase(s) == SessionPhase::Active)
        .take(10)
        .map(|s| s.name_any())
        .collect();
    delete_sessions(ns, &active).await;
    let all = wait_settled(ns, "a", 80).await;
    for (_, name) in &first_ten {
        let s = all
            .iter()
            .find(|s| &s.name_any() == name)
            .expect("still there");
        assert_eq!(phase(s), SessionPhase::Active, "{name} was next in line");
    }
    assert_fcfs(&all);

    assert_no_leak(ns, &stack.provider, &["a", "b"]).await;
    sampler.abort();
    assert_caps(&maxima.lock().unwrap());
}

/// How every burst through an operator crash or takeover must end: backend `a` full (80
/// Active) with the rest queued in creation order, every count back to 0 once all sessions
/// are deleted, and no cap exceeded at any change the watch saw.
async fn settle_and_check(
    stack: &OperatorStack,
    maxima: &Mutex<Maxima>,
    sampler: tokio::task::JoinHandle<()>,
) {
    let all = wait_settled(&stack.ns, "a", 80).await;
    assert_fcfs(&all);
    assert_no_leak(&stack.ns, &stack.provider, &["a", "b"]).await;
    sampler.abort();
    assert_caps(&maxima.lock().unwrap());
}

/// Waits until `operator` reports that it leads.
async fn wait_leading(operator: &OperatorProcess) {
    let port = operator.metrics_port();
    wait_for(T, "the operator to lead", || async move {
        let metrics = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(|| http_get(port, "/metrics")).unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        if leader_gauge(&metrics) == Some(1) {
            Ok(())
        } else {
            Err("not leading".into())
        }
    })
    .await;
}

#[tokio::test]
async fn an_operator_that_dies_between_admission_steps_neither_over_admits_nor_leaks() {
    let mut stack = burst_stack("sess-crash", 100).await;
    let ns = stack.ns.name().to_owned();
    let (maxima, sampler) = sample_caps(&stack.ns);
    // The operator dies mid-burst at each gap of an admission, as SIGKILL would (crash
    // points, see admission_steps.rs): first right after a worker reserved (nothing written),
    // then right after a status went Active (its token Secret not written). Each successor
    // must finish what it finds, from the workers' lists and the Secrets' absence.
    stack.operator.kill();
    let crash_at = |point: &str, after: u32| format!("{point}={after}*off->return");
    let start = |instance: &str, failpoints: Option<String>| {
        let env: Vec<(&str, &str)> = failpoints
            .as_deref()
            .map(|f| vec![("FAILPOINTS", f)])
            .unwrap_or_default();
        OperatorProcess::start_with_env(&ns, instance, &SHORT_LEASE, &env)
    };
    stack.operator = start("crash-1", Some(crash_at("admit-after-reserve", 10)));
    wait_leading(&stack.operator).await;
    let api: Api<VoiceSession> = stack.ns.api();
    let creating = tokio::spawn({
        let api = api.clone();
        async move {
            futures::stream::iter(0..400)
                .map(|i| {
                    let api = api.clone();
                    let s = session(&format!("s-{i:03}"), "a", json!({}));
                    async move { api.create(&PostParams::default(), &s).await }
                })
                .buffer_unordered(50)
                .try_collect::<Vec<_>>()
                .await
                .expect("creating sessions")
        }
    });
    let next = [
        (
            "crash-2",
            Some(crash_at("admit-before-secret", 20)),
            "finishing",
        ),
        ("crash-3", None, "tokens_missing"),
    ];
    for (instance, failpoints, found) in next {
        // Polled, not waited for: the creates run on this test's one thread.
        let deadline = Instant::now() + T;
        let exit = loop {
            match stack.operator.try_exit() {
                Some(exit) => break Some(exit),
                None if Instant::now() > deadline => break None,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        assert_eq!(
            exit.and_then(|e| e.code()),
            Some(86),
            "the operator stops at its crash point:\n{}",
            stack.operator.log_tail(20)
        );
        stack.operator = start(instance, failpoints);
        wait_leading(&stack.operator).await;
        let rebuilt = rebuilt_counts(&stack.operator).await;
        eprintln!("{instance} rebuilt its ledger: {rebuilt:?}");
        assert!(
            rebuilt.get(found).is_some_and(|n| *n >= 1),
            "{instance} found the cut admission ({found} >= 1): {rebuilt:?}"
        );
    }
    creating.await.expect("creates finished");
    wait_settled(&stack.ns, "a", 80).await;
    // The session cut between its status and its Secret has its token again.
    let secrets: Api<Secret> = stack.ns.api();
    wait_for(T, "a token Secret for every Active session", || async {
        let names: std::collections::HashSet<String> = secrets
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|s| s.name_any())
            .collect();
        let missing: Vec<String> = sessions(&stack.ns)
            .await
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .map(|s| format!("{}-join-token", s.name_any()))
            .filter(|name| !names.contains(name))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    settle_and_check(&stack, &maxima, sampler).await;
}

/// The counts in the operator's "session ledger rebuilt" log line (held, finishing,
/// tokens_missing), once it is there (it follows the takeover's worker lists).
/// The admission's one critical write is conditional: an `Active` status planned on a
/// session the API has changed since (say, ended by a new leader while this one was paused)
/// is refused with 409, and the same write on the current resourceVersion lands.
#[tokio::test(flavor = "multi_thread")]
async fn an_active_write_planned_on_an_older_session_is_refused() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use voice_operator::admission_steps::apply_status;
    use voice_operator::session_lifecycle::Lifecycle;

    let ns = TestNamespace::new("sess-precondition").await;
    voice_tests::install_crds();
    let api: Api<VoiceSession> = ns.api();
    let planned = api
        .create(&PostParams::default(), &session("s", "nowhere", json!({})))
        .await
        .expect("create");
    let planned_rv = planned.resource_version().expect("a resourceVersion");
    // Someone else writes the session after the plan: here, its metadata.
    let patch = json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
    let changed = api
        .patch(
            "s",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch");
    let worker = voice_crds::SessionWorker {
        pod: "worker-0".into(),
        pod_ip: Some("10.0.0.1".into()),
    };
    let endpoint = voice_crds::SessionEndpoint {
        url: "http://10.0.0.1:8080/whip/s".into(),
        token_secret_name: "s-token".into(),
        ice_servers: Vec::new(),
        room: None,
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let active = Lifecycle::default().active(worker, endpoint, now);

    let stale = apply_status(&api, "s", &active, Some(&planned_rv)).await;
    match stale {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => panic!("a write on resourceVersion {planned_rv} landed: {other:?}"),
    }
    let still = api.get("s").await.expect("get");
    assert_ne!(
        still.status.map(|s| s.phase),
        Some(SessionPhase::Active),
        "the refused write changed nothing"
    );

    let current_rv = changed.resource_version().expect("a resourceVersion");
    let written = apply_status(&api, "s", &active, Some(&current_rv))
        .await
        .expect("the write on the current resourceVersion lands");
    assert!(written.is_some_and(|rv| rv != current_rv));
    let now_active = api.get("s").await.expect("get");
    assert_eq!(
        now_active.status.map(|s| s.phase),
        Some(SessionPhase::Active)
    );
}

async fn rebuilt_counts(operator: &OperatorProcess) -> HashMap<String, u64> {
    let log = operator.log().clone();
    wait_for(T, "the operator to rebuild its ledger", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            let line = text
                .lines()
                .find(|l| l.contains("session ledger rebuilt"))
                .ok_or("no ledger rebuild in the log yet")?;
            Ok(strip_ansi(line)
                .split_whitespace()
                .filter_map(|field| field.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect())
        }
    })
    .await
}

/// `text` without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn two_operator_replicas_during_a_burst_keep_every_cap() {
    let stack = burst_stack("sess-replicas", 100).await;
    let ns = stack.ns.name().to_owned();
    let mut second = OperatorProcess::start_with(&ns, "b", &SHORT_LEASE);
    let (maxima, sampler) = sample_caps(&stack.ns);
    create_sessions(&stack.ns, "s", "a", 400).await;
    let all = wait_settled(&stack.ns, "a", 80).await;
    assert_fcfs(&all);
    assert!(second.is_running(), "the standby waits, it does not crash");
    assert_no_leak(&stack.ns, &stack.provider, &["a", "b"]).await;
    sampler.abort();
    assert_caps(&maxima.lock().unwrap());
}

/// Sends `signal` to the operator process (SIGSTOP/SIGCONT: a paused, then resumed leader).
fn signal(operator: &OperatorProcess, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(operator.pid()).expect("pid"))
        .expect("a live pid");
    rustix::process::kill_process(pid, signal).expect("signalling the operator");
}

/// Counts sessions by phase: (Active, Pending).
async fn active_and_pending(ns: &TestNamespace) -> (usize, usize) {
    let all = sessions(ns).await;
    let count = |p| all.iter().filter(|s| phase(s) == p).count();
    (count(SessionPhase::Active), count(SessionPhase::Pending))
}

/// The leader is paused (SIGSTOP) in the middle of a steady stream of sessions, long past its
/// lease, so the standby takes over and admits; then it is resumed while sessions still
/// arrive. It wakes believing it leads, with admissions half done: the workers its successor
/// has listed refuse its epoch, its own fence has closed, and it exits. The watch never sees
/// a cap exceeded, and every count returns to 0.
#[tokio::test]
async fn a_paused_leader_that_wakes_after_a_takeover_neither_over_admits_nor_leaks() {
    let mut stack = burst_stack("sess-pause", 100).await;
    let ns = stack.ns.name().to_owned();
    stack.operator.kill();
    stack.operator = OperatorProcess::start_with(&ns, "first", &SHORT_LEASE);
    wait_leading(&stack.operator).await;
    let mut standby = OperatorProcess::start_with(&ns, "second", &SHORT_LEASE);
    let (maxima, sampler) = sample_caps(&stack.ns);

    // 200 sessions at about 10 a second: the backend's cap of 80 is reached only after the
    // takeover, and sessions still arrive when the old leader wakes.
    let api: Api<VoiceSession> = stack.ns.api();
    let started = Instant::now();
    let creating = tokio::spawn({
        let api = api.clone();
        async move {
            for chunk in 0..40 {
                futures::stream::iter(0..5)
                    .map(|i| {
                        let api = api.clone();
                        let s = session(&format!("s-{:03}", chunk * 5 + i), "a", json!({}));
                        async move { api.create(&PostParams::default(), &s).await }
                    })
                    .buffer_unordered(5)
                    .try_collect::<Vec<_>>()
                    .await
                    .expect("creating sessions");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    wait_for(T, "5 Active", || async {
        match active_and_pending(&stack.ns).await {
            (a, _) if a >= 5 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    signal(&stack.operator, rustix::process::Signal::STOP);
    let (paused_active, paused_pending) = active_and_pending(&stack.ns).await;
    eprintln!(
        "SIGSTOP of the leader {:?} after the first create, with {paused_active} sessions Active and {paused_pending} Pending",
        started.elapsed()
    );
    wait_leading(&standby).await;
    wait_for(T, "the new leader to admit", || async {
        match active_and_pending(&stack.ns).await {
            (a, _) if a >= paused_active + 5 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!(
        "the new leader admitted; {:?} after the first create: {:?}",
        started.elapsed(),
        active_and_pending(&stack.ns).await
    );
    assert!(
        !creating.is_finished(),
        "sessions must still be arriving when the old leader wakes"
    );
    signal(&stack.operator, rustix::process::Signal::CONT);
    let woke = Instant::now();
    let exit = stack.operator.wait_exit(T).unwrap_or_else(|| {
        panic!(
            "the resumed old leader still runs:\n{}",
            stack.operator.log_tail(30)
        )
    });
    eprintln!(
        "the resumed leader exited {:?} after SIGCONT: {exit}",
        woke.elapsed()
    );
    assert_eq!(exit.code(), Some(1), "{}", stack.operator.log_tail(30));
    assert!(standby.is_running(), "{}", standby.log_tail(30));

    creating.await.expect("creates finished");
    settle_and_check(&stack, &maxima, sampler).await;
    assert!(standby.terminate(), "{}", standby.log_tail(20));
}

/// A counter's value in a `/metrics` body (0 when the series is absent).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A worker whose slots are all held by reservations the API does not know (as a crashed
/// admission or a forged call would leave them) refuses the session the ledger places there.
/// The allocator backs off instead of asking again every round, the repair pass frees the
/// orphans, and the session is admitted.
#[tokio::test]
async fn a_worker_full_of_orphans_is_backed_off_then_repaired_and_the_session_admitted() {
    let stack = OperatorStack::start("sess-orphans").await;
    let ns = &stack.ns;
    stack.apply_backend(
        "tight",
        json!({"replicas": 1, "workers": {"sessionsPerWorker": 2}}),
    );
    let status = wait_healthy(ns, "tight", 1, T).await;
    let ip = status.worker_statuses[0].pod_ip.clone().expect("pod IP");
    let mut control = worker_control_client(ns, "tight", &ip).await;
    for ghost in ["ghost-1", "ghost-2"] {
        let reserved = control
            .reserve_session(ReserveSessionRequest {
                session_id: format!("{}/{ghost}", ns.name()),
                uid: format!("uid-{ghost}"),
                ..Default::default()
            })
            .await
            .expect("ReserveSession")
            .into_inner()
            .result();
        assert_eq!(reserved, ReserveResult::Reserved);
    }
    let api: Api<VoiceSession> = ns.api();
    api.create(&PostParams::default(), &session("call", "tight", json!({})))
        .await
        .expect("create");
    let refused = "voice_session_admissions_total{result=\"refused\"}";
    let port = stack.operator.metrics_port();
    wait_for(T, "a refusal", || async {
        match counter(&http_get(port, "/metrics"), refused) {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    // Rounds run every 25 ms: without back-off six seconds would bring some 240 refusals.
    // With delays of 0.2, 0.4, 0.8, 1.6 and 3.2 s there are at most six.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = counter(&http_get(port, "/metrics"), refused);
    eprintln!("{after} refusals in the first 6 s");
    assert!(
        after <= 7.0,
        "{after} refusals: the worker is asked without backing off"
    );
    let call = api.get("call").await.expect("session");
    assert_eq!(phase(&call), SessionPhase::Pending);

    // The repair pass releases reservations the API does not know once they are 30 s old.
    wait_phase(&api, "call", SessionPhase::Active).await;
    let metrics = http_get(port, "/metrics");
    assert_eq!(
        counter(&metrics, "voice_session_orphans_released_total"),
        2.0,
        "both orphans released"
    );
    assert_no_leak(ns, &stack.provider, &["tight"]).await;
}

#[tokio::test]
async fn an_admitted_session_gets_an_endpoint_and_a_token_the_worker_accepts_and_deletion_frees_it()
{
    let (stack, api) = echo_stack("sess-token").await;
    let ns = &stack.ns;
    api.create(&PostParams::default(), &session("call", "echo", json!({})))
        .await
        .unwrap();
    let s = wait_phase(&api, "call", SessionPhase::Active).await;
    let status = s.status.clone().unwrap();
    let endpoint = status.endpoint.expect("endpoint");
    assert!(
        endpoint
            .url
            .ends_with(&format!("/v1/sessions/{}/call/offer", ns.name())),
        "{}",
        endpoint.url
    );
    assert_eq!(status.persistence, voice_crds::PersistenceStatus::Active);
    assert_eq!(
        status.worker.as_ref().map(|w| w.pod.starts_with("echo-")),
        Some(true)
    );

    let secrets: Api<Secret> = ns.api();
    let secret = voice_tests::token_secret(&secrets, &endpoint.token_secret_name).await;
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("VoiceSession", s.metadata.uid.as_deref().unwrap())
    );
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();

    // The worker takes the token: a bad SDP gets 400 (past the 401/403 token checks), and a
    // wrong token gets 401.
    assert_eq!(offer_status(&endpoint.url, &token), "400");
    assert_eq!(offer_status(&endpoint.url, "not-a-token"), "401");

    api.delete("call", &DeleteParams::default()).await.unwrap();
    wait_for(
        T,
        "the worker's slot freed and the token Secret collected",
        || async {
            let held: i32 = backend_status(ns, "echo")
                .await
                .map_or(-1, |s| s.worker_statuses.iter().map(|w| w.sessions).sum());
            let secret_gone = secrets
                .get_opt(&endpoint.token_secret_name)
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            let (in_use, _) = provider_counts(&stack.provider).await;
            if held == 0 && secret_gone && in_use == 0 {
                Ok(())
            } else {
                Err(format!(
                    "held {held}, secret gone {secret_gone}, provider in use {in_use}"
                ))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn finished_sessions_end_with_their_reason_and_go_after_their_ttl_or_their_backend() {
    let (stack, api) = echo_stack("sess-ttl").await;
    api.create(
        &PostParams::default(),
        &session(
            "short",
            "echo",
            json!({"maxDuration": "2s", "ttlSecondsAfterFinished": 3}),
        ),
    )
    .await
    .unwrap();
    let ended = wait_phase(&api, "short", SessionPhase::Completed).await;
    let status = ended.status.unwrap();
    assert_eq!(status.end_reason.as_deref(), Some("MaxDuration"));
    assert_eq!(status.persistence, voice_crds::PersistenceStatus::Completed);
    assert!(status.ended_at.is_some());
    let start = Instant::now();
    wait_for(T, "short deleted after its TTL", || async {
        match api.get_opt("short").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;
    eprintln!(
        "deleted {:?} after Completed was observed (TTL 3 s)",
        start.elapsed()
    );

    // Pending timeout: a backend with no workers never admits.
    stack.apply_backend("empty", json!({"replicas": 0}));
    api.create(
        &PostParams::default(),
        &session("waits", "empty", json!({"pendingTimeout": "2s"})),
    )
    .await
    .unwrap();
    let failed = wait_phase(&api, "waits", SessionPhase::Failed).await;
    assert_eq!(
        failed.status.unwrap().end_reason.as_deref(),
        Some("QueueTimeout")
    );

    // A deleted backend ends its Active sessions (Completed, BackendDeleted) and frees their
    // slots on the provider.
    api.create(
        &PostParams::default(),
        &session("orphaned", "echo", json!({})),
    )
    .await
    .unwrap();
    wait_phase(&api, "orphaned", SessionPhase::Active).await;
    let backends: Api<voice_crds::VoiceBackend> = stack.ns.api();
    backends
        .delete("echo", &DeleteParams::default())
        .await
        .unwrap();
    let ended = wait_phase(&api, "orphaned", SessionPhase::Completed).await;
    let status = ended.status.unwrap();
    assert_eq!(status.end_reason.as_deref(), Some("BackendDeleted"));
    assert!(status.ended_at.is_some(), "an end has its time");
    wait_for(T, "the provider's in-use count back to 0", || async {
        match provider_counts(&stack.provider).await {
            (0, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn sessions_for_a_missing_or_unaccepted_backend_wait_with_a_clear_reason() {
    let stack = OperatorStack::start("sess-badref").await;
    let ns = &stack.ns;
    // A backend naming a stage its provider does not offer is not Accepted.
    stack.apply_backend(
        "bad",
        json!({"pipeline": {"stt": {"provider": "nonexistent"}}}),
    );
    let api: Api<VoiceSession> = ns.api();
    api.create(
        &PostParams::default(),
        &session("lost", "nowhere", json!({})),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &session("refused", "bad", json!({})),
    )
    .await
    .unwrap();
    for (name, reason) in [
        ("lost", "BackendNotFound"),
        ("refused", "BackendNotAccepted"),
    ] {
        let s = wait_for(T, &format!("{name} says {reason}"), || async {
            let s = api.get(name).await.map_err(|e| e.to_string())?;
            if admitted_reason(&s).as_deref() == Some(reason) {
                Ok(s)
            } else {
                Err(format!("{:?}", s.status))
            }
        })
        .await;
        let c = s
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Admitted")
            .unwrap();
        assert_eq!(c.status, "False");
        assert!(c.message.contains("VoiceBackend"), "{}", c.message);
    }
    // Creating the missing backend admits the session that waited for it.
    stack.apply_backend("nowhere", json!({"replicas": 1}));
    wait_for(T, "lost admitted once its backend exists", || async {
        let s = api.get("lost").await.map_err(|e| e.to_string())?;
        if phase(&s) == SessionPhase::Active {
            Ok(())
        } else {
            Err(format!("{:?}", admitted_reason(&s)))
        }
    })
    .await;

    // Audio the provider, transport or worker cannot serve waits with the field named.
    let (_, opus_only) = provider_manifest(
        ns,
        "p",
        json!({"capabilities": {"supportedCodecs": ["opus"]}}),
    );
    apply(ns, &[&opus_only]);
    let pcm24 = json!({"transport": "websocket", "audio": {"codec": "pcm", "sampleRate": 24000}});
    let stereo = json!({"audio": {"codec": "opus", "sampleRate": 48000, "channels": 2}});
    api.create(&PostParams::default(), &session("pcm24", "nowhere", pcm24))
        .await
        .unwrap();
    api.create(
        &PostParams::default(),
        &session("stereo", "nowhere", stereo),
    )
    .await
    .unwrap();
    for (name, field) in [
        (
            "pcm24",
            "spec.audio.codec: pcm is not supported by VoiceProvider",
        ),
        ("stereo", "spec.audio.channels: 2 channels are not served"),
    ] {
        let c = wait_for(
            T,
            &format!("{name} says AudioFormatNotSupported"),
            || async {
                let s = api.get(name).await.map_err(|e| e.to_string())?;
                let c = s.status.as_ref().and_then(|st| {
                    st.conditions
                        .iter()
                        .find(|c| c.type_ == "Admitted" && c.reason == "AudioFormatNotSupported")
                        .cloned()
                });
                c.ok_or_else(|| format!("{:?}", s.status))
            },
        )
        .await;
        assert_eq!(c.status, "False");
        assert!(c.message.starts_with(field), "{name}: {}", c.message);
        assert_eq!(phase(&api.get(name).await.unwrap()), SessionPhase::Pending);
    }
    // The provider learning PCM admits the 24 kHz session, whose endpoint states its rate.
    let (_, both) = provider_manifest(ns, "p", json!({}));
    apply(ns, &[&both]);
    let pcm24 = wait_for(
        T,
        "pcm24 admitted once its provider carries pcm",
        || async {
            let s = api.get("pcm24").await.map_err(|e| e.to_string())?;
            match s.status.as_ref().and_then(|st| st.endpoint.clone()) {
                Some(endpoint) if phase(&s) == SessionPhase::Active => Ok(endpoint),
                _ => Err(format!("{:?}", admitted_reason(&s))),
            }
        },
    )
    .await;
    assert!(pcm24.url.ends_with("/ws?rate=24000"), "{}", pcm24.url);
    assert!(stack.operator.log_tail(400).matches("panicked").count() == 0);
}

#[tokio::test]
async fn a_killed_workers_sessions_are_readmitted_elsewhere_or_fail_with_worker_lost() {
    let stack = OperatorStack::start_with(
        "sess-lost",
        json!({"capabilities": {"sessionPersistence": true}}),
    )
    .await;
    let ns = &stack.ns;
    stack.apply_backend(
        "echo",
        json!({"replicas": 2, "workers": {"sessionsPerWorker": 2}, "scaling": {"maxWorkers": 2}}),
    );
    wait_healthy(ns, "echo", 2, T).await;
    let api: Api<VoiceSession> = ns.api();
    // Packed: both land on one worker; the other has 2 free slots for them.
    for name in ["x1", "x2"] {
        api.create(
            &PostParams::default(),
            &session(name, "echo", json!({"pendingTimeout": "20s"})),
        )
        .await
        .unwrap();
    }
    let worker = wait_for(T, "x1 and x2 Active on one worker", || async {
        let all = sessions(ns).await;
        let workers: Vec<String> = all
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .filter_map(|s| s.status.as_ref()?.worker.as_ref().map(|w| w.pod.clone()))
            .collect();
        if workers.len() == 2 && workers[0] == workers[1] {
            Ok(workers[0].clone())
        } else {
            Err(format!("{workers:?}"))
        }
    })
    .await;
    let pods = live_pods(ns, "echo").await;
    let pod = pods
        .iter()
        .find(|p| p.name_any() == worker)
        .expect("the worker pod");
    let pid = worker_pid(pod).expect("pid");
    let secrets: Api<Secret> = ns.api();
    let token_of =
        |secret: Secret| String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let token = token_of(voice_tests::token_secret(&secrets, "x1-join-token").await);
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    wait_for(T, "x1 and x2 Active on the other worker", || async {
        let all = sessions(ns).await;
        let moved = all
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .filter(|s| {
                s.status
                    .as_ref()
                    .and_then(|s| s.worker.as_ref())
                    .is_some_and(|w| w.pod != worker)
            })
            .count();
        if moved == 2 {
            Ok(())
        } else {
            Err(format!("{moved} moved"))
        }
    })
    .await;
    eprintln!(
        "re-admitted on another worker {:?} after the kill",
        start.elapsed()
    );
    let s = api.get("x1").await.unwrap();
    let url = s.status.unwrap().endpoint.unwrap().url;
    assert!(url.contains("/x1/offer"), "{url}");
    // The token Secret existed, so the re-admission wrote over it: it names the new worker.
    wait_for(T, "x1's token Secret to name the new worker", || async {
        let secret = secrets
            .get("x1-join-token")
            .await
            .map_err(|e| e.to_string())?;
        let data = secret.data.unwrap_or_default();
        let written = data
            .get("url")
            .map(|u| String::from_utf8_lossy(&u.0).into_owned());
        if written.as_deref() == Some(url.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "the Secret's url is {written:?}, the status's {url}"
            ))
        }
    })
    .await;
    // The client reconnects with the token it already has: the new worker takes it (a bad
    // SDP gets 400, past the 401/403 token checks).
    assert_eq!(
        offer_status(&url, &token),
        "400",
        "the old token works on the new worker"
    );

    // Fill the other worker too, then make every new worker impossible (an image no node
    // runs): killing the worker of x1 and x2 leaves them nowhere to go, so they wait as
    // WorkerLost and fail when their pending timeout passes.
    for name in ["y1", "y2"] {
        api.create(&PostParams::default(), &session(name, "echo", json!({})))
            .await
            .unwrap();
    }
    wait_for(T, "4 sessions Active", || async {
        let active = sessions(ns)
            .await
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .count();
        if active == 4 {
            Ok(())
        } else {
            Err(format!("{active} active"))
        }
    })
    .await;
    let (_, provider) = provider_manifest(
        ns,
        "p",
        json!({"capabilities": {"sessionPersistence": true}, "worker": {"image": "example.com/unrunnable:1"}}),
    );
    apply(ns, &[&provider]);
    let x1 = api.get("x1").await.unwrap();
    let holder = x1.status.unwrap().worker.unwrap().pod;
    let pods = live_pods(ns, "echo").await;
    let pod = pods
        .iter()
        .find(|p| p.name_any() == holder)
        .expect("x1's worker pod");
    let pid = worker_pid(pod).expect("pid");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_for(T, "x1 and x2 Pending with WorkerLost", || async {
        let all = sessions(ns).await;
        let lost = all
            .iter()
            .filter(|s| {
                phase(s) == SessionPhase::Pending
                    && admitted_reason(s).as_deref() == Some("WorkerLost")
            })
            .count();
        if lost == 2 {
            Ok(())
        } else {
            Err(format!("{lost} lost"))
        }
    })
    .await;
    wait_for(T, "x1 and x2 Failed with WorkerLost", || async {
        let all = sessions(ns).await;
        let failed = all
            .iter()
            .filter(|s| {
                phase(s) == SessionPhase::Failed
                    && s.status.as_ref().and_then(|s| s.end_reason.as_deref()) == Some("WorkerLost")
            })
            .count();
        if failed == 2 {
            Ok(())
        } else {
            Err(all
                .iter()
                .map(|s| format!("{}: {:?} {:?}", s.name_any(), phase(s), admitted_reason(s)))
                .collect::<Vec<_>>()
                .join(", "))
        }
    })
    .await;
}

#[tokio::test]
async fn without_session_persistence_a_lost_worker_fails_its_sessions_at_once() {
    let (stack, api) = echo_stack("sess-nopersist").await;
    let ns = &stack.ns;
    api.create(&PostParams::default(), &session("call", "echo", json!({})))
        .await
        .unwrap();
    let holder = wait_for(T, "call Active", || async {
        let s = api.get("call").await.map_err(|e| e.to_string())?;
        match s.status.filter(|s| s.phase == SessionPhase::Active) {
            Some(status) => Ok(status.worker.unwrap().pod),
            None => Err("not yet".into()),
        }
    })
    .await;
    let pods = live_pods(ns, "echo").await;
    let pod = pods.iter().find(|p| p.name_any() == holder).unwrap();
    let pid = worker_pid(pod).unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let s = wait_phase(&api, "call", SessionPhase::Failed).await;
    let status = s.status.unwrap();
    assert_eq!(status.end_reason.as_deref(), Some("WorkerLost"));
    let note = wait_event(ns, "call", "WorkerLost", T).await;
    assert!(note.contains("sessionPersistence"), "{note}");
    let admitted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .unwrap();
    assert!(
        admitted.message.contains("sessionPersistence"),
        "{}",
        admitted.message
    );
}

#[tokio::test]
async fn a_connected_client_shows_in_status_and_hanging_up_completes_the_session() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let (stack, api) = echo_stack("sess-live").await;
    let (endpoint, token) =
        admit_one(&api, "talk", "echo", json!({"transport": "websocket"})).await;
    assert!(endpoint.url.starts_with("ws://"), "{}", endpoint.url);
    // The WebSocket states its rate: 48 kHz PCM16 for a session of an opus backend.
    assert!(endpoint.url.ends_with("/ws?rate=48000"), "{}", endpoint.url);

    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&endpoint.url, &token, 16_000))
        .await
        .expect("the worker takes the token");
    // 100 ms of PCM16 silence-free audio, so the session sees activity.
    let frame: Vec<u8> = (0..1600i16)
        .flat_map(|i| ((i % 64) * 200).to_le_bytes())
        .collect();
    ws.send(Message::Binary(frame.into())).await.unwrap();

    let live = wait_for(T, "status shows the WebSocket connection", || async {
        let s = api.get("talk").await.map_err(|e| e.to_string())?;
        let status = s.status.unwrap_or_default();
        let connected = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Connected" && c.status == "True");
        match status.connection {
            Some(c) if connected => Ok((c, status.last_activity)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(live.0.transport, voice_crds::Transport::WebSocket);
    assert!(
        live.0
            .remote_address
            .as_deref()
            .is_some_and(|a| a.starts_with("127.")),
        "{:?}",
        live.0
    );
    assert!(!live.0.connection_id.is_empty());
    assert!(live.1.is_some(), "lastActivity is set");

    // A normal close is a hang-up: the session completes and its slot frees.
    ws.close(None).await.unwrap();
    let ended = wait_phase(&api, "talk", SessionPhase::Completed).await;
    let status = ended.status.unwrap();
    assert_eq!(
        status.end_reason.as_deref(),
        Some("PeerClosed"),
        "the worker's reason"
    );
    assert!(status.connection.is_none());
    wait_for(T, "provider shows 0 in use", || async {
        match provider_counts(&stack.provider).await {
            (0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// A phone call bridged by Twilio Media Streams (`spec.transport: twilio`): the endpoint
/// is the worker's `/twilio` WebSocket, the join token travels as the `<Stream>`'s
/// `token` parameter in the `start` message (the caller side is written here from Twilio's
/// protocol description), status shows the call as a pcmu connection, and Twilio's `stop`
/// completes the session with that reason.
#[tokio::test]
async fn a_twilio_media_stream_call_shows_in_status_and_its_stop_completes_the_session() {
    use base64::Engine;
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let (stack, api) = echo_stack("sess-phone").await;
    let (endpoint, token) = admit_one(&api, "call", "echo", json!({"transport": "twilio"})).await;
    assert!(
        endpoint.url.starts_with("ws://") && endpoint.url.ends_with("/call/twilio"),
        "{}",
        endpoint.url
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(endpoint.url.as_str())
        .await
        .expect("the worker upgrades a held session's stream");
    let sid = "MZ00000000000000000000000000000002";
    let start = json!({
        "event": "start", "sequenceNumber": "1", "streamSid": sid,
        "start": {"accountSid": "AC0", "callSid": "CA0", "streamSid": sid, "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                  "customParameters": {"token": token}}
    });
    ws.send(Message::Text(
        json!({"event": "connected", "protocol": "Call"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Text(start.to_string().into()))
        .await
        .unwrap();
    // 100 ms of μ-law (0x00 is the loudest negative code), so the call shows activity.
    let payload = base64::engine::general_purpose::STANDARD.encode([0x10u8; 160]);
    for _ in 0..5 {
        let media = json!({"event": "media", "streamSid": sid, "media": {"track": "inbound", "payload": payload}});
        ws.send(Message::Text(media.to_string().into()))
            .await
            .unwrap();
    }
    let live = wait_for(T, "status shows the call", || async {
        let s = api.get("call").await.map_err(|e| e.to_string())?;
        let status = s.status.unwrap_or_default();
        match (
            status.connection,
            status.audio_buffers.and_then(|a| a.format),
        ) {
            (Some(c), Some(f)) => Ok((c, f)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(live.0.transport, voice_crds::Transport::Twilio);
    assert_eq!(live.1.codec, voice_crds::Codec::Pcmu, "{:?}", live.1);
    assert_eq!(live.1.sample_rate, 8_000);

    let stop =
        json!({"event": "stop", "streamSid": sid, "stop": {"accountSid": "AC0", "callSid": "CA0"}});
    ws.send(Message::Text(stop.to_string().into()))
        .await
        .unwrap();
    let ended = wait_phase(&api, "call", SessionPhase::Completed).await;
    assert_eq!(
        ended.status.unwrap().end_reason.as_deref(),
        Some("StreamStopped"),
        "Twilio's stop is the reason"
    );
    wait_for(T, "provider shows 0 in use", || async {
        match provider_counts(&stack.provider).await {
            (0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn pending_sessions_scale_a_backend_up_from_zero_and_are_then_admitted() {
    let stack = OperatorStack::start("sess-scale").await;
    let ns = &stack.ns;
    stack.apply_backend(
        "echo",
        json!({"workers": {"sessionsPerWorker": 2}, "scaling": {"minWorkers": 0, "maxWorkers": 3, "bufferSessions": 0}}),
    );
    let api: Api<VoiceSession> = ns.api();
    let start = Instant::now();
    for i in 0..5 {
        api.create(
            &PostParams::default(),
            &session(&format!("q{i}"), "echo", json!({})),
        )
        .await
        .unwrap();
    }
    let status = wait_for(T, "5 sessions Active on 3 workers", || async {
        let active = sessions(ns)
            .await
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .count();
        let status = backend_status(ns, "echo").await?;
        if active == 5 && status.workers.ready == 3 {
            Ok(status)
        } else {
            Err(format!("{active} active, workers {:?}", status.workers))
        }
    })
    .await;
    eprintln!(
        "5 queued sessions scaled the backend 0 → 3 workers and were admitted in {:?}",
        start.elapsed()
    );
    assert_eq!(status.workers.desired, 3);
}

#[tokio::test]
async fn a_session_that_ended_while_the_operator_was_down_is_completed_after_it_restarts() {
    let (mut stack, api) = echo_stack("sess-unseen").await;
    let ns_name = stack.ns.name().to_owned();
    let (endpoint, token) =
        admit_one(&api, "gone", "echo", json!({"transport": "websocket"})).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&endpoint.url, &token, 16_000))
        .await
        .unwrap();

    // The operator dies; the client hangs up while nobody listens to the worker's events.
    stack.operator.kill();
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.operator = OperatorProcess::start_with(
        &ns_name,
        "b",
        &[
            "--lease-duration-seconds",
            "3",
            "--lease-renew-seconds",
            "1",
        ],
    );
    let start = Instant::now();
    let ended = wait_phase(&api, "gone", SessionPhase::Completed).await;
    eprintln!("completed {:?} after the restart", start.elapsed());
    assert_eq!(
        ended.status.unwrap().end_reason.as_deref(),
        Some("EndedOnWorker")
    );
    wait_for(T, "provider shows 0 in use", || async {
        match provider_counts(&stack.provider).await {
            (0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn spoken_turns_fill_the_session_context_and_last_turn_and_a_slow_backend_is_degraded() {
    let stack = OperatorStack::start_with(
        "sess-turns",
        json!({"stages": {"turnDetection": ["silence"]}}),
    )
    .await;
    let ns = &stack.ns;
    // The offline pipeline (pocketsphinx → echo agent → espeak-ng) cannot answer in 50 ms.
    stack.apply_backend(
        "assistant",
        json!({"replicas": 1, "pipeline": {"latencyTarget": "50ms", "turnDetection": {"silenceTimeout": "400ms"}}}),
    );
    wait_healthy(ns, "assistant", 1, T).await;
    let api: Api<VoiceSession> = ns.api();
    let (endpoint, token) =
        admit_one(&api, "chat", "assistant", json!({"transport": "websocket"})).await;
    let (mut tx, reader) = connect_session(&endpoint.url, &token).await;

    // Six turns: half a second of silence, the phrase, two and a half seconds of silence.
    let phrase = speak("please tell me about the weather");
    let mut script = Vec::new();
    for _ in 0..6 {
        script.extend(vec![0u8; 16_000]);
        script.extend(&phrase);
        script.extend(vec![0u8; 80_000]);
    }
    send_paced(&mut tx, &script).await;

    let status = wait_for(T, "context and last turn in status", || async {
        let s = api.get("chat").await.map_err(|e| e.to_string())?;
        let status = s.status.unwrap_or_default();
        let context = status.context.clone().unwrap_or_default();
        let agent = context
            .transcript
            .iter()
            .filter(|e| e.speaker == voice_crds::Speaker::Agent)
            .count();
        if status.last_turn.is_some() && agent >= 1 && context.turns >= 1 {
            Ok(status)
        } else {
            Err(format!(
                "turns {}, last turn {:?}",
                context.turns, status.last_turn
            ))
        }
    })
    .await;
    let last = status.last_turn.unwrap();
    eprintln!("last turn: {last:?}");
    assert!(last.total_ms > 0);
    assert!(
        last.stt_ms.is_some() && last.tts_first_audio_ms.is_some(),
        "{last:?}"
    );
    let context = status.context.unwrap();
    assert!(
        context
            .transcript
            .iter()
            .any(|e| e.speaker == voice_crds::Speaker::User && !e.text.is_empty()),
        "{context:?}"
    );

    // A turn the loaded machine loses (its answer still playing when the next phrase
    // comes) adds no latency, and the p95 needs five: keep talking until the backend is
    // judged.
    let one_turn = script[..script.len() / 6].to_vec();
    let talker = tokio::spawn(async move {
        loop {
            send_paced(&mut tx, &one_turn).await;
        }
    });
    let degraded = wait_condition(ns, "assistant", "Degraded", "True", T).await;
    talker.abort();
    eprintln!("backend Degraded: {degraded:?}");
    let b = operator_common::backend_status(ns, "assistant")
        .await
        .unwrap();
    let c = b.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(c.reason, "LatencyTargetExceeded", "{}", c.message);
    assert!(c.message.contains("50 ms"), "{}", c.message);
    reader.abort();
}

/// Unix seconds of each session's `status.admittedAt`, sorted.
fn admitted_seconds(all: &[VoiceSession]) -> Vec<i64> {
    let mut seconds: Vec<i64> = all
        .iter()
        .filter_map(|s| Some(s.status.as_ref()?.admitted_at.as_ref()?.0.as_second()))
        .collect();
    seconds.sort_unstable();
    seconds
}

#[tokio::test]
async fn an_admission_rate_limit_holds_through_a_burst_and_an_operator_restart() {
    // 1/s after a burst of 10: a restarted operator that forgot the bucket would admit ten
    // more at once, which the window check below catches.
    let mut stack = OperatorStack::start_with(
        "sess-rate",
        json!({"capabilities": {"customRateLimiting": true},
               "admissionRateLimit": {"admissionsPerSecond": 1, "burst": 10}}),
    )
    .await;
    let ns = stack.ns.name().to_owned();
    stack.operator.kill();
    stack.operator = OperatorProcess::start_with(&ns, "rate-1", &SHORT_LEASE);
    wait_leading(&stack.operator).await;
    stack.apply_backend(
        "echo",
        json!({"replicas": 1, "workers": {"sessionsPerWorker": 30}}),
    );
    wait_healthy(&stack.ns, "echo", 1, T).await;

    create_sessions(&stack.ns, "r", "echo", 20).await;
    // The burst goes at once, then one a second; the rest wait RateLimited with positions.
    let limited = wait_for(T, "11 Active and the rest RateLimited", || async {
        let all = sessions(&stack.ns).await;
        let active = all
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .count();
        let waiting: Vec<Option<i32>> = all
            .iter()
            .filter(|s| admitted_reason(s).as_deref() == Some("RateLimited"))
            .map(|s| s.status.as_ref().and_then(|st| st.queue_position))
            .collect();
        if active >= 11 && !waiting.is_empty() {
            Ok(waiting)
        } else {
            Err(format!("{active} Active, {} RateLimited", waiting.len()))
        }
    })
    .await;
    assert!(limited.iter().all(Option::is_some), "{limited:?}");
    stack.operator.kill();
    stack.operator = OperatorProcess::start_with(&ns, "rate-2", &SHORT_LEASE);
    let all = wait_for(T, "all 20 Active", || async {
        let all = sessions(&stack.ns).await;
        let active = all
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .count();
        if active == 20 {
            Ok(all)
        } else {
            Err(format!("{active} Active"))
        }
    })
    .await;
    let seconds = admitted_seconds(&all);
    eprintln!("admittedAt seconds: {seconds:?}");
    // In any k whole seconds at most burst + k admissions (the bucket holds 10 and refills
    // one a second), across the restart too.
    for (i, first) in seconds.iter().enumerate() {
        for last in &seconds[i..] {
            let k = last - first + 1;
            let inside = seconds
                .iter()
                .filter(|t| (*first..=*last).contains(*t))
                .count();
            assert!(
                i64::try_from(inside).unwrap_or(i64::MAX) <= 10 + k,
                "{inside} admitted in {k} s from {first}: {seconds:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_namespace_quota_holds_across_two_backends_and_frees_in_order() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Patch, PatchParams};
    let stack = OperatorStack::start("sess-quota").await;
    let namespaces: Api<Namespace> = Api::all(voice_tests::client().await);
    namespaces
        .patch(
            stack.ns.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "voicebackends.dev/max-active-sessions": "3"
            }}})),
        )
        .await
        .expect("annotating the namespace");
    for backend in ["a", "b"] {
        stack.apply_backend(
            backend,
            json!({"replicas": 1, "workers": {"sessionsPerWorker": 5}}),
        );
    }
    wait_healthy(&stack.ns, "a", 1, T).await;
    wait_healthy(&stack.ns, "b", 1, T).await;
    create_sessions(&stack.ns, "qa", "a", 3).await;
    create_sessions(&stack.ns, "qb", "b", 2).await;
    let settle = || async {
        let all = sessions(&stack.ns).await;
        let active: Vec<String> = all
            .iter()
            .filter(|s| phase(s) == SessionPhase::Active)
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect();
        let quota = all
            .iter()
            .filter(|s| admitted_reason(s).as_deref() == Some("NamespaceQuota"))
            .count();
        (active, quota)
    };
    let (active, _) = wait_for(T, "3 Active, 2 waiting NamespaceQuota", || async {
        match settle().await {
            (active, 2) if active.len() == 3 => Ok((active, 2)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Held for a while: nothing more is admitted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(settle().await.0.len(), 3, "the quota holds");
    // One ends: the oldest waiting session (of either backend) takes its place.
    delete_sessions(&stack.ns, &active[..1]).await;
    wait_for(T, "the quota's freed slot taken", || async {
        match settle().await {
            (active, 1) if active.len() == 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
