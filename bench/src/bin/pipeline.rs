//! Benchmark: the voice pipeline's own overhead per turn, side by side with Pipecat, and
//! sessions per core with the offline pipeline while every session talks.
//!
//! **Overhead.** Loopback servers speak the OpenAI wire formats and answer at once
//! (transcription JSON, a one-sentence chat-completions SSE stream, 300 ms of speech as
//! PCM). The same pipeline shape runs against them twice: voice-operator's STT_TTS
//! pipeline (the worker's own code, in process) and Pipecat (PyPI `pipecat-ai`, in its
//! own process: Silero VAD → OpenAI STT → context aggregator → OpenAI LLM → OpenAI TTS).
//! Both hear the same WAV turn after turn as 20 ms frames in real time and end the turn
//! after 300 ms of silence. Per turn: end of speech → first reply audio out of TTS, minus
//! the 300 ms, measured from the end of speech in the audio (one clock for both) and from
//! each pipeline's own VAD; p50/p99 of each and the ratio. Both are taken before output
//! pacing (Pipecat's output transport, our 20 ms packet grid, whose wait is printed apart).
//!
//! **Sessions per core.** The release worker runs pinned to one core with N sessions of the
//! offline pipeline (pocketsphinx → echo agent → espeak-ng); N WebSocket clients each say
//! the phrase, wait for the spoken reply, and say it again. Prints the CPU of the worker and
//! its engine subprocesses per session, turns answered and the reply time, per N.
//!
//! `cargo build --release -p voice-worker && cargo run --release -p voice-bench --bin pipeline`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::post;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use voice_bench::worker::PinnedWorker;
use voice_bench::{cpu_seconds, tree_cpu_seconds, tree_rss_mib};
use voice_worker::media::{FRAME_SAMPLES, Frame};
use voice_worker::pipeline::{EventSink, PipelineMetrics, PipelineSpec};

#[derive(Parser)]
struct Args {
    /// Turns per side in the overhead comparison.
    #[arg(long, default_value_t = 20)]
    turns: usize,
    /// End of turn after this much silence, on both sides.
    #[arg(long, default_value_t = 300)]
    silence_ms: u64,
    /// Skip the Pipecat side (voice-operator's figures only).
    #[arg(long)]
    no_pipecat: bool,
    /// Python with `pipecat-ai` (default: a venv under ~/.cache/voice-operator, made on first use).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Session counts for the offline sessions-per-core sweep (`0`: skip it).
    #[arg(long, value_delimiter = ',', default_value = "2,4,6,8")]
    sessions: Vec<usize>,
    /// Seconds measured at each session count, once every client is talking.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Worker binary (default: target/release/voice-worker).
    #[arg(long)]
    worker: Option<PathBuf>,
}

/// The Pipecat release this comparison was written against.
const PIPECAT: &str = "pipecat-ai[openai,silero]==1.14.0";
/// Mean absolute sample value of a 20 ms frame that carries speech (or reply audio).
const LOUD: f64 = 500.0;
/// Silence after each phrase in the overhead run: long enough for the reply to play out.
const GAP_MS: u64 = 1_500;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../worker/tests/fixtures/weather-16k.wav")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wav = std::fs::read(fixture()).context("reading the fixture WAV")?;
    let speech16 = voice_worker::pipeline::audio::parse_wav(&wav)
        .map_err(|e| anyhow::anyhow!("fixture: {e}"))?;
    let base = format!("http://{}/v1", serve_providers().await?);
    println!(
        "== pipeline overhead per turn: end of speech + {} ms silence → first reply audio, instant loopback providers, {} turns ==",
        args.silence_ms, args.turns
    );
    let cpu0 = cpu_seconds(std::process::id());
    let wall = Instant::now();
    let ours = our_overheads(&base, &speech16, &args).await?;
    let our_cpu = cpu_seconds(std::process::id())
        .zip(cpu0)
        .map(|(b, a)| (b - a) / wall.elapsed().as_secs_f64());
    let theirs = if args.no_pipecat {
        None
    } else {
        let python = match &args.python {
            Some(p) => p.clone(),
            None => pipecat_python()?,
        };
        Some(pipecat_overheads(&python, &base, &args).await?)
    };
    let name = |o: &Overheads| o.name.clone();
    println!(
        "first reply audio out of TTS, before output pacing on both sides, from the end of speech in the audio (last 20 ms frame with mean |x| > {LOUD}), one clock for both:"
    );
    let rows: Vec<_> = [Some(&ours), theirs.as_ref()]
        .into_iter()
        .flatten()
        .map(|o| summary(&name(o), &o.from_audio, args.turns))
        .collect();
    ratio(&rows);
    println!(
        "the same, from each pipeline's own VAD end of speech (its own work once the turn has ended):"
    );
    let rows: Vec<_> = [Some(&ours), theirs.as_ref()]
        .into_iter()
        .flatten()
        .map(|o| summary(&name(o), &o.from_vad, args.turns))
        .collect();
    ratio(&rows);
    if let (Some(ours), Some(theirs)) = (our_cpu, &theirs) {
        println!(
            "CPU while the conversation runs: voice-operator {:.1}% of a core (with the loopback servers), {} {:.1}% (without them)",
            ours * 100.0,
            theirs.name,
            theirs.cpu * 100.0
        );
    }
    for &n in args.sessions.iter().filter(|n| **n > 0) {
        offline_sessions(&args, n).await?;
    }
    Ok(())
}

