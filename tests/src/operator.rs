//! The real `voice-operator` binary as a child process, scoped to one test namespace.
//!
//! Each test runs its own operator with `--watch-namespace <ns>`, `--lease-namespace <ns>`
//! and `--provider-selector voice-tests/operator=<ns>`, so operators of tests running in
//! parallel never touch each other's backends, pods, leases or (cluster-scoped) providers.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::cluster;

/// Label a test puts on its VoiceProviders; its operator manages only those with the value
/// of its namespace.
pub const PROVIDER_LABEL: &str = "voice-tests/operator";

/// How long [`OperatorProcess::terminate`] waits: the operator's own shutdown limit
/// (`--shutdown-timeout-seconds`, 20 by default) with room to spare.
pub const TERMINATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// A running `voice-operator`, killed when dropped.
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
    metrics_port: u16,
}

impl OperatorProcess {
    /// Starts an operator for namespace `ns` (see the module doc). `instance` tells apart
    /// several operators of one test (leader election) in their log file names.
    pub fn start(ns: &str, instance: &str) -> OperatorProcess {
        Self::start_with(ns, instance, &[])
    }

    /// [`OperatorProcess::start`] with extra command-line flags (e.g. a short lease).
    pub fn start_with(ns: &str, instance: &str, extra: &[&str]) -> OperatorProcess {
        Self::start_with_env(ns, instance, extra, &[])
    }

    /// [`OperatorProcess::start_with`] with extra environment variables (e.g. an OTLP endpoint).
    pub fn start_with_env(
        ns: &str,
        instance: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> OperatorProcess {
        let target = voice_cluster::layout::target_dir();
        // Benchmarks point this at a release build.
        let binary = std::env::var_os("VOICE_OPERATOR_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| target.join("debug/voice-operator"));
        assert!(
            binary.exists(),
            "{} is missing: run `cargo build --workspace --bins` (cargo xtask test does this)",
            binary.display()
        );
        let dir = target.join("voice-operator-tests");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let log = dir.join(format!("{ns}-{instance}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("log handle duplicates");
        let metrics_port = free_port();
        let child = Command::new(&binary)
            .args([
                "--watch-namespace",
                ns,
                "--lease-namespace",
                ns,
                "--provider-selector",
                &format!("{PROVIDER_LABEL}={ns}"),
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .args(extra)
            .envs(env.iter().copied())
            .env("KUBECONFIG", cluster().kubeconfig())
            .env("POD_NAME", format!("{ns}-{instance}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| "info,voice_operator=debug".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        OperatorProcess {
            child,
            log,
            metrics_port,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Port of its HTTP server (`/metrics`, `/healthz`, `/readyz`) on 127.0.0.1.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Its log file.
    pub fn log(&self) -> &PathBuf {
        &self.log
    }

    /// The last `lines` lines of its log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status, or `None`
    /// when it still runs. Blocks the thread: in an async test use [`Self::try_exit`].
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would: no lease release, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0. A process still running
    /// after [`TERMINATE_TIMEOUT`] gets its threads' stacks written to its log (by gdb) and
    /// is killed: `false`, and the log says where it hung.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        match self.wait_exit(TERMINATE_TIMEOUT) {
            Some(status) => status.success(),
            None => {
                self.append_stacks_to_log();
                self.kill();
                false
            }
        }
    }

    /// Appends every thread's backtrace to the log, for a process that hangs.
    fn append_stacks_to_log(&self) {
        let stacks = Command::new("gdb")
            .args(["-p", &self.child.id().to_string(), "-batch", "-nx"])
            .args(["-ex", "thread apply all bt 30"])
            .stdin(Stdio::null())
            .output();
        let text = match stacks {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("gdb could not run: {e}"),
        };
        let note = format!(
            "\n--- still running {TERMINATE_TIMEOUT:?} after SIGTERM; its threads:\n{text}"
        );
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}
