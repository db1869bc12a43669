//! Headless Chromium (Debian's `chromium`, driven over the DevTools protocol) with a fake
//! microphone playing a WAV file, opening one page: what the browser tests share.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Debian's Chromium (`cargo xtask` installs it with the other prerequisites), or the
/// binary `CHROMIUM` names. Panics with the fix when there is none: a browser test that
/// cannot run must fail, not pass.
pub fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return PathBuf::from(path);
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no Chromium at /usr/bin/chromium: apt-get install chromium (cargo xtask test installs it), or set CHROMIUM"))
}

/// Writes `samples` as a mono 48 kHz PCM16 WAV file.
pub fn write_wav(path: &Path, samples: &[i16]) {
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

/// A running Chromium and a DevTools session on its page; killed on drop.
pub struct Browser {
    child: tokio::process::Child,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    dir: PathBuf,
}

impl Browser {
    /// Opens `url` with the microphone playing `microphone` (looped) and `extra` flags.
    pub async fn open(url: &str, microphone: &[i16], extra: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("voice-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let wav = dir.join("microphone.wav");
        write_wav(&wav, microphone);
        let chromium = chromium();
        let mut child = tokio::process::Command::new(&chromium)
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
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .args(extra)
            .arg(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ))
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
        // Chromium says where its DevTools endpoint is on stderr.
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
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
        Self {
            child,
            socket,
            next_id: 0,
            dir,
        }
    }

    /// Evaluates `expression` in the page; its value, which must be JSON-serialisable.
    pub async fn evaluate(&mut self, expression: &str) -> serde_json::Value {
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

    /// Polls the demo page's `window.voiceDemo` until `done` says so, the page reports an
    /// error, or `patience` passes; the last state and when it first said `connected`.
    pub async fn watch_demo(
        &mut self,
        patience: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> (serde_json::Value, Option<Duration>) {
        let started = Instant::now();
        let mut connected_after = None;
        loop {
            let value = self
                .evaluate("JSON.stringify(window.voiceDemo || null)")
                .await;
            let state: serde_json::Value =
                serde_json::from_str(value.as_str().unwrap_or("null")).unwrap_or_default();
            if connected_after.is_none() && state["connectionState"] == "connected" {
                connected_after = Some(started.elapsed());
            }
            let failed = !state["errors"].as_array().is_none_or(Vec::is_empty);
            if done(&state) || failed || started.elapsed() > patience {
                return (state, connected_after);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the demo page's state (`window.voiceDemo`) shows the microphone's tone coming back:
/// loud (audio level above 0.05) and for a while (over 10 kB received).
pub fn heard_tone_back(state: &serde_json::Value) -> bool {
    state["maxAudioLevel"].as_f64().unwrap_or(0.0) > 0.05
        && state["inboundBytes"].as_u64().unwrap_or(0) > 10_000
}
