//! The venv the `pipecat` provider's bots run in: Pipecat 1.14 with Silero VAD, its WebSocket
//! transport and uvicorn, pinned in examples/pipecat/requirements.txt, installed once into
//! `~/.cache/voice-operator/pipecat-venv` from PyPI. The node agent maps the image
//! `voice-operator/pipecat-bot` to this venv's python, and the tests start bots with it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::speech_models::run;

/// The pinned requirements, shared with a bot image.
const REQUIREMENTS: &str = include_str!("../../examples/pipecat/requirements.txt");

/// The venv, under the cache every machine of this kind keeps.
pub fn venv() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/voice-operator/pipecat-venv"))
}

/// Installs the venv unless the same requirements are already in.
pub fn ensure() -> anyhow::Result<()> {
    let venv = venv()?;
    let stamp = venv.join("voice-operator-requirements.txt");
    let python = venv.join("bin/python");
    if python.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(REQUIREMENTS) {
        return Ok(());
    }
    eprintln!(
        "==> installing Pipecat for the pipecat provider's bots into {}",
        venv.display()
    );
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let requirements = venv.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS)?;
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
    std::fs::write(&stamp, REQUIREMENTS)?;
    Ok(())
}
