//! One long-lived `voice-node-agent` for the local control plane, shared by every test binary.
//!
//! Like the control plane itself it outlives the test process that started it: a file lock
//! under `target/` serialises the check-and-start, a pid file records it, and the next test
//! binary reuses it while it runs the current binary against the current apiserver.
//! `cargo xtask cluster down` stops it with the control plane.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use crate::{cluster, kubectl};

/// The Node the shared agent registers.
pub const NODE_NAME: &str = "voice-local-node";

/// How long a fresh agent gets to register its Node as Ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

static AGENT: OnceLock<NodeAgentHandle> = OnceLock::new();

/// The shared node agent process.
#[derive(Debug, Clone)]
pub struct NodeAgentHandle {
    pid: i32,
    node_name: String,
    log: PathBuf,
    container_logs: PathBuf,
}

impl NodeAgentHandle {
    /// The agent's pid (also its process group).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The Node it plays.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The agent's own log (stderr, `tracing` lines).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The log of one container of a pod run by the agent.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.container_logs
            .join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// The last `lines` lines of the agent's log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// Where the agent's pid file, log and lock live.
pub fn node_agent_dir() -> PathBuf {
    voice_cluster::layout::target_dir().join("voice-node-agent")
}

/// The pid file: pid, apiserver URL and binary, one per line. `cargo xtask cluster down`
/// reads it to stop the agent.
pub fn node_agent_pid_file() -> PathBuf {
    node_agent_dir().join("agent.pid")
}

/// The node agent, started (or reused, also across test binaries) on first use, with its Node
/// Ready. Starts the local control plane first.
///
/// Panics when `target/debug/voice-node-agent` is missing (build it first) or the agent does
/// not register its Node in time (the panic shows its log).
pub fn node_agent() -> &'static NodeAgentHandle {
    AGENT.get_or_init(ensure)
}

fn ensure() -> NodeAgentHandle {
    let cluster = cluster();
    let target = voice_cluster::layout::target_dir();
    let binary = target.join("debug/voice-node-agent");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace --bins` (cargo xtask test does this)",
        binary.display()
    );
    let dir = node_agent_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let _lock = lock(&target.join("voice-node-agent.lock"));
    let log = dir.join("agent.log");
    let handle = |pid| NodeAgentHandle {
        pid,
        node_name: NODE_NAME.to_owned(),
        log: log.clone(),
        container_logs: dir.join("logs"),
    };

    let pid_file = node_agent_pid_file();
    if let Some((pid, server)) = read_pid_file(&pid_file, &binary) {
        let rebuilt = modified(&binary) > modified(&pid_file);
        if server == cluster.server() && !rebuilt {
            let agent = handle(pid);
            wait_until_ready(&agent);
            return agent;
        }
        // Another apiserver or an older build: its pods are failed on the next start anyway.
        stop(pid);
    }

    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let err = out.try_clone().expect("log handle duplicates");
    // Its own process group, so the test harness's exit and Ctrl-C leave it running. Never
    // waited for on purpose: it must outlive this process (should it die first, it stays a
    // zombie only until this test process exits).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(&binary)
        // The node is this machine's LAN address, so NodeIP workers are reachable as under
        // `cargo xtask dev --lan`, and tests prove that shape.
        .args(["--node-name", NODE_NAME, "--node-ip", "lan"])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    let record = format!("{pid}\n{}\n{}\n", cluster.server(), binary.display());
    std::fs::write(&pid_file, record)
        .unwrap_or_else(|e| panic!("writing {}: {e}", pid_file.display()));
    let agent = handle(pid);
    wait_until_ready(&agent);
    agent
}

/// Waits until the agent's Node reports Ready with a heartbeat from this agent.
fn wait_until_ready(agent: &NodeAgentHandle) {
    let deadline = Instant::now() + START_TIMEOUT;
    let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    loop {
        let out = kubectl(&["get", "node", &agent.node_name, "-o", jsonpath]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True" {
            return;
        }
        assert!(
            is_alive(agent.pid),
            "voice-node-agent (pid {}) exited; its log {}:\n{}",
            agent.pid,
            agent.log.display(),
            agent.log_tail(40)
        );
        assert!(
            Instant::now() < deadline,
            "node {} not Ready after {START_TIMEOUT:?}; agent log {}:\n{}",
            agent.node_name,
            agent.log.display(),
            agent.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The recorded pid and apiserver, when that pid still runs our binary.
fn read_pid_file(path: &Path, binary: &Path) -> Option<(i32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.parse().ok()?;
    let server = lines.next()?.to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    (argv0 == binary.as_os_str().as_encoded_bytes() && is_alive(pid)).then_some((pid, server))
}

fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(!matches!(state, 'Z' | 'X'))
        })
        .unwrap_or(false)
}

/// SIGTERM (the agent stops its pods' processes), SIGKILL if it is still there after 15 s.
fn stop(pid: i32) {
    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_alive(pid) {
        signal("-KILL");
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Exclusive lock for the check-and-start; released when the file closes.
fn lock(path: &Path) -> File {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    file
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
