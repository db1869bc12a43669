//! `cargo xtask dev`: the local embedded default for a newcomer, in the foreground.
//!
//! Brings up the local control plane, builds the workspace's binaries, installs the CRDs,
//! applies the examples, and runs the node agent (which starts the worker pods as local
//! processes) and the operator. Ctrl-C stops it all: operator, node agent (and with it every
//! worker), then the control plane.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{dev_lan, node_agent, prerequisites};

/// Arguments of `cargo xtask dev`.
#[derive(clap::Args)]
pub struct Args {
    /// Address of the operator's /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8081")]
    operator_metrics: String,
    /// Keep the local control plane running after Ctrl-C.
    #[arg(long)]
    keep_cluster: bool,
    /// Stop everything once the example backends are Ready (a smoke run of the whole stack).
    #[arg(long)]
    until_ready: bool,
    /// Also run a Prometheus (Debian package `prometheus`) scraping the operator and every
    /// worker, on this address.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9090")]
    prometheus: Option<String>,
    /// Make the demo assistant reachable from other machines on the LAN: the node takes this
    /// machine's LAN address (or the one given), and `assistant` runs on it with
    /// `advertise: NodeIP` and HTTPS signaling under a self-signed certificate
    /// (docs/networking.md, "The local demo").
    #[arg(long, num_args = 0..=1, default_missing_value = "lan", value_name = "ADDRESS")]
    lan: Option<String>,
}

/// Starts everything, prints where to look, and waits for Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace");
    prerequisites::ensure()?;

    step("local control plane (the first run builds it from Go modules: about 4 minutes)");
    let cluster = voice_cluster::up().context("starting the local control plane")?;

    step("building the operator, the worker and the node agent");
    let status = crate::cargo_command()
        .args(["build", "--workspace", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --workspace --bins failed");
    }
    let bin = voice_cluster::layout::target_dir().join("debug");

    step("installing the CRDs and applying examples/");
    let crds = root.join("crds/manifests").display().to_string();
    kubectl(
        &cluster,
        &["apply", "--server-side", "--force-conflicts", "-f", &crds],
    )?;
    kubectl(
        &cluster,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &crds,
        ],
    )?;
    kubectl(
        &cluster,
        &["apply", "-f", &root.join("examples").display().to_string()],
    )?;

    // One agent per node: the one the tests share would fight this one over the same pods.
    if node_agent::stop_shared()? {
        eprintln!("   stopped the node agent the tests had left running");
    }
    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    step("starting the node agent and the operator");
    let logs = voice_cluster::layout::target_dir().join("voice-dev");
    std::fs::create_dir_all(&logs)?;
    let node_ip = args.lan.as_deref().unwrap_or("127.0.0.1");
    let mut children = vec![spawn(
        "node agent",
        &bin.join("voice-node-agent"),
        &["--node-ip", node_ip],
        &cluster,
        &logs.join("node-agent.log"),
    )?];
    // Whatever fails from here stops the node agent too, rather than leave it running pods.
    let rest = start_rest(&args, &cluster, &bin, &logs);
    match rest {
        Ok(more) => children.extend(more),
        Err(e) => {
            for child in children.iter_mut().rev() {
                stop(child, &stop_rx);
            }
            return Err(e);
        }
    }
    let ready = wait_for_examples(&cluster, &stop_rx, &mut children);
    let demo = match &ready {
        Ok(()) => {
            demo_session(&cluster, &stop_rx).unwrap_or_else(|e| format!("(no demo session: {e:#})"))
        }
        Err(_) => String::new(),
    };
    let demo = if args.lan.is_some() {
        format!(
            "{demo}\n  (from this machine or another on the LAN; the certificate is self-signed for this\n  address, so the browser asks once whether to trust it)"
        )
    } else {
        demo
    };
    kubectl(&cluster, &["get", "voice", "-A"])?;
    match &ready {
        Ok(()) => {
            if let Some(addr) = &args.prometheus {
                println!(
                    "\nPrometheus (operator and every worker): http://{addr}/graph?g0.expr=voice_provider_sessions"
                );
            }
            println!(
                "\nvoice-operator is running on a local cluster.\n\nTalk to the assistant in a browser (a fresh session, its join token in the link):\n  {demo}\n\n  export KUBECONFIG={kubeconfig}\n  alias kubectl={kubectl}   # a v1.36 client that matches the server\n  kubectl get voice -A -w\n  curl -s http://{metrics}/metrics | grep ^voice_\n\nLogs: {logs}/operator.log and {logs}/node-agent.log (workers: {target}/voice-node-agent/logs/).\nCtrl-C stops everything.",
                demo = demo,
                kubeconfig = cluster.kubeconfig().display(),
                kubectl = cluster.kubectl_path().display(),
                metrics = args.operator_metrics,
                logs = logs.display(),
                target = voice_cluster::layout::target_dir().display(),
            );
        }
        Err(e) => eprintln!("\n{e:#}"),
    }

    if ready.is_ok() && !args.until_ready {
        wait_for_stop(&stop_rx, &mut children);
    }
    step(
        "stopping the operator and the node agent (and with it every worker; Ctrl-C again to kill)",
    );
    for child in children.iter_mut().rev() {
        stop(child, &stop_rx);
    }
    if !args.keep_cluster {
        step("stopping the local control plane");
        voice_cluster::down().context("stopping the local control plane")?;
    }
    ready
}

