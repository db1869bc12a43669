//! Benchmark: session admission on the local cluster.
//!
//! 1. The raw rate at which the API server accepts creates of VoiceSessions with no operator
//!    watching (the ceiling any admission rate is measured against).
//! 2. With the operator: `--sessions` sessions created 50 at a time on a backend with room for
//!    all of them; for each, the time from its create request to a watch seeing it `Active`
//!    (p50/p99), and admitted sessions per second over the whole burst; the ratio to (1).
//! 3. Open loop: for each of `--rates` (sessions/s), sessions created on a fixed schedule for
//!    `--seconds`, each create sent on time whatever the earlier ones are doing; the create
//!    request's own latency (the API server's, in the same run) beside create → `Active`.
//! 4. The operator's peak RSS once `--ledger` sessions hold a slot, and the open-loop figures
//!    again with that many already admitted.
//!
//! `cargo build --workspace --bins && cargo build --release -p voice-operator &&
//! VOICE_OPERATOR_BIN=target/release/voice-operator cargo run --release -p voice-bench --bin sessions`
//! (without `VOICE_OPERATOR_BIN` the debug operator is measured).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use voice_bench::peak_rss_mib;
use voice_crds::{SessionPhase, VoiceBackend, VoiceSession};
use voice_tests::{OperatorProcess, PROVIDER_LABEL, TestNamespace, kubectl_stdin};

#[derive(Parser)]
struct Args {
    /// Sessions in the admission burst.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Sessions held in the ledger for the memory figure (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    ledger: usize,
    /// Worker pods of the backend.
    #[arg(long, default_value_t = 20)]
    workers: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Open-loop arrival rates, sessions per second (empty skips them).
    #[arg(long, value_delimiter = ',', default_values_t = [20.0, 50.0, 100.0])]
    rates: Vec<f64>,
    /// Seconds each open-loop rate runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

impl Args {
    /// Sessions one pass over every open-loop rate creates.
    fn open_loop_sessions(&self) -> usize {
        self.rates
            .iter()
            .map(|r| (r * self.seconds).round() as usize)
            .sum()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    voice_tests::cluster();
    voice_tests::install_crds();
    voice_tests::node_agent();

    let raw = raw_create_rate(&args).await?;
    println!(
        "raw API create rate (no operator): {} sessions in {:.2} s = {:.0} creates/s",
        args.sessions,
        raw.as_secs_f64(),
        args.sessions as f64 / raw.as_secs_f64()
    );

    let ns = TestNamespace::without_time_limit("bench-sessions").await;
    let provider = format!("{}-p", ns.name());
    kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceProvider",
            "metadata": {"name": provider, "labels": {PROVIDER_LABEL: ns.name()}},
            "spec": {
                "capabilities": {"maxConcurrentSessions": 0, "sessionPersistence": true, "s2sSupport": true, "supportedCodecs": ["opus", "pcm"]},
                "worker": {"image": "voice-operator/worker:0.1.0"},
                "stages": {"s2s": ["echo"], "vad": ["webrtc"]},
            },
        })
        .to_string(),
    );
    let total = args.sessions.max(args.ledger) + 2 * args.open_loop_sessions();
    let per_worker = total.div_ceil(args.workers).clamp(1, 1000);
    kubectl_stdin(
        &["apply", "--server-side", "-n", ns.name(), "-f", "-"],
        &json!({
            "apiVersion": "voicebackends.dev/v1alpha1",
            "kind": "VoiceBackend",
            "metadata": {"name": "echo"},
            "spec": {
                "provider": provider,
                "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}},
                "replicas": args.workers,
                "workers": {"sessionsPerWorker": per_worker},
                "scaling": {"minWorkers": 1, "maxWorkers": args.workers.max(1)},
                "healthCheck": {"interval": "5s", "timeout": "2s", "failureThreshold": 3},
            },
        })
        .to_string(),
    );
    let operator = OperatorProcess::start(ns.name(), "bench");
    println!(
        "operator pid {} ({}); {} workers × {per_worker} sessions",
        operator.pid(),
        std::env::var("VOICE_OPERATOR_BIN")
            .unwrap_or_else(|_| "target/debug/voice-operator".into()),
        args.workers
    );
    wait_workers(&ns, args.workers).await?;

    // The burst.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = tokio::spawn(watch_active(ns.api(), seen.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = create(&ns, "s", args.sessions, args.concurrency, "echo").await?;
    let first = sent.values().min().copied().context("no sessions")?;
    wait_count(&seen, args.sessions, Duration::from_secs(900)).await?;
    let mut latencies: Vec<f64> = {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter()
            .filter_map(|(name, at)| Some(seen.get(name)?.duration_since(*at).as_secs_f64()))
            .collect()
    };
    let last = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .max()
        .copied()
        .context("nothing admitted")?;
    latencies.sort_by(f64::total_cmp);
    let rate = args.sessions as f64 / last.duration_since(first).as_secs_f64();
    let raw_rate = args.sessions as f64 / raw.as_secs_f64();
    println!(
        "admission of {} sessions: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (create request → Active seen by a watch)",
        args.sessions,
        percentile(&latencies, 0.50) * 1000.0,
        percentile(&latencies, 0.99) * 1000.0,
        latencies.last().copied().unwrap_or(0.0) * 1000.0
    );
    println!(
        "admitted {rate:.0} sessions/s over the burst = {:.2} of the raw create rate",
        rate / raw_rate
    );
    println!(
        "operator peak RSS after {} sessions: {:.1} MiB",
        args.sessions,
        peak_rss_mib(operator.pid()).unwrap_or(0.0)
    );

    let mut admitted = args.sessions;
    for &rate in &args.rates {
        open_loop(
            &ns,
            &seen,
            &format!("o{rate}"),
            rate,
            args.seconds,
            operator.metrics_port(),
        )
        .await?;
        admitted += (rate * args.seconds).round() as usize;
    }
    if args.ledger > admitted {
        let more = args.ledger - admitted;
        let started = Instant::now();
        create(&ns, "l", more, args.concurrency, "echo").await?;
        wait_count(&seen, args.ledger, Duration::from_secs(1800)).await?;
        println!(
            "{} sessions in the ledger ({more} more admitted in {:.1} s); operator peak RSS {:.1} MiB",
            args.ledger,
            started.elapsed().as_secs_f64(),
            peak_rss_mib(operator.pid()).unwrap_or(0.0)
        );
        for &rate in &args.rates {
            open_loop(
                &ns,
                &seen,
                &format!("n{rate}"),
                rate,
                args.seconds,
                operator.metrics_port(),
            )
            .await?;
        }
        println!(
            "operator peak RSS after the open-loop runs on top of {}: {:.1} MiB",
            args.ledger,
            peak_rss_mib(operator.pid()).unwrap_or(0.0)
        );
    }
    watch.abort();
    drop(operator);
    let _ = kubectl_stdin(&["delete", "voiceprovider", &provider, "--wait=false"], "");
    Ok(())
}

