//! An independent WebRTC client in a session: the worker's aiortc interop client
//! (`worker/tests/interop/aiortc_echo.py`), run from the venv the worker's interop test
//! provisions (`~/.cache/voice-operator/venv`), installed here too when missing.

use std::time::Duration;

use serde_json::Value;

/// Joins the session at `base` (`namespace/name` `session`) with `token`, sends a 1 kHz tone
/// for `tone_secs`, listens `hold_secs` more, hangs up; returns the client's JSON report and
/// the 48 kHz mono PCM it received.
pub async fn call(
    base: &str,
    session: &str,
    token: &str,
    tone_secs: f64,
    hold_secs: f64,
) -> (Value, Vec<i16>) {
    call_with(base, session, token, tone_secs, None, hold_secs).await
}

/// [`call`] sending `speech` (48 kHz mono PCM) instead of the tone.
pub async fn call_saying(
    base: &str,
    session: &str,
    token: &str,
    speech: &[i16],
    hold_secs: f64,
) -> (Value, Vec<i16>) {
    let seconds = speech.len() as f64 / 48_000.0;
    call_with(base, session, token, seconds, Some(speech), hold_secs).await
}

async fn call_with(
    base: &str,
    session: &str,
    token: &str,
    tone_secs: f64,
    speech: Option<&[i16]>,
    hold_secs: f64,
) -> (Value, Vec<i16>) {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = std::path::PathBuf::from(home).join(".cache/voice-operator/venv");
    let python = venv.join("bin/python");
    let has_aiortc = || {
        std::process::Command::new(&python)
            .args(["-c", "import aiortc, av"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_aiortc() {
        if !python.exists() {
            let ok = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "python3 -m venv failed: install python3-venv");
        }
        let ok = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "aiortc==1.16.0"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok && has_aiortc(), "pip install aiortc failed");
    }
    let script =
        voice_cluster::layout::workspace_root().join("worker/tests/interop/aiortc_echo.py");
    let out = std::env::temp_dir().join(format!(
        "aiortc-{}-{}.pcm",
        std::process::id(),
        session.replace('/', "-")
    ));
    let speech_file = speech.map(|speech| {
        let path = out.with_extension("speech.pcm");
        let bytes: Vec<u8> = speech.iter().flat_map(|s| s.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    });
    let mut command = tokio::process::Command::new(&python);
    if let Some(path) = &speech_file {
        command.env("AIORTC_SPEECH_PCM", path);
    }
    let run = command
        .arg(&script)
        .args([
            base,
            session,
            token,
            &tone_secs.to_string(),
            &out.to_string_lossy(),
            &hold_secs.to_string(),
        ])
        .output();
    let limit = Duration::from_secs_f64(60.0 + tone_secs + hold_secs);
    let output = tokio::time::timeout(limit, run)
        .await
        .expect("the aiortc client hung")
        .expect("running the aiortc client");
    let pcm = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    if let Some(path) = speech_file {
        let _ = std::fs::remove_file(path);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "aiortc client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}"));
    let samples = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    (report, samples)
}