/// What starts after the node agent: `--lan`'s changes (before the operator, so the
/// assistant's first workers already run as asked), the operator and Prometheus.
fn start_rest(
    args: &Args,
    cluster: &voice_cluster::Cluster,
    bin: &Path,
    logs: &Path,
) -> anyhow::Result<Vec<Process>> {
    if args.lan.is_some() {
        let address = dev_lan::node_address(cluster, dev_lan::NODE)?;
        step(&format!(
            "exposing the assistant on {address} (NodeIP, HTTPS with a self-signed certificate)"
        ));
        dev_lan::expose(cluster, address)?;
    } else {
        dev_lan::release(cluster)?;
    }
    let mut started = vec![spawn(
        "operator",
        &bin.join("voice-operator"),
        &["--metrics-addr", &args.operator_metrics],
        cluster,
        &logs.join("operator.log"),
    )?];
    if let Some(addr) = &args.prometheus {
        match start_prometheus(cluster, addr, &args.operator_metrics, logs) {
            Ok(prometheus) => started.push(prometheus),
            Err(e) => {
                let (_, none) = mpsc::channel();
                stop(&mut started[0], &none);
                return Err(e);
            }
        }
    }
    Ok(started)
}

/// Starts Prometheus scraping the operator and, through a file the dev stack refreshes every
/// 5 s from the API, every worker pod (Debian's Prometheus has no Kubernetes discovery).
fn start_prometheus(
    cluster: &voice_cluster::Cluster,
    addr: &str,
    operator: &str,
    logs: &Path,
) -> anyhow::Result<Process> {
    step(&format!("starting Prometheus on {addr}"));
    let targets = logs.join("workers.json");
    std::fs::write(&targets, "[]")?;
    let config = format!(
        "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: voice-operator\n    static_configs:\n      - targets: ['{operator}']\n  - job_name: voice-workers\n    tls_config:\n      insecure_skip_verify: true\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 5s\n",
        targets.display()
    );
    let config_path = logs.join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let kubectl = cluster.kubectl_path().to_path_buf();
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    std::thread::spawn(move || {
        loop {
            let out = Command::new(&kubectl)
                .env("KUBECONFIG", &kubeconfig)
                .args([
                    "get",
                    "pods",
                    "-A",
                    "-l",
                    "app.kubernetes.io/managed-by=voice-operator",
                    "-o",
                    r#"jsonpath={range .items[*]}{.status.podIP} {.metadata.namespace} {.metadata.labels.voicebackends\.dev/backend} {.spec.containers[0].env[?(@.name=="TLS_CERT_FILE")].name}{"\n"}{end}"#,
                ])
                .output();
            if let Ok(out) = out {
                let groups: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split_whitespace();
                        let (ip, ns, backend) = (f.next()?, f.next()?, f.next()?);
                        // A worker with signaling TLS serves /metrics over HTTPS too.
                        let scheme = if f.next().is_some() { "https" } else { "http" };
                        Some(format!(
                            r#"{{"targets":["{ip}:8080"],"labels":{{"backend":"{ns}/{backend}","__scheme__":"{scheme}"}}}}"#
                        ))
                    })
                    .collect();
                let _ = std::fs::write(&targets, format!("[{}]", groups.join(",")));
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let data = logs.join("prometheus-data");
    spawn(
        "prometheus",
        Path::new("prometheus"),
        &[
            &format!("--config.file={}", config_path.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address={addr}"),
        ],
        cluster,
        &logs.join("prometheus.log"),
    )
}

/// A background process of the dev stack.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

fn spawn(
    name: &'static str,
    binary: &Path,
    args: &[&str],
    cluster: &voice_cluster::Cluster,
    log: &Path,
) -> anyhow::Result<Process> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(binary)
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    eprintln!("   {name}: pid {} (log {})", child.id(), log.display());
    Ok(Process {
        name,
        child,
        log: log.to_path_buf(),
    })
}

/// Waits until the example backends report `Ready=True`, Ctrl-C, or a child's death.
fn wait_for_examples(
    cluster: &voice_cluster::Cluster,
    stop: &mpsc::Receiver<()>,
    children: &mut [Process],
) -> anyhow::Result<()> {
    step("waiting for the example backends to become Ready");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = cluster
            .kubectl()
            .args(["get", "vb", "-n", "default", "-o", r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}"#])
            .output()
            .context("running kubectl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let states: Vec<&str> = text.split_whitespace().collect();
        if !states.is_empty() && states.iter().all(|s| s.ends_with("=True")) {
            return Ok(());
        }
        for p in children.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("the {} exited ({status}); see {}", p.name, p.log.display());
            }
        }
        if stop.recv_timeout(Duration::from_secs(1)).is_ok() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!(
                "the example backends are not Ready after 3 minutes ({text}); see the logs above"
            );
        }
    }
}

