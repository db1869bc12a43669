//! Benchmark: concurrent WebRTC echo sessions against one worker process.
//!
//! Starts the release `voice-worker` pinned to one core (the last), reserves N sessions
//! over gRPC and connects N WebRTC clients (Rust, on the `webrtc` crate, on the other
//! cores) that each send a 1 kHz tone for one second out of every two, as pre-encoded
//! Opus, and watch the echo come back. Prints connect time and round trip (first tone
//! packet sent → first loud packet back) p50/p99, the worker's CPU per session and RSS
//! per session, the sessions one core would sustain at that CPU, late send ticks and
//! receive jitter, and the Opus codec bound (encode + decode of one 20 ms frame, as
//! sessions per core) from a micro-benchmark of the worker's own codec wrapper. With
//! `--aiortc` the same load runs against an aiortc echo server (the transport Pipecat's
//! SmallWebRTC uses) on the same core, and the CPU ratio is printed. Figures only: no
//! assertion on time.
//!
//! `cargo build --release -p voice-worker && cargo run --release -p voice-bench --bin echo -- --sessions 20`

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc, watch};
use voice_bench::worker::{PinnedWorker, free_port};
use voice_bench::{cpu_seconds, sum_by};
use voice_worker::media::opus_codec::{FrameDecoder, FrameEncoder};
use voice_worker::media::{FRAME_SAMPLES, Frame};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder, register_default_interceptors,
};

#[derive(Parser)]
struct Args {
    /// Concurrent echo sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Session counts to run one after the other, each on a fresh worker (e.g. 10,20,40);
    /// prints the most that kept late frames under 1% and receive jitter under 5 ms.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Seconds of steady load measured once every session is connected.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Worker binary (default: target/release/voice-worker).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Also run the same load against an aiortc echo server and print the ratio.
    #[arg(long)]
    aiortc: bool,
    /// Python with aiortc (default: the interop tests' venv).
    #[arg(long)]
    python: Option<PathBuf>,
}

/// A returned packet this large carries the tone; the worker's encoder makes silence
/// a few bytes long.
const LOUD_BYTES: usize = 30;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let core = cores - 1;
    println!("machine: {cores} cores; server pinned to core {core}, clients on the others");
    let (encode_us, decode_us) = codec_bound();
    let per_frame = encode_us + decode_us;
    println!(
        "codec bound: encode {encode_us:.1} µs + decode {decode_us:.1} µs per 20 ms frame = {:.0} frames/s per core = {:.0} sessions per core (codec only)",
        1e6 / per_frame,
        20_000.0 / per_frame
    );
    let packets = Arc::new(tone_packets()?);

    let counts = if args.sweep.is_empty() {
        vec![args.sessions]
    } else {
        args.sweep.clone()
    };
    let mut rows = Vec::new();
    for &sessions in &counts {
        let worker = WorkerUnderTest::start(&args, core, sessions).await?;
        let figures = load(&args, &packets, &worker.target).await;
        let metrics = http_get(worker.target.http_port, "/metrics")
            .await
            .unwrap_or_default();
        drop(worker);
        let late = sum_by(&metrics, "voice_worker_media_late_ticks_total", &[], "")
            .values()
            .sum::<f64>();
        let sent = sum_by(
            &metrics,
            "voice_worker_media_packets_total",
            &["direction=\"out\"", "transport=\"webrtc\""],
            "",
        )
        .values()
        .sum::<f64>();
        let dropped = sum_by(&metrics, "voice_worker_media_dropped_total", &[], "reason");
        println!(
            "worker: over the whole run (connects included) late send ticks {late} of {sent} packets sent ({:.3}%); dropped on purpose {dropped:?}",
            100.0 * late / sent.max(1.0)
        );
        let late_percent = figures
            .as_ref()
            .and_then(|f| f.late_percent)
            .unwrap_or(f64::NAN);
        rows.push((sessions, figures, late_percent));
    }
    if rows.len() > 1 {
        println!(
            "sweep: sessions | connected | CPU per session | late ticks (window) | receive jitter"
        );
        for (sessions, figures, late) in &rows {
            if let Some(f) = figures {
                println!(
                    "sweep: {sessions:>8} | {:>9} | {:>14.2}% | {late:>9.3}% | {:>10.2} ms",
                    f.connected,
                    f.cpu_per_session * 100.0,
                    f.jitter_ms
                );
            }
        }
        let sustained = rows
            .iter()
            .filter(|(n, f, late)| {
                f.as_ref()
                    .is_some_and(|f| f.connected == *n && *late < 1.0 && f.jitter_ms < 5.0)
            })
            .map(|(n, _, _)| *n)
            .max();
        println!(
            "sweep: most sessions with <1% late frames and <5 ms jitter: {}",
            sustained.map_or_else(|| "none of the counts run".to_owned(), |n| n.to_string())
        );
    }
    let Some(worker_cpu) = rows
        .last()
        .and_then(|(_, f, _)| f.as_ref())
        .map(|f| f.cpu_per_session)
    else {
        bail!("the worker run failed");
    };

    if args.aiortc {
        match AiortcServer::start(&args, core).await {
            Ok(server) => {
                let aiortc_cpu = load(&args, &packets, &server.target).await;
                drop(server);
                if let Some(aiortc) = aiortc_cpu {
                    println!(
                        "ratio: the aiortc echo server uses {:.1}x the CPU per session of voice-worker",
                        aiortc.cpu_per_session / worker_cpu
                    );
                }
            }
            Err(e) => println!("aiortc comparison skipped: {e:#}"),
        }
    }
    Ok(())
}

