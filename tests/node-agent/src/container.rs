//! One container's life: start, watch its process, probe it, restart it with back-off or let
//! it end, as its pod's restartPolicy says.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod};
use k8s_openapi::jiff::Timestamp;
use rustix::process::Signal;

use crate::context::Context;
use crate::env::{self, Addresses};
use crate::probes::{Check, Outcome, Tracker};
use crate::runtime::{self, Launch, Process};
use crate::status::{ContainerView, State, Termination};
use crate::volumes;

/// Wait before the second restart; doubles per crash up to [`MAX_BACKOFF`]. The first restart
/// is immediate, as with kubelet.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Cap of the restart back-off: kubelet uses 5 minutes, tests cannot wait that long.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A run this long counts as healthy and resets the back-off.
const STABLE_RUN: Duration = Duration::from_secs(20);

/// A container of a pod and its process.
#[derive(Debug)]
pub struct Container {
    spec: ContainerSpec,
    binary: PathBuf,
    log: PathBuf,
    view: ContainerView,
    process: Option<Process>,
    started: Option<(Instant, Timestamp)>,
    env: Vec<(String, String)>,
    readiness: Option<(Check, Tracker)>,
    liveness: Option<(Check, Tracker)>,
    runs: u32,
    backoff: Duration,
    next_start: Option<Instant>,
    kill_at: Option<Instant>,
}

/// What a [`Container::step`] changed that the pod must act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// A process started (its pid belongs in the pod's annotation).
    pub started: bool,
}

impl Container {
    /// A container that will start on the first step.
    pub fn new(spec: ContainerSpec, binary: PathBuf, log: PathBuf) -> Container {
        let view = ContainerView {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            restart_count: 0,
            ready: false,
        };
        Container {
            spec,
            binary,
            log,
            view,
            process: None,
            started: None,
            env: Vec::new(),
            readiness: None,
            liveness: None,
            runs: 0,
            backoff: Duration::ZERO,
            next_start: Some(Instant::now()),
            kill_at: None,
        }
    }

    /// A container that never starts, waiting with `reason` and `message` (e.g. ImageNotMapped).
    pub fn refused(spec: &ContainerSpec, reason: &str, message: String) -> ContainerView {
        ContainerView {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            state: State::Waiting {
                reason: reason.to_owned(),
                message: Some(message),
            },
            last: None,
            restart_count: 0,
            ready: false,
        }
    }

    /// Its status view.
    pub fn view(&self) -> &ContainerView {
        &self.view
    }

    /// Pid and log of the running process, for the pod's annotation.
    pub fn process_info(&self) -> Option<serde_json::Value> {
        self.process.as_ref().map(|p| {
            serde_json::json!({
                "pid": p.pid(),
                "start": crate::runtime::start_time(p.pid()),
                "log": self.log.display().to_string(),
            })
        })
    }

    /// Whether a process runs.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// One round of supervision at `now`: reap, restart, probe.
    pub async fn step(&mut self, ctx: &Context, pod: &Pod, pod_ip: Ipv4Addr) -> Step {
        let now = Instant::now();
        if let Some(process) = &mut self.process {
            if let Some(status) = process.try_exit() {
                self.exited(runtime::exit_code(status), restart_policy(pod), now);
            } else {
                if self.kill_at.is_some_and(|at| now >= at) {
                    process.signal(Signal::KILL);
                }
                self.probe(pod_ip, now).await;
            }
            return Step::default();
        }
        if self.next_start.is_some_and(|at| now >= at) {
            return Step {
                started: self.start(ctx, pod, pod_ip).await,
            };
        }
        Step::default()
    }

    async fn start(&mut self, ctx: &Context, pod: &Pod, pod_ip: Ipv4Addr) -> bool {
        let addrs = Addresses {
            pod_ip,
            host_ip: ctx.node_ip,
        };
        let resolved = match env::resolve(&ctx.client, pod, &self.spec, addrs).await {
            Ok(vars) => vars,
            Err(err) => {
                self.wait_and_retry(err.reason(), err.to_string());
                return false;
            }
        };
        let mounts = match self.volumes(ctx, pod) {
            Ok(mounts) => mounts,
            Err(err) => {
                self.wait_and_retry(err.reason(), err.to_string());
                return false;
            }
        };
        let mut vars = base_env(ctx, pod);
        for (k, v) in resolved {
            vars.retain(|(n, _)| *n != k);
            vars.push((k, volumes::rewrite(&v, &mounts)));
        }
        let known: BTreeMap<String, String> = vars.iter().cloned().collect();
        let args: Vec<String> = env::arguments(&self.spec, &known)
            .iter()
            .map(|a| volumes::rewrite(a, &mounts))
            .collect();
        let launch = Launch {
            binary: &self.binary,
            args: &args,
            env: &vars,
            log: &self.log,
        };
        match Process::spawn(&launch) {
            Ok(process) => {
                let now = Instant::now();
                let at = Timestamp::now();
                tracing::info!(
                    container = %self.spec.name,
                    pid = process.pid(),
                    binary = %self.binary.display(),
                    log = %self.log.display(),
                    "container started"
                );
                if self.runs > 0 {
                    self.view.restart_count += 1;
                }
                self.runs += 1;
                self.process = Some(process);
                self.started = Some((now, at));
                self.env = vars;
                self.next_start = None;
                self.kill_at = None;
                self.view.state = State::Running { started_at: at };
                self.readiness = probe(self.spec.readiness_probe.as_ref(), now, false);
                self.liveness = probe(self.spec.liveness_probe.as_ref(), now, true);
                self.view.ready = self.readiness.is_none();
                true
            }
            Err(err) => {
                tracing::warn!(container = %self.spec.name, error = %err, "container did not start");
                self.wait_and_retry(err.reason(), err.to_string());
                false
            }
        }
    }

