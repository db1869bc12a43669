//! Phone calls over Twilio Media Streams, against the real worker binary. The caller side
//! is written here from Twilio's public protocol description (`connected`, `start` with
//! `customParameters`, `media` every 20 ms as base64 μ-law at 8 kHz, `mark`, `dtmf`,
//! `stop`; from the server `media`, `mark` and `clear`), as Twilio would drive it after a
//! TwiML `<Connect><Stream>`: no code of the worker's is used to speak it.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{PATIENCE, Worker, dominant_frequency, sine, token};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use voice_proto::worker::v1::{WatchEventsRequest, session_event::Event, transcript::Role};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Samples per 20 ms at 8 kHz: one Twilio media message.
const FRAME: usize = 160;

const STREAM: &str = "MZ00000000000000000000000000000001";

/// ITU-T G.711 μ-law, written out from the standard (bias 0x84, eight segments, all bits
/// inverted on the wire), so the test does not share the worker's codec.
fn ulaw(sample: i16) -> u8 {
    let sign = if sample < 0 { 0x80 } else { 0 };
    let magnitude = (i32::from(sample).abs().min(32_635) + 0x84) as u32;
    let segment = (31 - magnitude.leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (magnitude >> (segment + 3)) & 0x0F;
    !(sign | (segment << 4) as u8 | mantissa as u8)
}

fn linear(byte: u8) -> i16 {
    let byte = !byte;
    let segment = u32::from((byte >> 4) & 0x07);
    let magnitude = ((i32::from(byte & 0x0F) << 3) + 0x84) << segment;
    let value = magnitude - 0x84;
    (if byte & 0x80 != 0 { -value } else { value }) as i16
}

/// A `media` message: Twilio numbers its chunks from 1 and stamps them with milliseconds
/// since the stream started, as strings.
fn media(samples: &[i16], chunk: u64) -> Message {
    let payload = base64::engine::general_purpose::STANDARD
        .encode(samples.iter().map(|&s| ulaw(s)).collect::<Vec<u8>>());
    let message = serde_json::json!({
        "event": "media", "streamSid": STREAM,
        "media": {"track": "inbound", "chunk": chunk.to_string(),
                  "timestamp": ((chunk - 1) * 20).to_string(), "payload": payload}
    });
    Message::Text(message.to_string().into())
}

fn start(parameters: serde_json::Value, encoding: &str) -> Message {
    let message = serde_json::json!({
        "event": "start", "sequenceNumber": "1", "streamSid": STREAM,
        "start": {
            "accountSid": "AC0", "callSid": "CA0", "streamSid": STREAM, "tracks": ["inbound"],
            "mediaFormat": {"encoding": encoding, "sampleRate": 8000, "channels": 1},
            "customParameters": parameters
        }
    });
    Message::Text(message.to_string().into())
}

/// One stream as Twilio drives it: the socket and the last media chunk number sent.
struct Stream {
    ws: Socket,
    chunk: u64,
}

impl std::ops::Deref for Stream {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.ws
    }
}

impl std::ops::DerefMut for Stream {
    fn deref_mut(&mut self) -> &mut Socket {
        &mut self.ws
    }
}

/// Opens the stream as Twilio does: upgrade, `connected`, `start`.
async fn call(worker: &Worker, session: &str, parameters: serde_json::Value) -> Stream {
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{session}/twilio",
        worker.http_port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade: {e}"));
    let connected =
        serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
    for message in [
        Message::Text(connected.to_string().into()),
        start(parameters, "audio/x-mulaw"),
    ] {
        ws.send(message).await.unwrap_or_else(|e| panic!("{e}"));
    }
    Stream { ws, chunk: 0 }
}

/// What the worker sent: decoded reply audio and its other messages, in order.
#[derive(Default)]
struct Heard {
    audio: Vec<i16>,
    events: Vec<serde_json::Value>,
}