/// Microseconds per encode and per decode of one 20 ms frame, through the worker's codec.
fn codec_bound() -> (f64, f64) {
    let Ok(metrics) = voice_worker::metrics::Metrics::new().map(|m| m.media().clone()) else {
        return (f64::NAN, f64::NAN);
    };
    let (Ok(mut encoder), Ok(mut decoder)) = (
        FrameEncoder::new(metrics.clone()),
        FrameDecoder::new(metrics),
    ) else {
        return (f64::NAN, f64::NAN);
    };
    let frames: Vec<Frame> = (0..50).map(tone_frame).collect();
    let mut encoded = Vec::new();
    let started = Instant::now();
    for _ in 0..40 {
        for frame in &frames {
            if let Ok(packet) = encoder.encode(frame) {
                encoded.push(packet.to_vec());
            }
        }
    }
    let encode_us = started.elapsed().as_secs_f64() * 1e6 / encoded.len().max(1) as f64;
    let started = Instant::now();
    for packet in &encoded {
        let _ = decoder.decode(Some(packet));
    }
    let decode_us = started.elapsed().as_secs_f64() * 1e6 / encoded.len().max(1) as f64;
    (encode_us, decode_us)
}

/// Frame `n` of a continuous 1 kHz tone.
fn tone_frame(n: usize) -> Frame {
    let mut frame: Frame = [0; FRAME_SAMPLES];
    for (i, sample) in frame.iter_mut().enumerate() {
        let t = (n * FRAME_SAMPLES + i) as f64 / 48_000.0;
        *sample = (10_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16;
    }
    frame
}

/// One 2 s cycle as Opus packets: 50 of tone, then 50 of silence.
fn tone_packets() -> anyhow::Result<Vec<Bytes>> {
    let metrics = voice_worker::metrics::Metrics::new()?.media().clone();
    let mut encoder = FrameEncoder::new(metrics)?;
    let mut packets = Vec::new();
    for n in 0..100 {
        let frame = if n < 50 {
            tone_frame(n)
        } else {
            [0; FRAME_SAMPLES]
        };
        packets.push(Bytes::copy_from_slice(encoder.encode(&frame)?));
    }
    Ok(packets)
}

/// Where a server under test takes offers.
struct Target {
    name: &'static str,
    pid: u32,
    http_port: u16,
    /// Offer path of session `i`, and the bearer token for it.
    offers: Vec<(String, String)>,
}

/// The worker under test with its echo sessions reserved.
struct WorkerUnderTest {
    _worker: PinnedWorker,
    target: Target,
}

impl WorkerUnderTest {
    async fn start(args: &Args, core: usize, sessions: usize) -> anyhow::Result<Self> {
        let worker = PinnedWorker::start(
            args.worker.clone(),
            core,
            sessions,
            r#"{"pipeline":{"type":"S2S","s2s":"echo"}}"#,
        )?;
        let offers = worker
            .reserve("echo", sessions)
            .await?
            .into_iter()
            .map(|(id, token)| (format!("/v1/sessions/{id}/offer"), token))
            .collect();
        Ok(Self {
            target: Target {
                name: "voice-worker",
                pid: worker.pid,
                http_port: worker.http_port,
                offers,
            },
            _worker: worker,
        })
    }
}

/// What one client measured.
#[derive(Default)]
struct ClientReport {
    connect: Option<Duration>,
    round_trips: Vec<Duration>,
    /// RFC 3550 interarrival jitter of the returned stream, at the end.
    jitter: Duration,
    received: u64,
    error: Option<String>,
}

/// What one load run found.
struct Figures {
    connected: usize,
    /// Server CPU per session, as a fraction of a core.
    cpu_per_session: f64,
    /// Mean client-side receive jitter.
    jitter_ms: f64,
    /// Send ticks the server skipped in the window, per packet sent (voice-worker only).
    late_percent: Option<f64>,
}

/// The worker's late send ticks and WebRTC packets sent so far, if it exports them.
async fn send_ticks(http_port: u16) -> Option<(f64, f64)> {
    let metrics = http_get(http_port, "/metrics").await.ok()?;
    let late = sum_by(&metrics, "voice_worker_media_late_ticks_total", &[], "");
    let sent = sum_by(
        &metrics,
        "voice_worker_media_packets_total",
        &["direction=\"out\"", "transport=\"webrtc\""],
        "",
    );
    Some((late.values().sum(), sent.values().sum::<f64>()))
        .filter(|_| !late.is_empty() && !sent.is_empty())
}

/// Runs the load against `target`; prints its figures and returns them, or `None` if no
/// session connected.
async fn load(args: &Args, packets: &Arc<Vec<Bytes>>, target: &Target) -> Option<Figures> {
    let idle_rss = rss_mib(target.pid).unwrap_or(0.0);
    let (go_tx, go) = watch::channel(false);
    let measure_until = Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (path, token) in &target.offers {
        tasks.push(tokio::spawn(client(
            target.http_port,
            path.clone(),
            token.clone(),
            packets.clone(),
            go.clone(),
            measure_until,
        )));
        // A burst of offers is a separate benchmark; stagger them a little.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every client connects (or gives up) within its connect timeout; then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks_before = send_ticks(target.http_port).await;
    let cpu_before = cpu_seconds(target.pid);
    let waited_before = runqueue_wait_seconds(target.pid);
    let wall = Instant::now();
    go_tx.send_replace(true);
    tokio::time::sleep(measure_until).await;
    let cpu = cpu_seconds(target.pid)
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / wall.elapsed().as_secs_f64());
    let rss = rss_mib(target.pid).unwrap_or(0.0);
    let waited = runqueue_wait_seconds(target.pid)
        .zip(waited_before)
        .map(|(after, before)| (after - before) / measure_until.as_secs_f64());
    // Late send ticks within the steady window only (connecting sessions cost CPU bursts).
    let late_percent = ticks_before
        .zip(send_ticks(target.http_port).await)
        .map(|((late0, sent0), (late1, sent1))| 100.0 * (late1 - late0) / (sent1 - sent0).max(1.0));
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await.unwrap_or_else(|e| ClientReport {
            error: Some(e.to_string()),
            ..Default::default()
        }));
    }
    let connected = reports.iter().filter(|r| r.connect.is_some()).count();
    let errors: Vec<&str> = reports.iter().filter_map(|r| r.error.as_deref()).collect();
    let mut connects: Vec<Duration> = reports.iter().filter_map(|r| r.connect).collect();
    let mut rtts: Vec<Duration> = reports
        .iter()
        .flat_map(|r| r.round_trips.iter().copied())
        .collect();
    let heard = reports.iter().filter(|r| !r.round_trips.is_empty()).count();
    let mean_jitter = reports
        .iter()
        .filter(|r| r.received > 0)
        .map(|r| r.jitter.as_secs_f64())
        .sum::<f64>()
        / connected.max(1) as f64;
    println!("== {} ==", target.name);
    println!(
        "sessions: {connected} of {} connected, {heard} heard their tone back; errors: {:?}",
        target.offers.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "connect time: p50 {} ms, p99 {} ms",
        ms(percentile(&mut connects, 0.50)),
        ms(percentile(&mut connects, 0.99))
    );
    println!(
        "round trip (tone sent → echo received): p50 {} ms, p99 {} ms over {} samples",
        ms(percentile(&mut rtts, 0.50)),
        ms(percentile(&mut rtts, 0.99)),
        rtts.len()
    );
    println!(
        "receive jitter (RFC 3550, client side): mean {:.2} ms",
        mean_jitter * 1e3
    );
    if let Some(waited) = waited {
        // Other processes on the server's core (a shared machine) show up here, not in its CPU.
        println!(
            "server threads waited for their core {:.1}% of the window (summed over threads)",
            waited * 100.0
        );
    }
    if let Some(late) = late_percent {
        println!("server late send ticks during the window: {late:.3}% of packets sent");
    }
    let per_session = cpu.map(|c| c / connected.max(1) as f64);
    if let (Some(cpu), Some(per_session)) = (cpu, per_session) {
        println!(
            "server CPU: {:.1}% of a core for {connected} sessions = {:.2}% per session → about {:.0} sessions per core at this load",
            cpu * 100.0,
            per_session * 100.0,
            1.0 / per_session.max(1e-9)
        );
    }
    println!(
        "server RSS: {idle_rss:.1} MiB idle, {rss:.1} MiB loaded = {:.2} MiB per session",
        (rss - idle_rss) / connected.max(1) as f64
    );
    let cpu_per_session = per_session.filter(|_| connected > 0)?;
    Some(Figures {
        connected,
        cpu_per_session,
        jitter_ms: mean_jitter * 1e3,
        late_percent,
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

fn percentile(values: &mut [Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let at = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(at).copied()
}

/// Seconds the threads of `pid` have spent runnable but waiting for a CPU, summed
/// (`/proc/<pid>/task/*/schedstat`, second field, nanoseconds).
fn runqueue_wait_seconds(pid: u32) -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total as f64 / 1e9)
}

/// Resident set size now, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

struct Events {
    state: mpsc::Sender<RTCPeerConnectionState>,
    track: mpsc::Sender<Arc<dyn TrackRemote>>,
    gathered: watch::Sender<bool>,
}

#[tonic::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.try_send(state);
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.track.try_send(track);
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// One echo client: connect, then send the tone cycle until `measure_for` after `go`.
async fn client(
    http_port: u16,
    path: String,
    token: String,
    packets: Arc<Vec<Bytes>>,
    mut go: watch::Receiver<bool>,
    measure_for: Duration,
) -> ClientReport {
    match client_inner(http_port, &path, &token, packets, &mut go, measure_for).await {
        Ok(report) => report,
        Err(e) => ClientReport {
            error: Some(format!("{path}: {e:#}")),
            ..Default::default()
        },
    }
}

async fn client_inner(
    http_port: u16,
    path: &str,
    token: &str,
    packets: Arc<Vec<Bytes>>,
    go: &mut watch::Receiver<bool>,
    measure_for: Duration,
) -> anyhow::Result<ClientReport> {
    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let (state_tx, mut states) = mpsc::channel(16);
    let (track_tx, mut tracks) = mpsc::channel(4);
    let (gathered_tx, mut gathered) = watch::channel(false);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_include_loopback_candidate(true)
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                .build(),
        )
        .with_handler(Arc::new(Events {
            state: state_tx,
            track: track_tx,
            gathered: gathered_tx,
        }))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await?;
    let ssrc = rand_u32();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("bench-{ssrc}"),
        format!("mic-{ssrc}"),
        "mic".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus(),
            ..Default::default()
        }],
    )));
    pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), gathered.wait_for(|g| *g)).await;
    let sdp = pc
        .local_description()
        .await
        .context("no local description")?
        .sdp;
    let offered = Instant::now();
    let (status, location, answer) = post_offer(http_port, path, token, &sdp).await?;
    if status != 201 {
        bail!("offer refused: {status} {answer}");
    }
    pc.set_remote_description(RTCSessionDescription::answer(answer)?)
        .await?;
    let connect = loop {
        match tokio::time::timeout(Duration::from_secs(15), states.recv()).await {
            Ok(Some(RTCPeerConnectionState::Connected)) => break offered.elapsed(),
            Ok(Some(RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed))
            | Ok(None)
            | Err(_) => bail!("never connected"),
            Ok(Some(_)) => {}
        }
    };
    let mut report = ClientReport {
        connect: Some(connect),
        ..Default::default()
    };

    // Sending: one packet per 20 ms tick, the 2 s tone cycle; the start of each tone burst
    // is remembered for the round trip.
    let tone_starts: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = {
        let (track, packets, tone_starts, stop) = (
            track.clone(),
            packets.clone(),
            tone_starts.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            let (mut seq, ts_base) = (rand_u32() as u16, rand_u32());
            for n in 0u64.. {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let index = (n % packets.len() as u64) as usize;
                if index == 0 {
                    tone_starts.lock().await.push_back(Instant::now());
                }
                let header = rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: seq,
                    timestamp: ts_base.wrapping_add((n * FRAME_SAMPLES as u64) as u32),
                    ssrc,
                    marker: index == 0,
                    ..Default::default()
                };
                seq = seq.wrapping_add(1);
                let _ = track
                    .write_rtp(rtc::rtp::Packet {
                        header,
                        payload: packets[index].clone(),
                    })
                    .await;
            }
        })
    };

    let remote = tokio::time::timeout(Duration::from_secs(5), tracks.recv())
        .await
        .ok()
        .flatten()
        .context("no remote track")?;
    // Wait for the measured window, then receive until it ends.
    let _ = go.wait_for(|g| *g).await;
    let until = Instant::now() + measure_for;
    let mut was_loud = true; // skip a burst already under way when measuring starts
    let mut last: Option<(Instant, u32)> = None;
    let mut jitter = 0f64;
    tone_starts.lock().await.clear();
    while Instant::now() < until {
        let event = tokio::time::timeout(until - Instant::now(), remote.poll()).await;
        let Ok(Some(event)) = event else { break };
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let now = Instant::now();
        report.received += 1;
        if let Some((at, ts)) = last {
            // RFC 3550 §6.4.1: D = (arrival difference) − (timestamp difference).
            let d = now.duration_since(at).as_secs_f64()
                - f64::from(packet.header.timestamp.wrapping_sub(ts)) / 48_000.0;
            jitter += (d.abs() - jitter) / 16.0;
        }
        last = Some((now, packet.header.timestamp));
        let loud = packet.payload.len() > LOUD_BYTES;
        if loud && !was_loud {
            let mut starts = tone_starts.lock().await;
            // The burst that came back is the oldest one sent that has not come back yet.
            if let Some(sent) = starts.pop_front() {
                report.round_trips.push(now.duration_since(sent));
            }
            starts.retain(|s| now.duration_since(*s) < Duration::from_secs(2));
        }
        was_loud = loud;
    }
    report.jitter = Duration::from_secs_f64(jitter.max(0.0));
    stop.cancel();
    let _ = sender.await;
    if let Some(location) = location {
        let _ = request(http_port, "DELETE", &location, token, "", b"").await;
    }
    let _ = pc.close().await;
    Ok(report)
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    u32::from_be_bytes(bytes)
}

