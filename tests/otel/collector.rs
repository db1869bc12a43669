//! A real OpenTelemetry Collector for the trace tests: the core distribution's OTLP receiver
//! and contrib's file exporter, built from the pinned Go module `tests/otel/go` once and cached
//! like Helm: `~/.cache/voice-operator/otelcol/otelcol-<hash of go.mod+go.sum+main.go>/otelcol`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// The collector binary, built on first use (about 1.5 min on 2 cores with a warm module
/// cache; then reused from the cache).
pub fn binary() -> &'static Path {
    BINARY.get_or_init(|| ensure().unwrap_or_else(|e| panic!("building the collector: {e}")))
}

/// A running collector that writes every trace it receives to a JSON-lines file.
pub struct Collector {
    child: Child,
    /// `http://127.0.0.1:<port>`: its OTLP/gRPC receiver.
    pub endpoint: String,
    spans_file: PathBuf,
    log: PathBuf,
}

impl Collector {
    /// Starts a collector whose files live in `dir`; waits until its receiver listens.
    pub fn start(dir: &Path) -> Collector {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0");
        let spans_file = dir.join("spans.jsonl");
        let _ = std::fs::remove_file(&spans_file);
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{port}\n\
                 exporters:\n  file:\n    path: {}\n    flush_interval: 200ms\n\
                 service:\n  telemetry:\n    metrics:\n      level: none\n\
                 \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
                spans_file.display()
            ),
        )
        .expect("writing the collector config");
        let log = dir.join("collector.log");
        let out = File::create(&log).expect("creating the collector log");
        let err = out.try_clone().expect("log handle duplicates");
        let child = Command::new(binary())
            .arg(format!("--config=file:{}", config.display()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting the collector");
        let mut collector = Collector {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            spans_file,
            log,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = collector.child.try_wait() {
                panic!("the collector exited ({status}):\n{}", collector.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the collector did not listen on {port} within 30 s:\n{}",
                collector.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        collector
    }

    /// The collector's own log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every span exported so far, flattened: the span's OTLP JSON with the
    /// resource's `service.name` added as `"service"`.
    pub fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.spans_file).unwrap_or_default();
        let mut spans = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(request) = serde_json::from_str::<Value>(line) else {
                continue; // a line still being written
            };
            for rs in request["resourceSpans"].as_array().into_iter().flatten() {
                let service = attribute(&rs["resource"], "service.name").unwrap_or_default();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        let mut span = span.clone();
                        span["service"] = Value::String(service.clone());
                        spans.push(span);
                    }
                }
            }
        }
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The string value of attribute `key` of an OTLP JSON object (span or resource).
pub fn attribute(object: &Value, key: &str) -> Option<String> {
    object["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
        .map(str::to_owned)
}

fn ensure() -> Result<PathBuf, String> {
    let module = voice_cluster::layout::workspace_root().join("tests/otel/go");
    let base = voice_cluster::layout::cache_root()
        .parent()
        .map(|p| p.join("otelcol"))
        .ok_or("the cache root has no parent")?;
    let dir = base.join(format!("otelcol-{}", module_digest(&module)?));
    let binary = dir.join("otelcol");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Test binaries running at once build it once: the others wait here, then reuse it.
    let lock_path = dir.join("build.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if binary.is_file() {
        return Ok(binary);
    }
    let partial = dir.join(format!("otelcol.partial-{}", std::process::id()));
    eprintln!(
        "building the OpenTelemetry Collector from its Go modules (about 1.5 min on 2 cores; cached in {})…",
        dir.display()
    );
    let started = Instant::now();
    let out = Command::new("go")
        .current_dir(&module)
        // Never let go fetch a toolchain (no downloads here).
        .env("GOTOOLCHAIN", "local")
        .args(["build", "-trimpath", "-o"])
        .arg(&partial)
        .arg(".")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running go build in {}: {e}", module.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "go build of the collector failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&partial, &binary)
        .map_err(|e| format!("renaming {}: {e}", partial.display()))?;
    eprintln!("built the collector in {} s", started.elapsed().as_secs());
    Ok(binary)
}

/// 16 hex digits of FNV-1a over go.mod ‖ go.sum ‖ main.go: a new pin or a new component set
/// gets a new cache directory.
fn module_digest(module: &Path) -> Result<String, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in ["go.mod", "go.sum", "main.go"] {
        let path = module.join(file);
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}
