//! What the `livekit` provider's tests run against: livekit-server, built from its pinned Go
//! module (`tests/cluster/go/livekit`), and a venv with the official LiveKit Python SDK
//! (`tests/livekit/requirements.txt`) for the users that join its rooms. Both are cached under
//! `~/.cache/voice-operator` and made once, whichever test binary or `cargo xtask` asks first.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::go_tool::GoTool;

/// The livekit-server release the tests run: the newest the Go module proxy serves (later ones
/// replace modules with forks the proxy refuses).
pub const LIVEKIT_SERVER_VERSION: &str = "v1.13.5";

/// The pinned requirements of the LiveKit user (`tests/livekit/user.py`).
const REQUIREMENTS: &str = include_str!("../../livekit/requirements.txt");

/// The cached livekit-server binary, built first if needed.
pub fn livekit_server() -> Result<PathBuf, String> {
    GoTool {
        name: "livekit-server",
        module: crate::layout::workspace_root().join("tests/cluster/go/livekit"),
        keyed_by: &["go.mod", "go.sum"],
        tag: &format!("{LIVEKIT_SERVER_VERSION}-"),
        package: "github.com/livekit/livekit-server/cmd/server",
        ldflags: String::new(),
        takes: "3.6 CPU-minutes: 6 min on 2 busy cores",
    }
    .ensure()
}

/// `~/.cache/voice-operator/livekit-venv`.
pub fn livekit_venv_dir() -> Result<PathBuf, String> {
    crate::layout::cache_root()
        .parent()
        .map(|p| p.join("livekit-venv"))
        .ok_or_else(|| "the cache root has no parent".to_owned())
}

/// The python of the LiveKit venv, installed from PyPI first unless the same requirements are
/// already in (the venv keeps a copy of the ones it was made from). Processes asking at once
/// install it once: the others wait on a lock file beside the venv.
pub fn livekit_python() -> Result<PathBuf, String> {
    let venv = livekit_venv_dir()?;
    let python = venv.join("bin/python");
    let stamp = venv.join("voice-operator-requirements.txt");
    let current = || {
        python.is_file() && std::fs::read(&stamp).ok().as_deref() == Some(REQUIREMENTS.as_bytes())
    };
    if current() {
        return Ok(python);
    }
    let parent = venv.parent().ok_or("the venv has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let lock_path = venv.with_extension("lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if current() {
        return Ok(python);
    }
    eprintln!(
        "installing the LiveKit Python SDK (tests/livekit/requirements.txt) into {}…",
        venv.display()
    );
    let run = |command: &mut Command| -> Result<(), String> {
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {command:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{command:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let requirements = venv.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS)
        .map_err(|e| format!("writing {}: {e}", requirements.display()))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, REQUIREMENTS)
        .map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    Ok(python)
}
