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
    voice_cluster::go_tool::GoTool {
        name: "otelcol",
        module: voice_cluster::layout::workspace_root().join("tests/otel/go"),
        keyed_by: &["go.mod", "go.sum", "main.go"],
        tag: "",
        package: ".",
        ldflags: String::new(),
        takes: "about 1.5 min on 2 cores",
    }
    .ensure()
}