    /// Makes the pod's volumes current and returns this container's mounts.
    fn volumes(&self, ctx: &Context, pod: &Pod) -> Result<Vec<(String, PathBuf)>, crate::Error> {
        let dir = volumes::pod_dir(&ctx.volume_dir, pod.metadata.uid.as_deref().unwrap_or("-"));
        volumes::sync(&ctx.secrets, pod, &dir)?;
        volumes::mounts(pod, &self.spec, &dir)
    }

    fn wait_and_retry(&mut self, reason: &str, message: String) {
        self.view.state = State::Waiting {
            reason: reason.to_owned(),
            message: Some(message),
        };
        self.next_start = Some(Instant::now() + self.next_backoff());
    }

    fn next_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = if wait.is_zero() {
            FIRST_BACKOFF
        } else {
            (wait * 2).min(MAX_BACKOFF)
        };
        wait
    }

    fn exited(&mut self, exit_code: i32, policy: &str, now: Instant) {
        let (started_instant, started_at) = self.started.take().unwrap_or((now, Timestamp::now()));
        self.process = None;
        self.view.ready = false;
        self.kill_at = None;
        let termination = Termination {
            exit_code,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_owned(),
            started_at,
            finished_at: Timestamp::now(),
        };
        tracing::info!(container = %self.spec.name, exit_code, "container exited");
        let restart = match policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        };
        if !restart {
            self.view.state = State::Terminated(termination);
            return;
        }
        if now.duration_since(started_instant) >= STABLE_RUN {
            self.backoff = Duration::ZERO;
        }
        let wait = self.next_backoff();
        self.view.last = Some(termination);
        self.view.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {wait:?} restarting failed container {}",
                self.spec.name
            )),
        };
        self.next_start = Some(now + wait);
    }

    async fn probe(&mut self, pod_ip: Ipv4Addr, now: Instant) {
        let ip = IpAddr::V4(pod_ip);
        if let Some((check, tracker)) = &mut self.readiness
            && tracker.due(now)
        {
            let outcome = check
                .run(&self.spec, ip, &self.env, tracker.timeout())
                .await;
            if let Outcome::Failure(why) = &outcome {
                tracing::debug!(container = %self.spec.name, why, "readiness probe failed");
            }
            self.view.ready = tracker.record(&outcome, Instant::now());
        }
        if let Some((check, tracker)) = &mut self.liveness
            && tracker.due(now)
            && self.kill_at.is_none()
        {
            let outcome = check
                .run(&self.spec, ip, &self.env, tracker.timeout())
                .await;
            if !tracker.record(&outcome, Instant::now()) {
                tracing::info!(container = %self.spec.name, ?outcome, "liveness probe failed: restarting the container");
                if let Some(process) = &self.process {
                    process.signal(Signal::TERM);
                }
                self.kill_at = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }

    /// Runs the preStop hook, if any, within `budget`.
    pub async fn pre_stop(&self, pod_ip: Ipv4Addr, budget: Duration) {
        let hook = self
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(Check::of_hook);
        if let (Some(hook), true) = (hook, self.is_running()) {
            let outcome = hook
                .run(&self.spec, IpAddr::V4(pod_ip), &self.env, budget)
                .await;
            tracing::info!(container = %self.spec.name, ?outcome, "preStop hook ran");
        }
    }

    /// Sends `signal` to the process group, if a process runs.
    pub fn signal(&self, signal: Signal) {
        if let Some(process) = &self.process {
            process.signal(signal);
        }
    }

    /// Reaps the process if it ended; returns whether one still runs. The container then
    /// stays terminated: it is only called while the pod is going away.
    pub fn reap(&mut self) -> bool {
        if let Some(process) = &mut self.process
            && let Some(status) = process.try_exit()
        {
            self.exited(runtime::exit_code(status), "Never", Instant::now());
        }
        self.process.is_some()
    }
}

/// The pod's restartPolicy (Always when unset).
fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn probe(
    spec: Option<&k8s_openapi::api::core::v1::Probe>,
    now: Instant,
    initially: bool,
) -> Option<(Check, Tracker)> {
    let spec = spec?;
    Some((Check::of_probe(spec)?, Tracker::new(spec, now, initially)))
}

/// What every container gets before its own `env`: a PATH to run tools, a HOME, its hostname,
/// and the agent's kubeconfig (see [`Context::kubeconfig`]).
///
/// A container runtime sets HOME from the image's user; here the "image" is this machine's
/// file system, so it is the agent's own. That is where `cargo xtask dev`/`test` install
/// what the worker image carries under /opt (the speech venv and the models under
/// `~/.cache/voice-operator`), which the worker finds through HOME when the image's
/// `VOICE_SPEECH_PYTHON`/`VOICE_MODELS_DIR` are not set.
fn base_env(ctx: &Context, pod: &Pod) -> Vec<(String, String)> {
    let mut vars = vec![(
        "PATH".to_owned(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    )];
    if let Ok(home) = std::env::var("HOME") {
        vars.push(("HOME".to_owned(), home));
    }
    if let Some(name) = &pod.metadata.name {
        vars.push(("HOSTNAME".to_owned(), name.clone()));
    }
    if let Some(path) = &ctx.kubeconfig {
        vars.push(("KUBECONFIG".to_owned(), path.display().to_string()));
    }
    vars
}
