//! The backend's `providerConfig` as the real worker binary takes it (`VOICE_PROVIDER_CONFIG`,
//! set by the operator): `logLevel` is the log filter when `RUST_LOG` is unset, `jitterBufferMs`
//! the receive-side jitter buffer (shown by `/metrics`), an unknown key is named at start, and
//! a bad value stops the worker with the variable, key and fix in its error.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ControlPki, free_port};

/// A worker started with `config`, its stderr captured, and `RUST_LOG` unset.
struct Started {
    child: Child,
    http_port: u16,
    _pki: ControlPki,
}

fn start(config: &str) -> Started {
    let (grpc_port, http_port) = (free_port(), free_port());
    let pki = ControlPki::new();
    let child = Command::new(env!("CARGO_BIN_EXE_voice-worker"))
        .env("CONTROL_TLS_DIR", &pki.dir)
        .env("POD_IP", "127.0.0.1")
        .env("UDP_PORT", "0")
        .env("VOICE_PROVIDER_CONFIG", config)
        .env_remove("RUST_LOG")
        .args(["--grpc-port", &grpc_port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting voice-worker: {e}"));
    Started {
        child,
        http_port,
        _pki: pki,
    }
}

impl Started {
    /// `/metrics` once the worker answers.
    fn metrics(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.http_port)) {
                use std::io::Write;
                let _ = write!(
                    stream,
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                let mut body = String::new();
                let _ = stream.read_to_string(&mut body);
                if body.starts_with("HTTP/1.1 200") {
                    return body;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the worker never served /metrics"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the worker and returns everything it logged.
    fn logs(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut logs = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut logs);
        }
        logs
    }
}

/// The value of an unlabelled metric line.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn log_level_and_jitter_buffer_take_effect_and_unknown_keys_are_named() {
    let worker = start(r#"{"logLevel": "debug", "jitterBufferMs": 130, "region": "eu"}"#);
    let metrics = worker.metrics();
    // 130 ms rounds up to seven 20 ms packets.
    let target = metric(&metrics, "voice_worker_jitter_buffer_target_seconds");
    assert!((target - 0.14).abs() < 1e-9, "{target}");
    let logs = worker.logs();
    assert!(
        logs.contains("DEBUG"),
        "logLevel debug shows debug lines:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("providerConfig keys") && l.contains("region")),
        "the unused key is named:\n{logs}"
    );

    let quiet = start(r#"{"logLevel": "error"}"#);
    let metrics = quiet.metrics();
    let target = metric(&metrics, "voice_worker_jitter_buffer_target_seconds");
    assert!(
        (target - 0.04).abs() < 1e-9,
        "the default is 40 ms: {target}"
    );
    let logs = quiet.logs();
    assert!(
        !logs.contains("INFO") && !logs.contains("DEBUG"),
        "logLevel error hides info lines:\n{logs}"
    );
}

#[test]
fn a_bad_value_stops_the_worker_with_the_variable_key_and_fix() {
    let worker = start(r#"{"jitterBufferMs": 5}"#);
    let mut child = worker.child;
    let status = child.wait().expect("the worker exits");
    assert!(!status.success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("utf-8");
    assert!(
        logs.contains("VOICE_PROVIDER_CONFIG jitterBufferMs 5") && logs.contains("from 20 to 500"),
        "{logs}"
    );
}
