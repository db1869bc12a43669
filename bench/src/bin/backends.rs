//! Benchmark: N backends × M workers on the local cluster.
//!
//! Prints the time from `kubectl apply` to every backend `Ready`, the operator's CPU seconds
//! and peak RSS, and at steady state the API writes per reconcile (status writes of
//! VoiceBackends and pod writes, from the API server's own request counters, over the
//! operator's reconcile count), which should be about 0 when nothing changes.
//!
//! `cargo build --workspace --bins && cargo run -p voice-bench --bin backends -- --backends 100`

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use voice_bench::{cpu_seconds, peak_rss_mib, sum_by};
use voice_tests::{install_crds, kubectl, kubectl_ok, kubectl_stdin, node_agent};

#[derive(Parser)]
struct Args {
    /// Backends to create.
    #[arg(long, default_value_t = 100)]
    backends: usize,
    /// Workers per backend (minWorkers = maxWorkers).
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Seconds of steady state over which API requests are counted.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Operator binary (default: target/release/voice-operator if built, else target/debug).
    #[arg(long)]
    operator: Option<PathBuf>,
}

const NS: &str = "bench-backends";
const PROVIDER: &str = "bench-provider";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = voice_cluster::layout::target_dir();
    let operator_bin = args.operator.clone().unwrap_or_else(|| {
        let release = target.join("release/voice-operator");
        if release.exists() {
            release
        } else {
            target.join("debug/voice-operator")
        }
    });
    println!("operator binary: {}", operator_bin.display());

    voice_tests::cluster();
    install_crds();
    node_agent();
    cleanup(true);
    kubectl_ok(&["create", "namespace", NS]);
    kubectl_stdin(&["apply", "--server-side", "-f", "-"], &provider());

    let metrics_port = free_port();
    let mut operator = start_operator(&operator_bin, metrics_port)?;
    std::thread::sleep(Duration::from_secs(2));

    let manifests: Vec<String> = (0..args.backends)
        .map(|i| backend(i, args.workers))
        .collect();
    let started = Instant::now();
    kubectl_stdin(
        &["apply", "--server-side", "-n", NS, "-f", "-"],
        &manifests.join("---\n"),
    );
    let applied = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last_report = Instant::now();
    let ready_after = loop {
        let ready = count_ready();
        if ready == args.backends {
            break started.elapsed();
        }
        if let Ok(Some(status)) = operator.try_wait() {
            bail!("the operator exited ({status}); see target/voice-bench/operator.log");
        }
        if Instant::now() > deadline {
            bail!(
                "only {ready}/{} backends Ready after 15 minutes",
                args.backends
            );
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {:>5.0?}: {ready}/{} backends Ready",
                started.elapsed(),
                args.backends
            );
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let cpu_at_ready = cpu_seconds(operator.id()).unwrap_or(f64::NAN);

    // Steady state: nothing changes, so the operator should only read (health checks go to
    // the workers, not the API server).
    std::thread::sleep(Duration::from_secs(10));
    let api_before = kubectl_ok(&["get", "--raw", "/metrics"]);
    let op_before = scrape(metrics_port)?;
    let cpu_before = cpu_seconds(operator.id()).unwrap_or(f64::NAN);
    std::thread::sleep(Duration::from_secs(args.steady_seconds));
    let api_after = kubectl_ok(&["get", "--raw", "/metrics"]);
    let op_after = scrape(metrics_port)?;
    let cpu_after = cpu_seconds(operator.id()).unwrap_or(f64::NAN);
    let peak_rss = peak_rss_mib(operator.id()).unwrap_or(f64::NAN);

    let reconciles = |text: &str| -> f64 {
        sum_by(
            text,
            "voice_operator_reconciles_total",
            &["controller=\"backend\""],
            "",
        )
        .values()
        .sum()
    };
    let steady_reconciles = reconciles(&op_after) - reconciles(&op_before);
    let before = writes_by_kind(&api_before);
    let mut steady: Vec<(String, f64)> = writes_by_kind(&api_after)
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    steady.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Writes only the operator makes: backend status, its Events, Services, Secrets and pod creation.
    let operator_writes: f64 = steady
        .iter()
        .filter(|(k, _)| {
            k.starts_with("voicebackends")
                || k.starts_with("events")
                || k.starts_with("services")
                || k.starts_with("secrets")
                || k == "pods POST"
        })
        .map(|(_, d)| d)
        .sum::<f64>()
        + 0.0; // an empty sum is -0.0

    println!(
        "\n== voice-operator benchmark: {} backends x {} workers ==",
        args.backends, args.workers
    );
    println!(
        "apply of {} backends:                 {:.2?}",
        args.backends, applied
    );
    println!("apply -> all backends Ready:           {:.1?}", ready_after);
    println!(
        "worker pods running:                  {}",
        count_running_pods()
    );
    println!("operator CPU seconds to all Ready:    {cpu_at_ready:.1}");
    println!("operator peak RSS:                     {peak_rss:.1} MiB");
    println!(
        "steady state ({} s): backend reconciles {steady_reconciles:.0}, operator writes {operator_writes:.0} ({:.3} per reconcile), operator CPU {:.2} s",
        args.steady_seconds,
        if steady_reconciles > 0.0 {
            operator_writes / steady_reconciles
        } else {
            f64::NAN
        },
        cpu_after - cpu_before
    );
    println!("  all API writes in the window (any client):");
    for (kind, n) in &steady {
        println!("    {kind:<40} {n:.0}");
    }

    // Delete while the operator runs: it removes the backends' finalizers.
    let cleanup_started = Instant::now();
    cleanup(false);
    println!(
        "namespace with {} backends deleted in {:.1?}",
        args.backends,
        cleanup_started.elapsed()
    );
    let _ = operator.kill();
    let _ = operator.wait();
    Ok(())
}