/// Creates `count` sessions in a namespace no operator watches; returns the wall time.
async fn raw_create_rate(args: &Args) -> anyhow::Result<Duration> {
    let ns = TestNamespace::without_time_limit("bench-raw").await;
    let started = Instant::now();
    create(&ns, "r", args.sessions, args.concurrency, "nobody").await?;
    Ok(started.elapsed())
}

fn session(name: &str, backend: &str) -> VoiceSession {
    serde_json::from_value(json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": name},
        "spec": {"backendRef": {"name": backend}, "user": {"userID": name}, "transport": "websocket"},
    }))
    .expect("a valid session")
}

/// Creates `count` sessions `<prefix>-N`, `concurrency` at a time; returns when each was sent.
async fn create(
    ns: &TestNamespace,
    prefix: &str,
    count: usize,
    concurrency: usize,
    backend: &str,
) -> anyhow::Result<HashMap<String, Instant>> {
    let api: Api<VoiceSession> = ns.api();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let name = format!("{prefix}-{i:05}");
            let s = session(&name, backend);
            async move {
                let at = Instant::now();
                api.create(&PostParams::default(), &s).await?;
                Ok::<_, kube::Error>((name, at))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
        .context("creating sessions")
}

/// Creates sessions `<prefix>-N` at `rate` per second for `seconds`, open loop (a create is
/// sent on schedule even while earlier ones are unanswered), then prints the create requests'
/// latency and create → Active as a watch saw it.
async fn open_loop(
    ns: &TestNamespace,
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
    prefix: &str,
    rate: f64,
    seconds: f64,
    metrics_port: u16,
) -> anyhow::Result<()> {
    let count = (rate * seconds).round() as usize;
    let before = OperatorTimes::scrape(metrics_port);
    let api: Api<VoiceSession> = ns.api();
    let mut schedule = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..count {
        schedule.tick().await;
        let api = api.clone();
        let name = format!("{prefix}-{i:05}").replace('.', "-");
        creates.spawn(async move {
            let sent = Instant::now();
            api.create(&PostParams::default(), &session(&name, "echo"))
                .await?;
            Ok::<_, kube::Error>((name, sent, sent.elapsed().as_secs_f64()))
        });
    }
    let mut sent = Vec::with_capacity(count);
    let mut create_latency = Vec::with_capacity(count);
    while let Some(done) = creates.join_next().await {
        let (name, at, took) = done
            .context("a create task")?
            .context("creating a session")?;
        sent.push((name, at));
        create_latency.push(took);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut active = loop {
        let got: Vec<f64> = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            sent.iter()
                .filter_map(|(name, at)| Some(seen.get(name)?.duration_since(*at).as_secs_f64()))
                .collect()
        };
        if got.len() == count {
            break got;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} open-loop sessions became Active",
                got.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    create_latency.sort_by(f64::total_cmp);
    active.sort_by(f64::total_cmp);
    let ms = |v: &[f64], q: f64| percentile(v, q) * 1000.0;
    println!(
        "open loop {rate}/s for {seconds} s ({count}): create request p50 {:.0} ms p99 {:.0} ms; create → Active p50 {:.0} ms p99 {:.0} ms max {:.0} ms",
        ms(&create_latency, 0.5),
        ms(&create_latency, 0.99),
        ms(&active, 0.5),
        ms(&active, 0.99),
        active.last().copied().unwrap_or(0.0) * 1000.0
    );
    let after = OperatorTimes::scrape(metrics_port);
    println!(
        "  operator meanwhile: {} allocation rounds, mean {:.1} ms; admission steps mean {:.1} ms",
        after.rounds.1 - before.rounds.1,
        after.mean_round_ms(&before),
        after.mean_admission_ms(&before)
    );
    Ok(())
}

/// The operator's own timing histograms (sum of seconds, count), from its `/metrics`.
#[derive(Default)]
struct OperatorTimes {
    rounds: (f64, f64),
    admissions: (f64, f64),
}

impl OperatorTimes {
    fn scrape(port: u16) -> Self {
        use std::io::{Read, Write};
        let mut text = String::new();
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let _ = stream.read_to_string(&mut text);
        }
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Self {
            rounds: (
                value("voice_allocator_round_duration_seconds_sum"),
                value("voice_allocator_round_duration_seconds_count"),
            ),
            admissions: (
                value("voice_session_admission_duration_seconds_sum"),
                value("voice_session_admission_duration_seconds_count"),
            ),
        }
    }

    fn mean_round_ms(&self, before: &Self) -> f64 {
        mean_ms(self.rounds, before.rounds)
    }

    fn mean_admission_ms(&self, before: &Self) -> f64 {
        mean_ms(self.admissions, before.admissions)
    }
}

fn mean_ms(now: (f64, f64), before: (f64, f64)) -> f64 {
    let n = now.1 - before.1;
    if n > 0.0 {
        (now.0 - before.0) / n * 1000.0
    } else {
        0.0
    }
}

/// Records when a watch first sees each session Active.
async fn watch_active(api: Api<VoiceSession>, seen: Arc<Mutex<HashMap<String, Instant>>>) {
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
    while let Some(next) = stream.next().await {
        let Ok(s) = next else { continue };
        if s.status
            .as_ref()
            .is_some_and(|s| s.phase == SessionPhase::Active)
        {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(s.name_any())
                .or_insert_with(Instant::now);
        }
    }
}

async fn wait_count(
    seen: &Arc<Mutex<HashMap<String, Instant>>>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut report = Instant::now();
    loop {
        let have = seen.lock().unwrap_or_else(|p| p.into_inner()).len();
        if have >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {have} of {n} sessions became Active within {timeout:?}");
        }
        if report.elapsed() > Duration::from_secs(10) {
            println!("  … {have}/{n} Active");
            report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_workers(ns: &TestNamespace, workers: usize) -> anyhow::Result<()> {
    let api: Api<VoiceBackend> = ns.api();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready = api
            .list(&ListParams::default())
            .await?
            .items
            .first()
            .and_then(|b| b.status.as_ref().map(|s| s.workers.ready))
            .unwrap_or(0);
        if usize::try_from(ready).unwrap_or(0) >= workers {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {workers} workers became ready");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
