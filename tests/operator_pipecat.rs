//! End to end: the `pipecat` provider. A VoiceBackend runs a real Pipecat 1.14 bot
//! (`examples/pipecat/parrot_bot.py`, image `voice-operator/pipecat-bot`, which the node
//! agent maps to the Pipecat venv's python) beside each worker; an independent aiortc caller
//! talks through an admitted session and hears the bot's reply; the bot's turn and spoken
//! text reach the session's status; killing the bot ends the session `Failed` (`BotLost`)
//! and frees its slot.

mod operator_common;

use std::time::Duration;

use kube::Api;
use operator_common::*;
use serde_json::json;
use voice_crds::{PipelineState, SessionPhase, Speaker, VoiceSession};

const T: Duration = Duration::from_secs(120);

/// `text` in espeak-ng's voice at 48 kHz (linear interpolation from 16 kHz is enough for
/// the bot's VAD, and the reply is compared with what was sent, not judged by ear).
fn speech_48k(text: &str) -> Vec<i16> {
    let narrow: Vec<i16> = speak(text)
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut wide = Vec::with_capacity(narrow.len() * 3);
    for pair in narrow.windows(2) {
        let (a, b) = (i32::from(pair[0]), i32::from(pair[1]));
        for k in 0..3 {
            wide.push(i16::try_from(a + (b - a) * k / 3).unwrap_or(0));
        }
    }
    wide
}

fn rms(samples: &[i16]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64)
        .sqrt()
}