async fn post_offer(
    port: u16,
    path: &str,
    token: &str,
    sdp: &str,
) -> anyhow::Result<(u16, Option<String>, String)> {
    let (status, headers, body) =
        request(port, "POST", path, token, "application/sdp", sdp.as_bytes()).await?;
    let location = headers
        .iter()
        .find(|(n, _)| n == "location")
        .map(|(_, v)| v.clone());
    Ok((status, location, body))
}

type Headers = Vec<(String, String)>;

/// One HTTP/1.1 request on its own connection.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Headers, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .context("no answer")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    Ok(request(port, "GET", path, "", "", b"").await?.2)
}

/// An aiortc echo server: every offer gets a peer connection that sends back what it
/// receives (aiortc decodes the Opus it gets and encodes what it sends, as the worker).
const AIORTC_SERVER: &str = r#"
import asyncio, sys
import aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

class Echo(MediaStreamTrack):
    kind = "audio"
    def __init__(self, source):
        super().__init__()
        self.source = source
    async def recv(self):
        return await self.source.recv()

pcs = set()

async def handle(reader, writer):
    try:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return  # a readiness probe: connected and closed
        lines = head.decode().split("\r\n")
        method = lines[0].split(" ")[0]
        length = 0
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        if method != "POST":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        pc = RTCPeerConnection()
        pcs.add(pc)
        @pc.on("track")
        def on_track(track):
            pc.addTrack(Echo(track))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp.encode()
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nConnection: close\r\n"
                     + b"Content-Length: %d\r\n\r\n" % len(answer) + answer)
    finally:
        await writer.drain()
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

struct AiortcServer {
    child: Child,
    target: Target,
    script: PathBuf,
}

impl AiortcServer {
    async fn start(args: &Args, core: usize) -> anyhow::Result<Self> {
        let python = args.python.clone().unwrap_or_else(|| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            PathBuf::from(home).join(".cache/voice-operator/venv/bin/python")
        });
        if !python.exists() {
            bail!(
                "no aiortc venv at {} (the worker's interop test makes it)",
                python.display()
            );
        }
        let script = std::env::temp_dir().join(format!("aiortc-echo-{}.py", std::process::id()));
        std::fs::write(&script, AIORTC_SERVER)?;
        let port = free_port()?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(&python)
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the aiortc server")?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("the aiortc server never listened");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pid = child.id();
        Ok(Self {
            child,
            target: Target {
                name: "aiortc echo server",
                pid,
                http_port: port,
                offers: (0..args.sessions)
                    .map(|_| ("/offer".to_owned(), String::new()))
                    .collect(),
            },
            script,
        })
    }
}

impl Drop for AiortcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.script);
    }
}