/// One pipeline's overheads per turn (ms) after end of speech + the silence timeout
/// (negative when a VAD judged speech over before the audio's last loud frame).
struct Overheads {
    name: String,
    /// From the end of speech in the audio.
    from_audio: Vec<f64>,
    /// From the end of speech as the pipeline's own VAD judged it.
    from_vad: Vec<f64>,
    /// CPU while talking, as a fraction of a core (Pipecat's process only).
    cpu: f64,
}

/// Prints the ratio of the second row to the first, if both exist.
fn ratio(rows: &[Option<(f64, f64)>]) {
    if let [Some((o50, o99)), Some((t50, t99))] = rows {
        println!(
            "{:>22}  ratio pipecat / voice-operator: p50 {:.1}×, p99 {:.1}×",
            "",
            t50 / o50.max(0.1),
            t99 / o99.max(0.1)
        );
    }
}

/// Prints p50/p99 of the overheads (ms) and returns them.
fn summary(name: &str, overheads: &[f64], turns: usize) -> Option<(f64, f64)> {
    let mut v = overheads.to_vec();
    v.sort_by(f64::total_cmp);
    let p = |q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
    };
    let (Some(p50), Some(p99)) = (p(0.5), p(0.99)) else {
        println!("{name:>22}: no turn answered of {turns}");
        return None;
    };
    println!(
        "{name:>22}: p50 {p50:6.1} ms, p99 {p99:6.1} ms, min {:.1} ms ({} of {turns} turns answered)",
        v[0],
        v.len()
    );
    Some((p50, p99))
}

/// The loopback OpenAI-compatible servers both pipelines talk to; answers are immediate.
async fn serve_providers() -> anyhow::Result<SocketAddr> {
    // Every handler reads the whole request first: answering before the upload is done
    // makes clients (Python's httpx among them) see a reset connection.
    async fn transcription(_upload: Bytes) -> Response {
        json_response(r#"{"text":"what is the weather"}"#)
    }
    async fn chat(_request: Bytes) -> Response {
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            let c = serde_json::json!({"id": "bench", "object": "chat.completion.chunk",
                "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            format!("data: {c}\n\n")
        };
        let body = chunk(
            serde_json::json!({"role": "assistant", "content": "Fine."}),
            serde_json::Value::Null,
        ) + &chunk(serde_json::json!({}), "stop".into())
            + "data: [DONE]\n\n";
        let stream = futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(body)) });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap_or_default()
    }
    async fn speech(_request: Bytes) -> Response {
        // 300 ms of a 440 Hz tone, 24 kHz PCM16 (OpenAI's `pcm` format).
        let pcm: Vec<u8> = (0..7_200)
            .flat_map(|i| {
                let t = f64::from(i) / 24_000.0;
                ((4_000.0 * (std::f64::consts::TAU * 440.0 * t).sin()) as i16).to_le_bytes()
            })
            .collect();
        Response::builder()
            .header("content-type", "audio/pcm")
            .body(Body::from(pcm))
            .unwrap_or_default()
    }
    let router = Router::new()
        .route("/v1/audio/transcriptions", post(transcription))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/audio/speech", post(speech));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