/// The bot container's pid, from the node agent's record on the pod.
fn bot_pid(pod: &k8s_openapi::api::core::v1::Pod) -> Option<i32> {
    let raw = pod
        .metadata
        .annotations
        .as_ref()?
        .get("node-agent.voicebackends.dev/processes")?;
    let json: serde_json::Value = serde_json::from_str(raw).ok()?;
    json["bot"]["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

/// The bot's "image": the script and the voice-operator-pipecat package copied beside the
/// Pipecat venv (under `~/.cache/voice-operator`, where the node agent's `pipecat-bot` python
/// lives), as a bot image would hold them. Never the checkout itself: a checkout under `/tmp`
/// would lie under the bot container's own `/tmp` mount, which hides it, as in a real pod.
fn bot_image_dir(name: &str) -> std::path::PathBuf {
    let root = voice_cluster::layout::workspace_root();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let dir = std::path::Path::new(&home)
        .join(".cache/voice-operator/pipecat-bots")
        .join(name);
    let package = dir.join("voice_operator_pipecat");
    std::fs::create_dir_all(&package).unwrap_or_else(|e| panic!("{}: {e}", package.display()));
    let copy = |from: std::path::PathBuf, to: std::path::PathBuf| {
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
    };
    copy(
        root.join("examples/pipecat/parrot_bot.py"),
        dir.join("parrot_bot.py"),
    );
    copy(
        root.join("sdk/pipecat/voice_operator_pipecat/__init__.py"),
        package.join("__init__.py"),
    );
    dir
}

#[tokio::test]
async fn a_pipecat_bot_answers_an_aiortc_caller_and_its_death_fails_the_session() {
    let stack = OperatorStack::start_with(
        "pipecat",
        json!({
            "capabilities": {"s2sSupport": true},
            "worker": {"allowBot": true},
            "stages": {"s2s": ["pipecat"]},
        }),
    )
    .await;
    let ns = &stack.ns;
    let image = bot_image_dir(ns.name());
    stack.apply_backend(
        "parrot",
        json!({
            "replicas": 1,
            "pipeline": {"type": "S2S", "stt": null, "tts": null, "s2s": {"provider": "pipecat"}},
            "agent": null,
            "workers": {"bot": {
                "image": "voice-operator/pipecat-bot:dev",
                "args": [image.join("parrot_bot.py").to_string_lossy()],
                "env": [{"name": "PYTHONPATH", "value": image.to_string_lossy()}],
            }},
        }),
    );
    wait_healthy(ns, "parrot", 1, T).await;
    let pods = live_pods(ns, "parrot").await;
    let pod = pods.first().expect("a worker pod");
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        containers,
        ["worker", "bot"],
        "the bot runs beside the worker"
    );

    let api: Api<VoiceSession> = ns.api();
    let (endpoint, token) = admit_one(&api, "call", "parrot", json!({"transport": "webrtc"})).await;
    let (base, _) = endpoint
        .url
        .split_once("/v1/sessions/")
        .expect("a WHIP offer URL");
    let speech = speech_48k("What is the weather like in Paris tomorrow morning");
    let spoken_s = speech.len() as f64 / 48_000.0;
    let session_path = format!("{}/call", ns.name());
    let (report, reply) =
        aiortc::call_saying(base, &session_path, &token, &speech, spoken_s + 6.0).await;
    assert_eq!(report["state"], "connected", "{report}");

    // The bot plays the user's words back: loud, and about as long as they were.
    let voiced: Vec<i16> = reply
        .iter()
        .copied()
        .skip_while(|s| s.abs() < 1_000)
        .collect();
    let loud: Vec<i16> = voiced
        .iter()
        .copied()
        .rev()
        .skip_while(|s| s.abs() < 1_000)
        .collect();
    let reply_s = loud.len() as f64 / 48_000.0;
    assert!(
        rms(&loud) > 800.0 && (spoken_s * 0.6..=spoken_s + 1.5).contains(&reply_s),
        "reply of {reply_s:.2} s (rms {:.0}) for {spoken_s:.2} s of speech; events {}",
        rms(&loud),
        report["events"]
    );
    let said = report["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "transcript" && e["role"] == "agent")
        .unwrap_or_else(|| panic!("no agent transcript on the data channel: {report}"));
    assert!(
        said["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("You spoke for "),
        "{said}"
    );

    // The caller hung up: the session completed, with the bot's words in its transcript.
    let ended = wait_phase(&api, "call", SessionPhase::Completed).await;
    let status = ended.status.expect("status");
    let transcript = status.context.map(|c| c.transcript).unwrap_or_default();
    assert!(
        transcript
            .iter()
            .any(|e| e.speaker == Speaker::Agent && e.text.starts_with("You spoke for ")),
        "the bot's words are in status: {transcript:?}"
    );

    // A second call; the bot dies under it: the session fails with BotLost.
    let (_, token) = admit_one(&api, "second", "parrot", json!({"transport": "webrtc"})).await;
    let session_path = format!("{}/second", ns.name());
    let base = base.to_owned();
    let caller = tokio::spawn(async move {
        let heard = aiortc::call_saying(&base, &session_path, &token, &[0; 48_000], 20.0).await;
        println!("second caller: {}", heard.0);
        heard
    });
    wait_for(T, "the caller connected and the bot listening", || async {
        assert!(
            !caller.is_finished(),
            "the second caller ended before the bot listened"
        );
        let s = api.get("second").await.map_err(|e| e.to_string())?;
        match s.status.map(|s| s.pipeline_state) {
            Some(PipelineState::Listening) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let pid = bot_pid(pod)
        .unwrap_or_else(|| panic!("no bot pid on the pod: {:?}", pod.metadata.annotations));
    let pid = rustix::process::Pid::from_raw(pid).expect("a positive pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("killing the bot");
    let failed = wait_phase(&api, "second", SessionPhase::Failed).await;
    let status = failed.status.expect("status");
    assert_eq!(status.end_reason.as_deref(), Some("BotLost"), "{status:?}");
    caller.abort();
    wait_for(T, "the slot freed", || async {
        match backend_status(ns, "parrot").await?.active_sessions {
            0 => Ok(()),
            active => Err(format!("active {active}")),
        }
    })
    .await;
    // The worker without its bot reports NOT_SERVING: the operator replaces the pod as it
    // does a failing worker, and the new one (bot and all) takes calls again.
    let why = wait_event(ns, "parrot", "WorkerReplaced", T).await;
    assert!(
        why.contains(pod.metadata.name.as_deref().unwrap_or("?")),
        "{why}"
    );
    wait_healthy(ns, "parrot", 1, T).await;
    admit_one(&api, "third", "parrot", json!({"transport": "webrtc"})).await;
    let third = api.get("third").await.expect("the third session");
    let worker = third
        .status
        .and_then(|s| s.worker)
        .map(|w| w.pod)
        .unwrap_or_default();
    assert_ne!(
        Some(worker.as_str()),
        pod.metadata.name.as_deref(),
        "admitted onto the new pod"
    );
    let _ = std::fs::remove_dir_all(&image);
}
