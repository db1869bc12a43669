//! WebRTC interop with a client nobody here wrote: aiortc (PyPI) connects to the real
//! worker binary with a join token, sends a 1 kHz tone for 5 s through the `echo`
//! session and records what comes back; this test checks the frequency, prints the
//! round-trip delay and fails if the echo does not come back.
//!
//! aiortc is installed into `~/.cache/voice-operator/venv` on first use (python3-venv
//! and PyPI are needed; both are on the project's machines).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Worker, aiortc_python, dominant_frequency, loud_echo, token};
use futures::StreamExt;
use voice_proto::worker::v1::{WatchEventsRequest, session_event::Event};

/// The aiortc release the interop test was written against.
#[tokio::test]
async fn aiortc_hears_its_own_tone_back_through_the_echo_session() {
    let python = aiortc_python();
    let worker = Worker::start(2);
    let mut client = worker.client().await;
    let mut events = client
        .watch_events(WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();
    worker.reserve("team/rtc-1", "uid-rtc").await;

    let out = std::env::temp_dir().join(format!("aiortc-echo-{}.pcm", std::process::id()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aiortc_echo.py");
    let base = format!("http://127.0.0.1:{}", worker.http_port);
    let token = token("team/rtc-1", "uid-rtc", 600);
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([base.as_str(), "team/rtc-1", token.as_str(), "5"])
        .arg(&out)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the aiortc client hung"))
        .unwrap_or_else(|e| panic!("running the aiortc client: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "aiortc client failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    println!("aiortc report: {report}");
    assert_eq!(report["state"], "connected", "{report}");

    // The loud part of what came back: the echo of the tone.
    let (received, loud) = loud_echo(&out);
    let seconds = loud.len() as f64 / 48_000.0;
    println!(
        "aiortc echo: {:.2} s of tone came back of {:.2} s received; round trip {} ms; connect {} ms",
        seconds,
        received as f64 / 48_000.0,
        report["round_trip_ms"],
        report["connect_ms"]
    );
    assert!(
        seconds > 4.0,
        "only {seconds:.2} s of the 5 s tone came back"
    );
    let (hz, share) = dominant_frequency(&loud, 48_000);
    println!(
        "aiortc echo: dominant frequency {hz} Hz ({:.0}% of the energy)",
        share * 100.0
    );
    assert_eq!(hz, 1_000.0, "the echo is not the tone");
    let rtt = report["round_trip_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(
        rtt < 500.0,
        "round trip {rtt} ms is beyond the 500 ms bound"
    );
    assert_eq!(report["delete_status"], 200, "DELETE hang-up: {report}");
    let kinds: Vec<&str> = report["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        kinds.contains(&"connected"),
        "data channel events: {kinds:?}"
    );

    // The operator's view: reserved, connected over WebRTC from loopback, ended by the hang-up.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_secs(3), events.next()).await
    {
        match event.event {
            Some(Event::Connected(c)) => {
                assert_eq!(c.transport(), voice_proto::worker::v1::Transport::Webrtc);
                assert!(c.remote_address.starts_with("127.0.0.1:"), "{c:?}");
                seen.push("connected".to_owned());
            }
            Some(Event::Ended(e)) => {
                seen.push(format!("ended:{}", e.reason));
                break;
            }
            Some(Event::Reserved(_)) => seen.push("reserved".to_owned()),
            _ => {}
        }
    }
    assert_eq!(seen, ["reserved", "connected", "ended:HungUp"]);
    let metrics = worker.metrics().await;
    for line in [
        r#"voice_worker_offers_total{result="accepted"} 1"#,
        "voice_worker_connect_duration_seconds_count 1",
        r#"voice_worker_sessions_active{transport="webrtc"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    // aiortc's receiver reports about our stream (about one a second over 5 s) and the
    // codec's time per frame are in the metrics.
    let value = |series: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    let reports = value(r#"voice_worker_rtcp_fraction_lost_count{transport="webrtc"}"#);
    let jitter_sum = value(r#"voice_worker_rtcp_jitter_seconds_sum{transport="webrtc"}"#);
    println!(
        "RTCP: {reports} reception reports, mean jitter {:.3} ms, mean fraction lost {:.4}",
        1_000.0 * jitter_sum / reports.max(1.0),
        value(r#"voice_worker_rtcp_fraction_lost_sum{transport="webrtc"}"#) / reports.max(1.0)
    );
    assert!(reports >= 3.0, "only {reports} reception reports recorded");
    assert_eq!(
        value(r#"voice_worker_rtcp_jitter_seconds_count{transport="webrtc"}"#),
        reports
    );
    assert!(jitter_sum > 0.0, "a real network path has some jitter");
    for op in ["encode", "decode"] {
        let frames = value(&format!(
            "voice_worker_codec_duration_seconds_count{{op=\"{op}\"}}"
        ));
        let seconds = value(&format!(
            "voice_worker_codec_duration_seconds_sum{{op=\"{op}\"}}"
        ));
        println!(
            "codec: {frames} frames {op}d, {:.1} µs per frame",
            1e6 * seconds / frames.max(1.0)
        );
        assert!(frames >= 200.0, "{op}: {frames} frames");
    }
    assert!(worker.healthy().await);
}