/// API write counts in `bench-backends`-relevant resources by "resource[/subresource] VERB",
/// object-scoped only (the namespace controller's collection deletes of other tests' namespaces
/// would otherwise pollute the window).
fn writes_by_kind(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
        };
        let verb = label("verb");
        if !matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
            || label("scope") != "resource" && verb != "POST"
        {
            continue;
        }
        let resource = label("resource");
        if !matches!(
            resource,
            "voicebackends" | "pods" | "secrets" | "services" | "events"
        ) {
            continue;
        }
        let sub = label("subresource");
        let key = if sub.is_empty() {
            format!("{resource} {verb}")
        } else {
            format!("{resource}/{sub} {verb}")
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(key).or_default() += value;
    }
    out
}

fn provider() -> String {
    format!(
        r#"apiVersion: voicebackends.dev/v1alpha1
kind: VoiceProvider
metadata:
  name: {PROVIDER}
  labels:
    voice-bench: "true"
spec:
  capabilities:
    s2sSupport: true
    maxConcurrentSessions: 0
    supportedCodecs: [opus, pcm]
  worker:
    image: voice-operator/worker:bench
  stages:
    s2s: [echo]
"#
    )
}

fn backend(i: usize, workers: usize) -> String {
    format!(
        r#"apiVersion: voicebackends.dev/v1alpha1
kind: VoiceBackend
metadata:
  name: b{i:03}
spec:
  provider: {PROVIDER}
  pipeline:
    type: S2S
    s2s:
      provider: echo
  scaling:
    minWorkers: {workers}
    maxWorkers: {workers}
"#
    )
}

fn start_operator(binary: &PathBuf, metrics_port: u16) -> anyhow::Result<Child> {
    let dir = voice_cluster::layout::target_dir().join("voice-bench");
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("operator.log"))?;
    Command::new(binary)
        .args([
            "--watch-namespace",
            NS,
            "--lease-namespace",
            NS,
            "--provider-selector",
            "voice-bench=true",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env("KUBECONFIG", voice_tests::cluster().kubeconfig())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

fn count_ready() -> usize {
    let out = kubectl(&[
        "get",
        "vb",
        "-n",
        NS,
        "-o",
        r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == "True")
        .count()
}

fn count_running_pods() -> usize {
    let out = kubectl(&[
        "get",
        "pods",
        "-n",
        NS,
        "--field-selector",
        "status.phase=Running",
        "-o",
        "name",
    ]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn scrape(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .context("connecting to the operator's /metrics")?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Deletes the benchmark's namespace and provider. `leftovers`: the backends of an interrupted
/// run have no operator to finish their finalizers, so drop them first.
fn cleanup(leftovers: bool) {
    if leftovers {
        let out = kubectl(&["get", "vb", "-n", NS, "-o", "name"]);
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = kubectl(&[
                "patch",
                name,
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
    let _ = kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=300s"]);
    let _ = kubectl(&["delete", "voiceprovider", PROVIDER, "--ignore-not-found"]);
}
