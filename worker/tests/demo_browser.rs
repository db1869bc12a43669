//! The demo page, served by the real worker binary: its content types, that its script
//! offers where the worker listens, and a real browser — headless Chromium (Debian's
//! `chromium`, driven over the DevTools protocol) with a fake microphone playing a 1 kHz
//! tone — that opens the page with a session link, connects, and hears its tone back
//! through the `echo` session, as the page's own `getStats()` and event log say.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Worker, sine, token};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_demo_page_is_served_and_its_script_offers_where_the_worker_listens() {
    let worker = Worker::start(1);
    // Reserving first also waits until the worker listens.
    worker.reserve("team/page-1", "uid-p1").await;
    let page = worker.request("GET", "/demo", &[], b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.header("content-security-policy").is_some());
    assert!(
        page.body.contains(r#"<script src="/demo/demo.js">"#),
        "{}",
        page.body
    );

    let script = worker.request("GET", "/demo/demo.js", &[], b"").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );

    // The offer path the served script uses must reach the offer handler: with no token
    // it answers the handler's JSON refusal, not the router's bare 404 or 405.
    let template = voice_worker::demo::script_constant(&script.body, "OFFER_PATH")
        .unwrap_or_else(|| panic!("the script has no OFFER_PATH:\n{}", script.body));
    let path = template
        .replace("{namespace}", "team")
        .replace("{name}", "page-1");
    let refused = worker
        .request(
            "POST",
            &path,
            &[("Content-Type", "application/sdp")],
            b"v=0\r\n",
        )
        .await;
    assert_eq!(refused.status, 401, "{path}: {}", refused.body);
    assert_eq!(refused.code(), "TokenMissing", "{path}");
    // And the trickle media type it patches with is the one the server takes.
    assert_eq!(
        voice_worker::demo::script_constant(&script.body, "TRICKLE_CONTENT_TYPE").as_deref(),
        Some(voice_worker::signaling::TRICKLE_CONTENT_TYPE)
    );
}

/// Debian's Chromium, if it is installed (`cargo xtask` installs it with the other
/// prerequisites); `CHROMIUM` names another binary.
fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Writes `samples` as a mono 48 kHz PCM16 WAV file.
fn write_wav(path: &Path, samples: &[i16]) {
    let data_len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX);
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&48_000u32.to_le_bytes());
    wav.extend_from_slice(&96_000u32.to_le_bytes()); // byte rate
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    std::fs::write(path, wav).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// GET `path` from the DevTools HTTP endpoint on `port`; the body.
async fn devtools_get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connecting to DevTools: {e}"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // DevTools may keep the connection open: read until the body named by Content-Length.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4_096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok());
                if length.is_some_and(|len| body.len() >= len) {
                    return body.to_owned();
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    return text
                        .split_once("\r\n\r\n")
                        .map(|(_, b)| b.to_owned())
                        .unwrap_or_default();
                }
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("DevTools {path} did not answer"))
}

/// A DevTools protocol session on one page.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    /// Evaluates `expression` in the page; its value, which must be JSON-serialisable.
    async fn evaluate(&mut self, expression: &str) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true, "awaitPromise": true },
        });
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap_or_else(|e| panic!("DevTools send: {e}"));
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("DevTools did not answer {expression}"))
                .unwrap_or_else(|| panic!("DevTools closed"))
                .unwrap_or_else(|e| panic!("DevTools: {e}"));
            let Message::Text(text) = message else {
                continue;
            };
            let reply: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            if reply["id"] == id {
                if let Some(thrown) = reply["result"].get("exceptionDetails") {
                    panic!("{expression} threw: {thrown}");
                }
                return reply["result"]["result"]["value"].clone();
            }
        }
    }
}