fn json_response(body: &'static str) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn loud(samples: &[i16]) -> bool {
    let sum: f64 = samples.iter().map(|s| f64::from(*s).abs()).sum();
    sum / samples.len().max(1) as f64 > LOUD
}

/// voice-operator's STT_TTS pipeline, driven in process the way the worker drives it.
async fn our_overheads(
    base: &str,
    speech16: &voice_worker::pipeline::audio::Pcm,
    args: &Args,
) -> anyhow::Result<Overheads> {
    struct NoSink;
    impl EventSink for NoSink {
        fn state(&self, _: voice_crds::PipelineState, _: &str) {}
        fn transcript(&self, _: &str, _: &str, _: &str) {}
    }
    let spec = serde_json::json!({
        "pipeline": {"type": "STT_TTS",
            "stt": {"provider": "openai", "endpoint": base},
            "tts": {"provider": "openai", "endpoint": base},
            "vad": {"provider": "webrtc"},
            "turnDetection": {"provider": "silence", "silenceTimeout": format!("{}ms", args.silence_ms)}},
        "agent": {"type": "Llm", "llm": {"endpoint": base, "model": "m"}, "streamingMode": true}
    });
    let spec = PipelineSpec::parse(&spec.to_string()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut p = voice_worker::pipeline::build(
        &spec,
        "bench/overhead",
        Box::new(NoSink),
        PipelineMetrics::unregistered(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    p.connected();
    let speech48 = voice_worker::pipeline::audio::resample(speech16, 48_000);
    let frames: Vec<&[i16]> = speech48.chunks_exact(FRAME_SAMPLES).collect();
    let last_loud = frames
        .iter()
        .rposition(|f| loud(f))
        .context("the fixture has no speech")?;
    let gap_frames = (GAP_MS / 20) as usize;
    let silence = Duration::from_millis(args.silence_ms);
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut overheads = Vec::new();
    let mut stages = Vec::new();
    let mut end_of_speech: Option<Instant> = None;
    for _ in 0..args.turns {
        for i in 0..frames.len() + gap_frames {
            ticks.tick().await;
            let mut frame: Frame = [0; FRAME_SAMPLES];
            if let Some(f) = frames.get(i) {
                frame.copy_from_slice(f);
            }
            p.push(&frame);
            if i == last_loud {
                end_of_speech = Some(Instant::now());
            }
            let mut out: Frame = [0; FRAME_SAMPLES];
            if p.pull(&mut out)
                && let Some(end) = end_of_speech.take()
            {
                overheads.push((end.elapsed().saturating_sub(silence)).as_secs_f64() * 1e3);
            }
            for event in std::iter::from_fn(|| p.next_event()) {
                let v: serde_json::Value = serde_json::from_str(&event).unwrap_or_default();
                if v["type"] == "latency" {
                    stages.push(v);
                }
            }
        }
    }
    // Where the time went, from the pipeline's own per-turn figures.
    let mean = |key: &str| {
        let values: Vec<f64> = stages.iter().filter_map(|v| v[key].as_f64()).collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    println!(
        "{:>22}  its own stage means: turn detect {:.1} ms (VAD end → turn end), STT {:.1}, agent first token {:.1}, TTS first audio {:.1}, then {:.1} to the next 20 ms packet slot; total {:.1} ms",
        "",
        mean("turn_detect_ms"),
        mean("stt_ms"),
        mean("agent_first_token_ms"),
        mean("tts_first_audio_ms"),
        mean("first_packet_ms"),
        mean("total_ms")
    );
    if stages.len() != overheads.len() {
        bail!(
            "{} turns answered but {} latency events",
            overheads.len(),
            stages.len()
        );
    }
    // Measured where Pipecat's side is measured: the first TTS audio, before the pacer
    // that puts it on the 20 ms packet grid.
    let grid = |v: &serde_json::Value| v["first_packet_ms"].as_f64().unwrap_or(0.0);
    let silence_ms = args.silence_ms as f64;
    Ok(Overheads {
        name: "voice-operator".into(),
        from_audio: overheads
            .iter()
            .zip(&stages)
            .map(|(o, v)| o - grid(v))
            .collect(),
        from_vad: stages
            .iter()
            .map(|v| v["total_ms"].as_f64().unwrap_or(0.0) - grid(v) - silence_ms)
            .collect(),
        cpu: 0.0,
    })
}

/// The venv's python with Pipecat, created and provisioned idempotently.
fn pipecat_python() -> anyhow::Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = PathBuf::from(home).join(".cache/voice-operator/pipecat-venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import pipecat.services.openai.llm, pipecat.audio.vad.silero",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !status.success() {
            bail!("python3 -m venv failed: install python3-venv");
        }
    }
    eprintln!("installing {PIPECAT} into {}", venv.display());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", PIPECAT])
        .status()?;
    if !status.success() || !ready(&python) {
        bail!("pip install {PIPECAT} failed (PyPI unreachable?)");
    }
    Ok(python)
}

/// Runs `bench/pipecat/turns.py` against the same servers; returns Pipecat's overheads and
/// its CPU while talking.
async fn pipecat_overheads(python: &Path, base: &str, args: &Args) -> anyhow::Result<Overheads> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipecat/turns.py");
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .arg(base)
        .arg(fixture())
        .arg(args.turns.to_string())
        .arg(args.silence_ms.to_string())
        .arg(GAP_MS.to_string())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("running the Pipecat script")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        bail!(
            "the Pipecat script printed no result ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    // Pipecat's warnings and errors, for a look when turns go unanswered.
    let log = voice_cluster::layout::target_dir().join("voice-bench/pipecat.log");
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&log, &output.stderr)?;
    println!("(Pipecat's log: {})", log.display());
    let v: serde_json::Value = serde_json::from_str(line)?;
    let silence = args.silence_ms as f64;
    let less_silence = |key: &str| -> Vec<f64> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_f64)
                    .map(|ms| ms - silence)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Overheads {
        name: format!("pipecat {}", v["version"].as_str().unwrap_or("?")),
        from_audio: less_silence("reply_ms"),
        from_vad: less_silence("vad_reply_ms"),
        cpu: v["cpu_seconds"].as_f64().unwrap_or(0.0) / v["wall_seconds"].as_f64().unwrap_or(1.0),
    })
}