impl Heard {
    fn take(&mut self, message: Message) {
        let Message::Text(text) = message else {
            return;
        };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(
            value["streamSid"], STREAM,
            "every message names the stream: {value}"
        );
        if value["event"] == "media" {
            let payload = value["media"]["payload"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .unwrap_or_else(|e| panic!("media.payload is not base64: {e}"));
            self.audio.extend(bytes.into_iter().map(linear));
        } else {
            self.events.push(value);
        }
    }

    fn saw(&self, event: &str) -> bool {
        self.events.iter().any(|e| e["event"] == event)
    }
}

/// Streams `script` in real time (silence after it), taking the worker's messages, until
/// `done` says so or `limit` passes.
async fn talk(
    ws: &mut Stream,
    script: &[i16],
    heard: &mut Heard,
    limit: Duration,
    done: impl Fn(&Heard) -> bool,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let until = Instant::now() + limit;
    let mut sent = 0;
    while Instant::now() < until && !done(heard) {
        tokio::select! {
            _ = ticks.tick() => {
                let silence = [0i16; FRAME];
                let frame = script.get(sent * FRAME..(sent + 1) * FRAME).unwrap_or(&silence);
                ws.chunk += 1;
                let chunk = ws.chunk;
                ws.send(media(frame, chunk)).await.unwrap_or_else(|e| panic!("media: {e}"));
                sent += 1;
            }
            message = ws.next() => match message {
                Some(Ok(message)) => heard.take(message),
                other => panic!("the stream ended early: {other:?}"),
            },
        }
    }
}

#[tokio::test]
async fn a_call_is_admitted_by_its_token_and_its_audio_comes_back_at_the_right_pitch() {
    let worker = Worker::start(1);
    worker.reserve("team/phone", "uid-phone").await;
    let mut events = worker
        .client()
        .await
        .watch_events(WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();
    let mut ws = call(
        &worker,
        "team/phone",
        serde_json::json!({"token": token("team/phone", "uid-phone", 600), "caller": "+15550100"}),
    )
    .await;
    // One second of a 700 Hz tone, then silence: the diagnostic echo plays it back.
    let tone = sine(700.0, 8_000, 1.0);
    let mut heard = Heard::default();
    talk(&mut ws, &tone, &mut heard, Duration::from_secs(4), |h| {
        h.audio.len() >= 8_000 + 4 * FRAME
    })
    .await;
    let loud: Vec<i16> = heard
        .audio
        .iter()
        .copied()
        .skip_while(|s| s.abs() < 1_000)
        .collect();
    let loud_len = loud
        .iter()
        .rposition(|s| s.abs() >= 1_000)
        .map_or(0, |i| i + 1);
    let (pitch, share) = dominant_frequency(&loud[..loud_len], 8_000);
    println!(
        "echo: {loud_len} loud samples at 8 kHz, dominant {pitch} Hz ({share:.2} of the energy)"
    );
    assert_eq!(pitch, 700.0, "the reply is at the wrong speed");
    assert!(
        share > 0.5,
        "the reply is not the tone ({share:.2} of its energy at 700 Hz)"
    );
    assert!(
        (7_600..=8_400).contains(&loud_len),
        "one second of tone came back as {loud_len} samples at 8 kHz"
    );

    let stop = serde_json::json!({"event": "stop", "sequenceNumber": "60", "streamSid": STREAM, "stop": {"accountSid": "AC0", "callSid": "CA0"}});
    ws.send(Message::Text(stop.to_string().into()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut closed = false;
    while let Ok(Some(message)) = tokio::time::timeout(PATIENCE, ws.next()).await {
        if matches!(message, Ok(Message::Close(_)) | Err(_)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the worker did not close the stream after stop");

    let mut connected = None;
    // A one-person session ends with its caller's connection: the slot is released.
    let mut ended = None;
    let until = Instant::now() + PATIENCE;
    while ended.is_none() && Instant::now() < until {
        let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(2), events.next()).await
        else {
            break;
        };
        match event.event {
            Some(Event::Connected(c)) => connected = Some(c),
            Some(Event::Ended(e)) => ended = Some(e),
            _ => {}
        }
    }
    let connected = connected.unwrap_or_else(|| panic!("no Connected event"));
    assert_eq!(
        connected.transport(),
        voice_proto::worker::v1::Transport::Twilio
    );
    let format = connected.format.unwrap_or_default();
    assert_eq!((format.codec.as_str(), format.sample_rate), ("pcmu", 8_000));
    let ended = ended.unwrap_or_else(|| panic!("no Ended event"));
    assert_eq!(ended.reason, "StreamStopped");
    let metrics = worker.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("transport=\"twilio\"") && l.contains("direction=\"in\"")),
        "no Twilio packets counted"
    );
}

#[tokio::test]
async fn a_stream_without_a_token_is_refused_naming_the_parameter_and_frees_nothing_it_did_not_take()
 {
    let worker = Worker::start(1);
    worker.reserve("team/refused", "uid-refused").await;
    let unknown = format!(
        "ws://127.0.0.1:{}/v1/sessions/team/nobody/twilio",
        worker.http_port
    );
    let refusal = tokio_tungstenite::connect_async(unknown).await.err();
    assert!(
        matches!(&refusal, Some(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 404),
        "a session this worker does not hold: {refusal:?}"
    );

    let close_of =
        |message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>| match message {
            Some(Ok(Message::Close(Some(frame)))) => (frame.code, frame.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        };
    let mut ws = call(
        &worker,
        "team/refused",
        serde_json::json!({"caller": "+15550100"}),
    )
    .await;
    let (code, reason) = close_of(
        tokio::time::timeout(PATIENCE, ws.next())
            .await
            .ok()
            .flatten(),
    );
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("start.customParameters.token"), "{reason}");

    let wrong = token("team/other", "uid-refused", 600);
    let mut ws = call(&worker, "team/refused", serde_json::json!({"token": wrong})).await;
    let (code, reason) = close_of(
        tokio::time::timeout(PATIENCE, ws.next())
            .await
            .ok()
            .flatten(),
    );
    assert_eq!(code, CloseCode::Policy, "{reason}");

    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/team/refused/twilio",
        worker.http_port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ws.send(start(
        serde_json::json!({"token": token("team/refused", "uid-refused", 600)}),
        "audio/l16",
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, reason) = close_of(
        tokio::time::timeout(PATIENCE, ws.next())
            .await
            .ok()
            .flatten(),
    );
    assert_eq!(code, CloseCode::Unsupported);
    assert!(reason.contains("start.mediaFormat"), "{reason}");

    // None of the refused streams took the session's connection: the right one gets it.
    let mut ws = call(
        &worker,
        "team/refused",
        serde_json::json!({"token": token("team/refused", "uid-refused", 600)}),
    )
    .await;
    let mut heard = Heard::default();
    let tone = sine(700.0, 8_000, 0.4);
    talk(&mut ws, &tone, &mut heard, Duration::from_secs(3), |h| {
        h.audio.len() >= 1_600
    })
    .await;
    // Three chunks Twilio never sent: counted as dropped, not silently glued over.
    ws.chunk += 3;
    talk(&mut ws, &tone, &mut heard, Duration::from_secs(3), |h| {
        h.audio.len() >= 2 * 1_600
    })
    .await;
    assert!(
        heard.audio.len() >= 2 * 1_600,
        "the admitted stream got no audio back"
    );
    let metrics = worker.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "voice_worker_media_dropped_total{reason=\"twilio_chunk_missing\"} 3"),
        "the three missing chunks are not counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("dropped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The offline pipeline answers a spoken question: the reply is marked when it ends, it
/// lasts as long as espeak-ng's own rendering of the agent's words (audio played at the
/// wrong speed after resampling would not), and speaking over a reply makes the worker send
/// `clear` so Twilio drops what it buffered.
#[tokio::test]
async fn a_spoken_question_is_answered_marked_and_cleared_on_barge_in() {
    let config = serde_json::json!({
        "pipeline": {
            "type": "STT_TTS",
            "stt": {"provider": "pocketsphinx"},
            "tts": {"provider": "espeak"},
            "vad": {"provider": "webrtc", "aggressiveness": 0},
            "turnDetection": {"provider": "silence", "silenceTimeout": "600ms"}
        },
        "agent": {"type": "Echo", "interruptionHandling": true}
    });
    let worker = Worker::start_with_pipeline(1, Some(&config));
    worker.reserve("team/question", "uid-question").await;
    let mut events = worker
        .client()
        .await
        .watch_events(WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();
    let mut ws = call(
        &worker,
        "team/question",
        serde_json::json!({"token": token("team/question", "uid-question", 600)}),
    )
    .await;
    let phrase = common::speech::speak_at("please tell me about the weather", "en", 8_000);
    let mut script = vec![0i16; 4_000];
    script.extend(&phrase);
    let mut heard = Heard::default();
    talk(&mut ws, &script, &mut heard, Duration::from_secs(30), |h| {
        h.saw("mark")
    })
    .await;
    let mark = heard
        .events
        .iter()
        .find(|e| e["event"] == "mark")
        .unwrap_or_else(|| {
            panic!(
                "no mark after the reply; the worker sent {:?}",
                heard.events
            )
        });
    assert_eq!(mark["mark"]["name"], "reply-1");

    let mut agent = String::new();
    while agent.is_empty() {
        let Ok(Some(Ok(event))) = tokio::time::timeout(PATIENCE, events.next()).await else {
            panic!("no agent transcript on the event stream");
        };
        if let Some(Event::Transcript(t)) = event.event
            && t.role() == Role::Agent
        {
            agent = t.text;
        }
    }
    let reference = common::speech::speak_at(&agent, "en", 8_000);
    let voiced = |samples: &[i16]| {
        let first = samples.iter().position(|s| s.abs() > 500).unwrap_or(0);
        let last = samples.iter().rposition(|s| s.abs() > 500).unwrap_or(0);
        last.saturating_sub(first)
    };
    let (got, want) = (voiced(&heard.audio), voiced(&reference));
    println!(
        "agent said {agent:?}: {got} voiced samples came back, espeak-ng renders {want} at 8 kHz"
    );
    assert!(
        got * 10 >= want * 8 && got * 10 <= want * 12,
        "the reply lasts {got} samples at 8 kHz where espeak-ng says the same words in {want}: played at the wrong speed"
    );

    // Twilio echoes the mark once the reply has played.
    let echoed = serde_json::json!({"event": "mark", "sequenceNumber": "90", "streamSid": STREAM, "mark": {"name": "reply-1"}});
    ws.send(Message::Text(echoed.to_string().into()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Ask again, and talk over the answer 300 ms into it.
    let mut again = vec![0i16; 4_000];
    again.extend(&phrase);
    let mut second = Heard::default();
    talk(&mut ws, &again, &mut second, Duration::from_secs(30), |h| {
        h.audio.iter().filter(|s| s.abs() > 500).count() > 2_400
    })
    .await;
    let mut barge = Heard::default();
    talk(&mut ws, &phrase, &mut barge, Duration::from_secs(5), |h| {
        h.saw("clear")
    })
    .await;
    assert!(
        barge.saw("clear"),
        "no clear after the caller spoke over the reply: {:?}",
        barge.events
    );

    // A key press reaches the agent as a turn of its own.
    let dtmf = serde_json::json!({"event": "dtmf", "streamSid": STREAM, "sequenceNumber": "200", "dtmf": {"track": "inbound_track", "digit": "7"}});
    ws.send(Message::Text(dtmf.to_string().into()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let until = Instant::now() + PATIENCE;
    let mut answered = false;
    while !answered && Instant::now() < until {
        let Ok(Some(Ok(event))) = tokio::time::timeout(PATIENCE, events.next()).await else {
            break;
        };
        if let Some(Event::Transcript(t)) = event.event {
            answered = t.role() == Role::Agent && t.text == "You said: DTMF 7.";
        }
    }
    assert!(answered, "the echo agent did not answer the key press");
}