#[tokio::test]
async fn headless_chromium_hears_its_tone_back_through_the_demo_page() {
    let Some(chromium) = chromium() else {
        println!(
            "SKIPPED: no Chromium at /usr/bin/chromium (apt-get install chromium, or set CHROMIUM)"
        );
        return;
    };
    let worker = Worker::start(1);
    worker.reserve("team/browser-1", "uid-b1").await;
    let join = token("team/browser-1", "uid-b1", 600);

    let dir = std::env::temp_dir().join(format!("voice-demo-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let wav = dir.join("tone.wav");
    // Chromium loops the file, so the microphone plays the tone for the whole call.
    write_wav(&wav, &sine(1_000.0, 48_000, 2.0));
    let url = format!(
        "http://127.0.0.1:{}/demo?session=team/browser-1&token={join}",
        worker.http_port
    );
    let mut browser = tokio::process::Command::new(&chromium)
        .args([
            "--headless=new",
            // Root (CI, this container) cannot use the setuid sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            // The worker listens on loopback; Chromium leaves loopback out of ICE otherwise.
            "--allow-loopback-in-peer-connection",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ])
        .arg(format!(
            "--use-file-for-fake-audio-capture={}",
            wav.display()
        ))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));

    // Chromium says where its DevTools endpoint is on stderr.
    let stderr = browser.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                return rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
            }
            log.push(line);
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("Chromium printed no DevTools address:\n{}", log.join("\n")));
    // Keep draining stderr so Chromium never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let targets: serde_json::Value =
        serde_json::from_str(&devtools_get(port, "/json/list").await).unwrap_or_default();
    let page_ws = targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .unwrap_or_else(|| panic!("no page target: {targets}"))
        .to_owned();
    let (socket, _) = tokio_tungstenite::connect_async(page_ws.as_str())
        .await
        .unwrap_or_else(|e| panic!("DevTools websocket: {e}"));
    let mut page = Page { socket, next_id: 0 };

    // The page connects on its own (the link carries session and token); watch what it says.
    let started = Instant::now();
    let mut connected_after = None;
    let state = loop {
        let value = page
            .evaluate("JSON.stringify(window.voiceDemo || null)")
            .await;
        let state: serde_json::Value =
            serde_json::from_str(value.as_str().unwrap_or("null")).unwrap_or_default();
        if connected_after.is_none() && state["connectionState"] == "connected" {
            connected_after = Some(started.elapsed());
        }
        let heard = state["maxAudioLevel"].as_f64().unwrap_or(0.0) > 0.05
            && state["inboundBytes"].as_u64().unwrap_or(0) > 10_000;
        if heard || !state["errors"].as_array().is_none_or(Vec::is_empty) {
            break state;
        }
        if started.elapsed() > Duration::from_secs(40) {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("chromium demo: connected after {connected_after:?}; {state}");
    assert!(
        state["errors"].as_array().is_some_and(Vec::is_empty),
        "the page reported errors: {state}"
    );
    assert_eq!(state["connectionState"], "connected", "{state}");
    let level = state["maxAudioLevel"].as_f64().unwrap_or(0.0);
    assert!(
        level > 0.05,
        "the echo of the tone never came back loud (max audioLevel {level}): {state}"
    );
    let kinds: Vec<&str> = state["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert!(kinds.contains(&"connected"), "session events: {kinds:?}");
    let address = page.evaluate("window.location.href").await;
    assert!(
        !address.as_str().unwrap_or_default().contains("token="),
        "the token stays in the address bar: {address}"
    );

    // Hanging up from the page ends the session on the worker.
    page.evaluate("document.getElementById('hangup').click(); true")
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let metrics = worker.metrics().await;
            if metrics.contains(r#"voice_worker_sessions_active{transport="webrtc"} 0"#)
                && metrics.contains(r#"voice_worker_sessions{state="active"} 0"#)
            {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the session did not end after the page hung up"));
    let trickled = ended
        .lines()
        .find(|l| l.starts_with(r#"voice_worker_trickle_patches_total{result="accepted"}"#))
        .unwrap_or("no trickle PATCH accepted");
    println!("chromium demo: {trickled}");
    assert!(worker.healthy().await);

    let _ = browser.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), browser.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