/// The offline pipeline a fresh install runs: pocketsphinx, the echo agent, espeak-ng.
const OFFLINE: &str = r#"{"pipeline":{"type":"STT_TTS","stt":{"provider":"pocketsphinx"},"tts":{"provider":"espeak"},"turnDetection":{"provider":"silence","silenceTimeout":"300ms"}},"agent":{"type":"Echo"}}"#;
/// Silence after each phrase in the offline run: the spoken echo plays in it.
const OFFLINE_GAP_MS: u64 = 4_000;

/// What one talking WebSocket client saw.
#[derive(Default)]
struct Talk {
    turns: usize,
    replies: Vec<Duration>,
    error: Option<String>,
}

async fn offline_sessions(args: &Args, n: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let core = cores - 1;
    let worker = PinnedWorker::start(args.worker.clone(), core, n, OFFLINE)?;
    let (pid, http_port) = (worker.pid, worker.http_port);
    let tokens = worker.reserve("offline", n).await?;

    let wav = std::fs::read(fixture())?;
    let phrase = voice_worker::pipeline::audio::parse_wav(&wav)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .samples;
    let cycle = Duration::from_millis(phrase.len() as u64 / 16 + OFFLINE_GAP_MS);
    let warmup = cycle + Duration::from_secs(2);
    let window = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut clients = Vec::new();
    for (i, (id, token)) in tokens.into_iter().enumerate() {
        let url =
            format!("ws://127.0.0.1:{http_port}/v1/sessions/{id}/ws?token={token}&rate=16000");
        // Spread the phrases over the cycle, as real callers are.
        let offset = cycle.mul_f64(i as f64 / n as f64);
        let until = start + warmup + window;
        let phrase = phrase.clone();
        clients.push(tokio::spawn(async move {
            talk(&url, &phrase, offset, start + warmup, until).await
        }));
    }
    tokio::time::sleep_until((start + warmup).into()).await;
    let cpu0 = tree_cpu_seconds(pid);
    let wall = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = tree_cpu_seconds(pid)
        .zip(cpu0)
        .map(|(b, a)| (b - a) / wall.elapsed().as_secs_f64());
    let rss = tree_rss_mib(pid).unwrap_or(0.0);
    let mut talks = Vec::new();
    for c in clients {
        talks.push(c.await.unwrap_or_else(|e| Talk {
            error: Some(e.to_string()),
            ..Default::default()
        }));
    }
    drop(worker);
    let said: usize = talks.iter().map(|t| t.turns).sum();
    let mut replies: Vec<Duration> = talks.iter().flat_map(|t| t.replies.clone()).collect();
    replies.sort();
    let p = |q: f64| {
        replies
            .get(((replies.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or("-".to_owned(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
    };
    let errors: Vec<&str> = talks.iter().filter_map(|t| t.error.as_deref()).collect();
    println!(
        "== offline pipeline (pocketsphinx → echo agent → espeak-ng), {n} sessions all talking, worker pinned to core {core}, {}s ==",
        args.seconds
    );
    println!(
        "turns: {} of {said} answered; reply (end of speech → first reply audio, incl. 300 ms silence): p50 {} ms, p99 {} ms; errors: {:?}",
        replies.len(),
        p(0.5),
        p(0.99),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    if let Some(cpu) = cpu {
        println!(
            "worker + engine subprocesses: {:.1}% of a core = {:.1}% per session → about {:.1} sessions per core; RSS {rss:.0} MiB ({:.1} MiB per session)",
            cpu * 100.0,
            cpu * 100.0 / n as f64,
            n as f64 / cpu.max(1e-9),
            rss / n as f64
        );
    }
    Ok(())
}

/// One caller: says the phrase, stays quiet while the reply plays, says it again, sending
/// 20 ms of 16 kHz PCM every 20 ms; counts turns and times the replies inside the window.
async fn talk(url: &str, phrase: &[i16], offset: Duration, from: Instant, until: Instant) -> Talk {
    const FRAME16: usize = 320;
    let mut talk = Talk::default();
    let (ws, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(c) => c,
        Err(e) => {
            talk.error = Some(format!("connect: {e}"));
            return talk;
        }
    };
    let (mut tx, mut rx) = ws.split();
    // When each loud reply message arrived, on its own task so arrival times are exact.
    let reader = tokio::spawn(async move {
        let mut loud_at = Vec::new();
        while let Some(Ok(message)) = rx.next().await {
            if let Message::Binary(data) = message {
                let samples: Vec<i16> = data
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                if loud(&samples) {
                    loud_at.push(Instant::now());
                }
            }
        }
        loud_at
    });
    let frames: Vec<&[i16]> = phrase.chunks_exact(FRAME16).collect();
    let last_loud = frames.iter().rposition(|f| loud(f)).unwrap_or(0);
    let cycle = frames.len() + (OFFLINE_GAP_MS / 20) as usize;
    let skip = (offset.as_millis() / 20) as usize;
    let silence = vec![0i16; FRAME16];
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut ends = Vec::new();
    let mut tick = 0usize;
    while Instant::now() < until {
        ticks.tick().await;
        // Quiet until this caller's offset, then the phrase and the gap, over and over.
        let at = tick.checked_sub(skip).map(|t| t % cycle);
        tick += 1;
        let frame = at.and_then(|a| frames.get(a)).copied().unwrap_or(&silence);
        let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
        if let Err(e) = tx.send(Message::Binary(bytes.into())).await {
            talk.error = Some(format!("send: {e}"));
            break;
        }
        if at == Some(last_loud) {
            ends.push(Instant::now());
        }
    }
    let _ = tx.close().await;
    let loud_at = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    // A turn inside the window is answered by the first loud audio before the next turn.
    for (i, end) in ends.iter().enumerate() {
        if *end < from || *end + Duration::from_millis(OFFLINE_GAP_MS) > until {
            continue;
        }
        talk.turns += 1;
        let next = ends.get(i + 1).copied().unwrap_or(until);
        if let Some(reply) = loud_at.iter().find(|t| *t > end && *t < &next) {
            talk.replies.push(reply.duration_since(*end));
        }
    }
    talk
}
