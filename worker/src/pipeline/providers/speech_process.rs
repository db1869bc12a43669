//! The worker's speech process: one Python process per worker (per interpreter) that holds
//! the Whisper and Piper models, loaded once and shared by every session.
//!
//! Why a process and not a library: the Whisper model ships in CTranslate2 format, which
//! has no Rust path here without building CTranslate2 from C++ source or `unsafe` FFI (the
//! workspace forbids both); the measurements are in docs/decisions.md. The script is
//! compiled into the binary and run with `python -c`, so the image needs only the venv.
//!
//! One Unix-socket connection per request; dropping it cancels the request. The process
//! exits when its stdin (held here) closes, i.e. with the worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::{ErrorKind, ProviderError};

/// The server, compiled in.
const SCRIPT: &str = include_str!("../../../speech/speech_server.py");

/// Longest the process may take to start listening (imports only; models load on use).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest frame accepted from the process: one second of 48 kHz audio is 96 KB, and a
/// JSON reply is far smaller.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Where the speech venv's python lives when `VOICE_SPEECH_PYTHON` is not set:
/// `~/.cache/voice-operator/speech-venv/bin/python` (what `cargo xtask dev`/`test` install).
pub fn default_python() -> PathBuf {
    if let Some(p) = std::env::var_os("VOICE_SPEECH_PYTHON") {
        return PathBuf::from(p);
    }
    cache_dir().join("speech-venv/bin/python")
}

/// Where models live when a stage names none: `VOICE_MODELS_DIR`, else
/// `~/.cache/voice-operator/models`.
pub fn models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("VOICE_MODELS_DIR") {
        return PathBuf::from(p);
    }
    cache_dir().join("models")
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/nonexistent".into());
    PathBuf::from(home).join(".cache/voice-operator")
}

/// A running speech process.
struct Running {
    child: std::process::Child,
    /// Held so the process sees end-of-file (and exits) when the worker does.
    _stdin: Option<std::process::ChildStdin>,
    socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn processes() -> &'static Mutex<HashMap<PathBuf, Running>> {
    static PROCESSES: OnceLock<Mutex<HashMap<PathBuf, Running>>> = OnceLock::new();
    PROCESSES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The socket of the speech process run by `python`, started on first use and again if
/// it died.
pub async fn socket(provider: &'static str, python: &Path) -> Result<PathBuf, ProviderError> {
    let mut all = processes().lock().await;
    if let Some(running) = all.get_mut(python)
        && matches!(running.child.try_wait(), Ok(None))
    {
        return Ok(running.socket.clone());
    }
    all.remove(python);
    let socket = std::env::temp_dir().join(format!(
        "voice-speech-{}-{}.sock",
        std::process::id(),
        crate::connections::random_id(8)
    ));
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| {
            ProviderError::new(
                provider,
                ErrorKind::Config,
                format!(
                    "cannot run the speech process {}: {e} (run `cargo xtask dev` to install the speech venv, or set VOICE_SPEECH_PYTHON)",
                    python.display()
                ),
            )
        })?;
    let stdin = child.stdin.take();
    let mut running = Running {
        child,
        _stdin: stdin,
        socket: socket.clone(),
    };
    let started = tokio::time::Instant::now();
    loop {
        if UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(ProviderError::new(
                provider,
                ErrorKind::Config,
                format!(
                    "the speech process {} exited with {status} before listening (see the worker's log)",
                    python.display()
                ),
            ));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(ProviderError::new(
                provider,
                ErrorKind::Timeout,
                format!("the speech process did not listen within {START_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all.insert(python.to_owned(), running);
    Ok(socket)
}

/// A connection carrying one request.
pub async fn connect(provider: &'static str, python: &Path) -> Result<UnixStream, ProviderError> {
    let path = socket(provider, python).await?;
    UnixStream::connect(&path)
        .await
        .map_err(|e| ProviderError::new(provider, ErrorKind::Unavailable, e.to_string()))
}

/// Writes one frame (length, then bytes).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    provider: &'static str,
    w: &mut W,
    payload: &[u8],
) -> Result<(), ProviderError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| ProviderError::new(provider, ErrorKind::Malformed, "frame too large"))?;
    let mut bytes = Vec::with_capacity(4 + payload.len());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(payload);
    w.write_all(&bytes)
        .await
        .map_err(|e| ProviderError::new(provider, ErrorKind::Unavailable, e.to_string()))
}

/// Reads one frame of at most [`MAX_FRAME`] bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    provider: &'static str,
    r: &mut R,
) -> Result<Vec<u8>, ProviderError> {
    let broken = |e: std::io::Error| {
        ProviderError::new(
            provider,
            ErrorKind::Unavailable,
            format!("the speech process closed the connection: {e}"),
        )
    };
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(broken)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProviderError::new(
            provider,
            ErrorKind::Malformed,
            format!("a frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(broken)?;
    Ok(payload)
}

/// Reads the JSON reply frame; an `error` member becomes the provider's error.
pub async fn read_reply<R: AsyncRead + Unpin>(
    provider: &'static str,
    r: &mut R,
) -> Result<serde_json::Value, ProviderError> {
    let frame = read_frame(provider, r).await?;
    let value: serde_json::Value = serde_json::from_slice(&frame).map_err(|e| {
        ProviderError::new(
            provider,
            ErrorKind::Malformed,
            format!("not a JSON reply: {e}"),
        )
    })?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        return Err(ProviderError::new(
            provider,
            ErrorKind::Unavailable,
            error.chars().take(500).collect::<String>(),
        ));
    }
    Ok(value)
}

/// Loads a model into the speech process now, so the first turn does not wait for it.
pub async fn preload(
    provider: &'static str,
    python: &Path,
    kind: &str,
    model: &Path,
) -> Result<(), ProviderError> {
    let mut stream = connect(provider, python).await?;
    let request = serde_json::json!({"op": "load", "kind": kind, "model": model});
    write_frame(provider, &mut stream, request.to_string().as_bytes()).await?;
    read_reply(provider, &mut stream).await.map(|_| ())
}

/// Starts loading `model` in the background when a runtime is there (pipelines are built
/// on one); failures surface again, with their message, on the first real request.
pub fn preload_in_background(
    provider: &'static str,
    python: PathBuf,
    kind: &'static str,
    model: PathBuf,
) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            if let Err(e) = preload(provider, &python, kind, &model).await {
                tracing::warn!(%e, model = %model.display(), "speech model preload failed");
            }
        });
    }
}