/// Creates a fresh session on the example `assistant`, waits until it is admitted, and
/// returns the worker's demo page URL with the session and its join token.
fn demo_session(
    cluster: &voice_cluster::Cluster,
    stop: &mpsc::Receiver<()>,
) -> anyhow::Result<String> {
    step("creating a fresh session for the demo page");
    let manifest = r#"{"apiVersion":"voicebackends.dev/v1alpha1","kind":"VoiceSession","metadata":{"generateName":"demo-","namespace":"default"},"spec":{"backendRef":{"name":"assistant"},"user":{"userID":"dev"},"transport":"webrtc","maxDuration":"1h","ttlSecondsAfterFinished":60}}"#;
    let mut child = cluster
        .kubectl()
        .args(["create", "-f", "-", "-o", "jsonpath={.metadata.name}"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl create")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("kubectl stdin")?,
        manifest.as_bytes(),
    )?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("kubectl create failed");
    }
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let out = cluster
            .kubectl()
            .args([
                "get",
                "vs",
                &name,
                "-n",
                "default",
                "-o",
                "jsonpath={.status.phase} {.status.endpoint.url}",
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(url) = text.strip_prefix("Active ") {
            break url.trim().to_owned();
        }
        if stop.recv_timeout(Duration::from_millis(500)).is_ok() || Instant::now() > deadline {
            bail!("session {name} was not admitted (status: {text})");
        }
    };
    // The operator writes the token Secret beside the Active status: it may land a moment
    // after the status did.
    let token = loop {
        let out = cluster
            .kubectl()
            .args([
                "get",
                "secret",
                &format!("{name}-join-token"),
                "-n",
                "default",
                "-o",
                "go-template={{.data.token | base64decode}}",
            ])
            .output()?;
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !token.is_empty() {
            break token;
        }
        if stop.recv_timeout(Duration::from_millis(200)).is_ok() || Instant::now() > deadline {
            bail!("the join-token Secret of session {name} did not appear");
        }
    };
    let origin = url
        .split("/v1/")
        .next()
        .context("endpoint URL without /v1/")?;
    Ok(format!(
        "{origin}/demo?session=default/{name}&token={token}"
    ))
}

fn wait_for_stop(stop: &mpsc::Receiver<()>, children: &mut [Process]) {
    loop {
        if stop.recv_timeout(Duration::from_secs(1)).is_ok() {
            return;
        }
        for p in children.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                eprintln!("the {} exited ({status}); see {}", p.name, p.log.display());
                return;
            }
        }
    }
}

/// SIGTERM (so the node agent stops its workers, within its 5 s shutdown grace), then SIGKILL
/// after 20 s or at once on another Ctrl-C.
fn stop(p: &mut Process, again: &mpsc::Receiver<()>) {
    if let Ok(Some(_)) = p.child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.child.try_wait() {
            return;
        }
        if again.try_recv().is_ok() {
            eprintln!("   Ctrl-C again: killing the {}", p.name);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn kubectl(cluster: &voice_cluster::Cluster, args: &[&str]) -> anyhow::Result<()> {
    let status = cluster
        .kubectl()
        .args(args)
        .status()
        .context("running kubectl")?;
    if !status.success() {
        bail!("`kubectl {}` failed", args.join(" "));
    }
    Ok(())
}
