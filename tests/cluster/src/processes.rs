//! Spawning the control-plane processes so they outlive us, checking and stopping them.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::Error;
use crate::state::ProcessRecord;

/// How long processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts `binary` in its own process group (so Ctrl-C on the caller's terminal and the caller's
/// exit leave it running) with stdout and stderr appended to `log`.
pub fn spawn(
    name: &'static str,
    binary: &Path,
    args: &[String],
    log: &Path,
) -> Result<Child, Error> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("open log", log))?;
    let err = out.try_clone().map_err(Error::io("open log", log))?;
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            name,
            binary: binary.to_owned(),
            source,
        })
}

/// Picks `n` distinct free loopback ports; all are held until all are chosen so none repeats.
pub fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(Error::io("bind a free port on", "127.0.0.1"))?;
        *port = listener
            .local_addr()
            .map_err(Error::io("read the port of", "127.0.0.1"))?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Whether the recorded process is still running the recorded binary (not a zombie, not a
/// stranger that reused the pid).
pub fn is_alive(record: &ProcessRecord) -> bool {
    let proc = Path::new("/proc").join(record.pid.to_string());
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    argv0 == record.binary.as_os_str().as_encoded_bytes()
}

/// Stops the recorded processes in reverse start order, each with SIGTERM and, after a grace
/// period, SIGKILL. Processes already gone are fine.
///
/// One at a time on purpose: kube-apiserver stops in about a second while etcd is still there,
/// but spends 20 s retrying when etcd went first.
pub fn stop_all(records: &[ProcessRecord]) -> Result<(), Error> {
    for record in records.iter().rev().filter(|r| is_alive(r)) {
        signal(record, Signal::TERM)?;
        if !wait_for_exit(record, STOP_GRACE) {
            signal(record, Signal::KILL)?;
            wait_for_exit(record, Duration::from_secs(2));
        }
    }
    Ok(())
}

/// Whether the process was gone within `timeout`.
fn wait_for_exit(record: &ProcessRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(record) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn signal(record: &ProcessRecord, sig: Signal) -> Result<(), Error> {
    let Some(pid) = Pid::from_raw(record.pid) else {
        return Ok(());
    };
    match rustix::process::kill_process(pid, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(errno) => Err(Error::Stop {
            name: record.name.clone(),
            pid: record.pid,
            source: errno.into(),
        }),
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return format!("(no log at {})", log.display());
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let ports = free_ports::<4>().expect("loopback ports");
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "{ports:?}");
        assert!(ports.iter().all(|p| *p != 0));
    }

    #[test]
    fn log_tail_keeps_only_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("voice-cluster-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("x.log");
        std::fs::write(
            &log,
            (1..=50).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .unwrap();
        let tail = log_tail(&log, 3);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(tail, "line 48\nline 49\nline 50");
    }

    #[test]
    fn a_pid_running_another_binary_is_not_taken_for_ours() {
        let me = ProcessRecord {
            name: "test".into(),
            pid: std::process::id() as i32,
            binary: std::env::current_exe().unwrap(),
            log: "/dev/null".into(),
        };
        assert!(is_alive(&me));
        let stranger = ProcessRecord {
            binary: "/usr/bin/etcd-that-is-not-us".into(),
            ..me
        };
        assert!(!is_alive(&stranger));
    }
}
