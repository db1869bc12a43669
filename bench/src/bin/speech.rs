//! Offline speech quality and cost, printed (not asserted): word error rate of the worker's
//! STT on everyday requests spoken by espeak-ng voices (not the TTS under test), through
//! the real pipeline (WebSocket → VAD → turn detection (silence or smart-turn) → STT → echo
//! agent → TTS), for each engine in the same run; CPU per turn of the worker and its engines
//! (speech process included), end of speech → first reply audio, and RSS with models loaded.
//!
//! `cargo run --release -p voice-bench --bin speech` (needs the release worker and the
//! speech venv from `cargo xtask dev`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use voice_bench::wer::{edits, normalise};
use voice_bench::worker::PinnedWorker;
use voice_bench::{tree_cpu_seconds, tree_rss_mib};

/// Everyday requests with numbers, names and times.
const SENTENCES: &[&str] = &[
    "what will the weather be like in boston tomorrow morning",
    "set an alarm for six thirty tomorrow",
    "call my sister anna after lunch",
    "remind me to buy milk and eggs on friday",
    "how long does it take to drive to chicago",
    "book a table for four people at seven pm",
    "play some relaxing music in the living room",
    "what is the capital of canada",
    "send a message to david saying i will be late",
    "turn off the lights in the kitchen",
    "how many days are left until christmas",
    "add a meeting with sarah on monday at ten",
    "what time does the pharmacy close today",
    "order two large pizzas with extra cheese",
    "is it going to rain this weekend",
    "find me a cheap flight to london next month",
    "what is twenty five times four",
    "cancel my appointment with doctor miller",
    "read me the latest news about the elections",
    "how do i get to the nearest train station",
    "start a timer for fifteen minutes",
    "what did the chicago bulls score last night",
];

/// espeak-ng voices that speak the sentences: none is the TTS under test.
const VOICES: &[&str] = &["en-us", "en-gb"];

#[derive(Parser)]
struct Args {
    /// The worker binary (default: target/release/voice-worker).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Core to pin the worker (and the engines it starts) to.
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Sentences per voice (at most the built-in 22).
    #[arg(long, default_value_t = SENTENCES.len())]
    sentences: usize,
}

/// One engine configuration under test.
struct Setup {
    name: &'static str,
    stt: &'static str,
    tts: &'static str,
    /// `pipeline.turnDetection`.
    turn: &'static str,
}

/// The silence rule of every setup: 500 ms alone, or the bound under smart-turn.
const SILENCE: &str = "500ms";

const SETUPS: &[Setup] = &[
    Setup {
        name: "whisper tiny.en + piper, silence 500 ms",
        stt: "whisper",
        tts: "piper",
        turn: "silence",
    },
    Setup {
        name: "whisper tiny.en + piper, smart-turn (silence 500 ms as the bound)",
        stt: "whisper",
        tts: "piper",
        turn: "smart-turn",
    },
    Setup {
        name: "pocketsphinx + espeak-ng (old default), silence 500 ms",
        stt: "pocketsphinx",
        tts: "espeak",
        turn: "silence",
    },
];

