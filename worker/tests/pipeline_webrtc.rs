//! The offline pipeline end to end over WebRTC, with a client nobody here wrote: aiortc
//! sends "please tell me about the weather" (spoken by espeak-ng, converted by sox) to a
//! session running pocketsphinx → echo agent → espeak-ng, receives the spoken reply and
//! the pipeline's events on its data channel; pocketsphinx's CLI must hear the reply.
//!
//! aiortc lives in `~/.cache/voice-operator/venv` (the interop test provisions it the same
//! way on first use).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Worker, token};
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest};

const AIORTC: &str = "aiortc==1.16.0";

/// Words pocketsphinx keeps getting right in espeak-ng's rendering of the phrase.
const ROBUST: &[&str] = &["please", "aware", "about", "weather", "tell"];

fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = PathBuf::from(home).join(".cache/voice-operator/venv");
    let python = venv.join("bin/python");
    let ready = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import aiortc, av"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&python) {
        if !python.exists() {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status();
            assert!(made.is_ok_and(|s| s.success()), "python3 -m venv failed");
        }
        let pip = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", AIORTC])
            .status();
        assert!(
            pip.is_ok_and(|s| s.success()),
            "pip install {AIORTC} failed"
        );
    }
    python
}

/// Runs `program args` with `input` on stdin; returns stdout.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let _ = writer.join();
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

#[tokio::test]
async fn aiortc_talks_to_the_offline_pipeline_and_hears_the_reply() {
    let python = venv_python();
    let wav = pipe(
        "espeak-ng",
        &["--stdout", "please tell me about the weather"],
        b"",
    );
    let phrase48 = pipe(
        "sox",
        &[
            "-t", "wav", "-", "-t", "raw", "-r", "48000", "-e", "signed", "-b", "16", "-c", "1",
            "-", "pad", "0.5", "0",
        ],
        &wav,
    );
    let dir = std::env::temp_dir();
    let input = dir.join(format!("pipeline-webrtc-in-{}.pcm", std::process::id()));
    let output = dir.join(format!("pipeline-webrtc-out-{}.pcm", std::process::id()));
    std::fs::write(&input, &phrase48).unwrap_or_else(|e| panic!("{e}"));

    let config = serde_json::json!({
        "pipeline": {"type": "STT_TTS", "stt": {"provider": "pocketsphinx"}, "tts": {"provider": "espeak"},
                     "vad": {"provider": "webrtc"},
                     "turnDetection": {"provider": "silence", "silenceTimeout": "600ms"}},
        "agent": {"type": "Echo"}
    });
    let worker = Worker::start_with_pipeline(1, Some(&config));
    let reply = worker
        .client()
        .await
        .reserve_session(ReserveSessionRequest {
            session_id: "team/rtc-talk".into(),
            uid: "uid-rtc-talk".into(),
            token_key_id: None,
            session_config_json: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner();
    assert_eq!(reply.result(), ReserveResult::Reserved);

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aiortc_talk.py");
    let base = format!("http://127.0.0.1:{}", worker.http_port);
    let token = token("team/rtc-talk", "uid-rtc-talk", 600);
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([base.as_str(), "team/rtc-talk", token.as_str()])
        .arg(&input)
        .arg("25")
        .arg(&output)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the aiortc client hung"))
        .unwrap_or_else(|e| panic!("aiortc client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aiortc client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}"));
    assert_eq!(report["state"], "connected", "{report}");
    let events = report["events"].as_array().cloned().unwrap_or_default();
    for e in &events {
        println!("data channel: {e}");
    }
    let transcript = |role: &str| {
        events
            .iter()
            .find(|e| e["type"] == "transcript" && e["role"] == role)
            .and_then(|e| e["text"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (user, agent) = (transcript("user"), transcript("agent"));
    assert!(
        user.split_whitespace().any(|w| ROBUST.contains(&w)),
        "STT heard {user:?}"
    );
    assert_eq!(agent, format!("You said: {user}."));

    let received = std::fs::read(&output).unwrap_or_default();
    let _ = std::fs::remove_file(&output);
    let _ = std::fs::remove_file(&input);
    // Only the loud part (the reply), with half a second of silence around it for pocketsphinx.
    let samples: Vec<i16> = received
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let loud: Vec<usize> = samples
        .chunks(960)
        .enumerate()
        .filter(|(_, f)| f.iter().any(|s| s.abs() > 1_000))
        .map(|(i, _)| i)
        .collect();
    let (first, last) = (
        loud.first().copied().unwrap_or(0),
        loud.last().copied().unwrap_or(0),
    );
    let reply: Vec<u8> = samples[first * 960..((last + 1) * 960).min(samples.len())]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    println!("reply audio: {:.2} s", reply.len() as f64 / 96_000.0);
    assert!(reply.len() > 96_000, "less than a second of reply audio");
    let reply16 = pipe(
        "sox",
        &[
            "-t", "raw", "-r", "48000", "-e", "signed", "-b", "16", "-c", "1", "-", "-t", "wav",
            "-r", "16000", "-", "pad", "0.5", "0.5",
        ],
        &reply,
    );
    let wav_path = dir.join(format!("pipeline-webrtc-reply-{}.wav", std::process::id()));
    std::fs::write(&wav_path, reply16).unwrap_or_else(|e| panic!("{e}"));
    let heard = Command::new("pocketsphinx_continuous")
        .arg("-infile")
        .arg(&wav_path)
        .args(["-logfn", "/dev/null"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let _ = std::fs::remove_file(&wav_path);
    println!("pocketsphinx hears the reply as {heard:?}");
    let user_words: Vec<&str> = user.split_whitespace().collect();
    assert!(
        heard
            .split_whitespace()
            .any(|w| w == "said" || (w.len() > 2 && user_words.contains(&w))),
        "the reply {heard:?} does not say {user:?}"
    );
}
