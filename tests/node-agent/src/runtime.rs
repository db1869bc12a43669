//! Containers as local processes: each in its own process group with its log in a file, so a
//! signal reaches everything the container started and nothing else.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use rustix::process::{Pid, Signal};

use crate::Error;

/// A running container process.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    pid: i32,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The mapped binary (argv\[0\]).
    pub binary: &'a Path,
    /// Arguments after argv\[0\].
    pub args: &'a [String],
    /// The complete environment; the agent's own environment is not inherited, as a container
    /// does not see its node's.
    pub env: &'a [(String, String)],
    /// File that receives stdout and stderr (appended, so restarts keep earlier output).
    pub log: &'a Path,
}

impl Process {
    /// Starts the process in a new process group.
    pub fn spawn(launch: &Launch<'_>) -> Result<Process, Error> {
        let out = open_log(launch.log)?;
        let err = out.try_clone().map_err(|source| Error::Io {
            action: "duplicate the log handle of",
            path: launch.log.to_owned(),
            source,
        })?;
        let child = tokio::process::Command::new(launch.binary)
            .args(launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: launch.binary.to_owned(),
                source,
            })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or_default();
        Ok(Process { child, pid })
    }

    /// The pid, which is also the process group id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status if the process has ended (reaping it), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        // An error here means the child was already reaped; report it as killed.
        match self.child.try_wait() {
            Ok(status) => status,
            Err(_) => Some(ExitStatus::from_raw(9)),
        }
    }

    /// Sends `signal` to the process group.
    pub fn signal(&self, signal: Signal) {
        signal_group(self.pid, signal);
    }
}

/// Sends `signal` to process group `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Whether a process with `pid` runs (not a zombie) and leads its own group: the marks of a
/// container process this agent started in an earlier run.
pub fn is_group_leader_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
    !matches!(state, Some("Z" | "X") | None) && pgrp == Some(pid)
}

/// When process `pid` started, in clock ticks after boot (`/proc/<pid>/stat` field 22):
/// with the pid, it names one process, since a recycled pid starts later.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the command name start at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` runs a binary that `images` maps some image to.
pub fn runs_one_of(pid: i32, images: &crate::images::ImageMap) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|exe| images.is_mapped_binary(&exe))
        .unwrap_or(false)
}

/// The container exit code kubelet reports: the process's code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// `<dir>/<ns>_<pod>_<container>.log`.
pub fn log_path(dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    dir.join(format!("{namespace}_{pod}_{container}.log"))
}

fn open_log(path: &Path) -> Result<File, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "create the log directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::Io {
            action: "open the log",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_kubelet() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[tokio::test]
    async fn processes_get_their_own_group_env_and_log() {
        let dir = std::env::temp_dir().join(format!("voice-node-agent-rt-{}", std::process::id()));
        let log = log_path(&dir, "ns", "p", "c");
        let args = vec![
            "-c".to_owned(),
            "echo hello $GREETING; exec sleep 30".to_owned(),
        ];
        let env = vec![("GREETING".to_owned(), "world".to_owned())];
        let mut p = Process::spawn(&Launch {
            binary: Path::new("/bin/sh"),
            args: &args,
            env: &env,
            log: &log,
        })
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("hello world")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no output in {}",
                log.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(is_group_leader_alive(p.pid()));
        let start = start_time(p.pid()).expect("a live process has a start time");
        assert_eq!(start_time(p.pid()), Some(start), "stable while it runs");
        assert_ne!(start_time(std::process::id() as i32), None);
        p.signal(Signal::TERM);
        let status = p.child.wait().await.unwrap();
        assert_eq!(exit_code(status), 143);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