/// `text` spoken by espeak-ng `voice` at 16 kHz.
fn speak(text: &str, voice: &str) -> anyhow::Result<Vec<i16>> {
    let mut espeak = Command::new("espeak-ng")
        .args(["--stdout", "-v", voice, text])
        .stdout(Stdio::piped())
        .spawn()
        .context("espeak-ng")?;
    let out = Command::new("sox")
        .args([
            "-t", "wav", "-", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1",
            "-",
        ])
        .stdin(espeak.stdout.take().context("espeak stdout")?)
        .output()
        .context("sox")?;
    espeak.wait()?;
    if !out.status.success() {
        bail!("sox failed");
    }
    Ok(out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// What one turn gave: the user transcript and end of speech → first reply audio.
struct Turn {
    heard: String,
    first_audio: Option<Duration>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sentences = &SENTENCES[..args.sentences.min(SENTENCES.len())];
    println!(
        "== offline speech: {} sentences × {} espeak-ng voices ({}), through the real pipeline, worker pinned to core {} ==",
        sentences.len(),
        VOICES.len(),
        VOICES.join(", "),
        args.core
    );
    for setup in SETUPS {
        let config = serde_json::json!({
            "pipeline": {"type": "STT_TTS",
                "stt": {"provider": setup.stt}, "tts": {"provider": setup.tts},
                "turnDetection": {"provider": setup.turn, "silenceTimeout": SILENCE}},
            "agent": {"type": "Echo"}
        });
        let worker = PinnedWorker::start(args.binary.clone(), args.core, 1, &config.to_string())?;
        let sessions = worker.reserve("speech", 1).await?;
        let (id, token) = sessions.into_iter().next().context("no session")?;
        let url = format!(
            "ws://127.0.0.1:{}/v1/sessions/{id}/ws?token={token}&rate=16000",
            worker.http_port
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut tx, mut rx) = ws.split();
        // Warm-up turn (models load, caches fill), not counted.
        let warm = speak("hello there", "en-us")?;
        let _ = turn(&mut tx, &mut rx, &warm).await?;
        let rss = tree_rss_mib(worker.pid).unwrap_or(f64::NAN);
        let cpu_before = tree_cpu_seconds(worker.pid).unwrap_or(f64::NAN);
        let (mut errors, mut words, mut turns) = (0usize, 0usize, 0usize);
        let mut latencies = Vec::new();
        let mut per_voice = Vec::new();
        for voice in VOICES {
            let (mut voice_errors, mut voice_words) = (0, 0);
            for sentence in sentences {
                let audio = speak(sentence, voice)?;
                let result = turn(&mut tx, &mut rx, &audio).await?;
                let reference = normalise(sentence);
                let e = edits(&reference, &normalise(&result.heard));
                voice_errors += e;
                voice_words += reference.len();
                turns += 1;
                if let Some(l) = result.first_audio {
                    latencies.push(l.as_secs_f64() * 1_000.0);
                }
                if e > 0 {
                    println!(
                        "   [{voice}] {sentence:?} → {:?} ({e} errors)",
                        result.heard
                    );
                }
            }
            per_voice.push(format!(
                "{voice} {:.1} %",
                100.0 * voice_errors as f64 / voice_words as f64
            ));
            errors += voice_errors;
            words += voice_words;
        }
        let cpu = tree_cpu_seconds(worker.pid).unwrap_or(f64::NAN) - cpu_before;
        let mut sorted = latencies.clone();
        let (min, max) = (
            latencies.iter().copied().fold(f64::INFINITY, f64::min),
            latencies.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "{}: WER {:.1} % ({errors}/{words} words; {}); CPU {:.2} s per turn (STT + TTS of the echo reply, worker and engines); end of speech → first reply audio median {:.0} ms (min {:.0}, max {:.0}, {} turns, the turn detector's wait included); RSS after warm-up {:.0} MiB",
            setup.name,
            100.0 * errors as f64 / words as f64,
            per_voice.join(", "),
            cpu / turns as f64,
            median(&mut sorted),
            min,
            max,
            latencies.len(),
            rss
        );
    }
    Ok(())
}

type Tx = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type Rx = futures::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// Plays 300 ms of silence, `audio` and silence in real time until the reply has been
/// spoken (the pipeline is back to LISTENING); returns the user transcript.
async fn turn(tx: &mut Tx, rx: &mut Rx, audio: &[i16]) -> anyhow::Result<Turn> {
    const FRAME: usize = 320;
    let mut script = vec![0i16; 4_800];
    script.extend_from_slice(audio);
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let silence = [0i16; FRAME];
    let mut sent = 0usize;
    let mut heard = None;
    let mut spoke = false;
    let mut end_of_speech: Option<Instant> = None;
    let mut first_audio = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        tokio::select! {
            _ = ticks.tick() => {
                let frame = script.get(sent * FRAME..(sent + 1) * FRAME).unwrap_or(&silence);
                let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
                tx.send(Message::Binary(bytes.into())).await?;
                sent += 1;
                if end_of_speech.is_none() && sent * FRAME >= script.len() {
                    end_of_speech = Some(Instant::now());
                }
            }
            message = rx.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let loud = data.chunks_exact(2).any(|b| i16::from_le_bytes([b[0], b[1]]).abs() > 500);
                    if loud && first_audio.is_none() && let Some(end) = end_of_speech {
                        first_audio = Some(end.elapsed());
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if event["type"] == "transcript" && event["role"] == "user" {
                        heard = Some(event["text"].as_str().unwrap_or_default().to_owned());
                    }
                    if event["state"] == "ERROR" {
                        bail!("the pipeline failed: {event}");
                    }
                    spoke |= event["state"] == "SPEAKING";
                    if spoke && event["state"] == "LISTENING" {
                        break;
                    }
                    // Nothing heard: the turn ends without a reply.
                    if heard.as_deref() == Some("") && event["state"] == "LISTENING" {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                _ => bail!("the WebSocket closed"),
            }
        }
    }
    Ok(Turn {
        heard: heard.unwrap_or_default(),
        first_audio,
    })
}
