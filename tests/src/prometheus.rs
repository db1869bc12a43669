//! A real Prometheus (Debian package `prometheus`) started by a test, scraping targets it finds
//! through file-based service discovery, queried over its HTTP API.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One scrape target: `host:port` and the labels Prometheus attaches to its series.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of a `/metrics` endpoint.
    pub address: String,
    /// Extra labels (`job`, `backend`, `pod`, …).
    pub labels: Vec<(String, String)>,
}

/// A running Prometheus, killed when dropped.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping every second whatever [`Prometheus::set_targets`] lists;
    /// its config, data and log live in a fresh directory under `target/voice-prometheus/`.
    /// Panics when the binary is missing (`cargo xtask test` installs the Debian package).
    pub fn start(name: &str) -> Prometheus {
        Self::start_with(name, Vec::new())
    }

    /// [`Prometheus::start`] with more scrape configs (as JSON values of Prometheus' YAML
    /// schema, e.g. a `kubernetes_sd_configs` job) beside the file-discovered job `voice`.
    pub fn start_with(name: &str, extra_scrape_configs: Vec<Value>) -> Prometheus {
        let dir = voice_cluster::layout::target_dir()
            .join("voice-prometheus")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("creating the Prometheus directory");
        std::fs::write(dir.join("targets.json"), "[]").expect("writing targets");
        let mut scrape_configs = vec![json!({
            "job_name": "voice",
            "file_sd_configs": [{
                "files": [dir.join("targets.json").display().to_string()],
                "refresh_interval": "1s",
            }],
        })];
        scrape_configs.extend(extra_scrape_configs);
        // YAML is a superset of JSON: the config is written as JSON.
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        });
        std::fs::write(dir.join("prometheus.yml"), config.to_string()).expect("writing the config");
        let port = free_port();
        let log = File::create(dir.join("prometheus.log")).expect("creating the log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect(
                "starting prometheus (Debian package `prometheus`; cargo xtask test installs it)",
            );
        let mut p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = p.get("/-/ready") {
                return p;
            }
            assert!(
                matches!(p.child.try_wait(), Ok(None)),
                "prometheus exited: {}",
                p.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Replaces the file-discovered targets (written atomically; Prometheus rereads it).
    pub fn set_targets(&self, targets: &[Target]) {
        let groups: Vec<Value> = targets
            .iter()
            .map(|t| {
                let labels: serde_json::Map<String, Value> = t
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                json!({"targets": [t.address], "labels": labels})
            })
            .collect();
        let tmp = self.dir.join("targets.json.tmp");
        std::fs::write(&tmp, Value::Array(groups).to_string()).expect("writing targets");
        std::fs::rename(&tmp, self.dir.join("targets.json")).expect("renaming targets");
    }

    /// The port of its HTTP API on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An instant PromQL query; the `data.result` vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(promql)))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{promql}: HTTP {status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of a query that returns one series, if it returns exactly one.
    pub fn scalar(&self, promql: &str) -> Result<f64, String> {
        let result = self.query(promql)?;
        match result.as_slice() {
            [one] => one["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{promql}: no value in {one}")),
            other => Err(format!("{promql}: {} series: {other:?}", other.len())),
        }
    }

    /// Health of each active target as (address, health, last error).
    pub fn targets(&self) -> Result<Vec<(String, String, String)>, String> {
        let (_, body) = self.get("/api/v1/targets?state=active")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                    t["lastError"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// The end of its log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response: {response}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head}"))?;
        Ok((status, body.to_owned()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Kept after a failure, for its log and data.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Metric family names an exposition declares in its `# TYPE` lines, with their type;
/// a histogram or summary also yields its `_bucket`/`_sum`/`_count` series names.
pub fn exposition_names(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        out.push((name.to_owned(), kind.to_owned()));
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                if kind == "summary" && suffix == "_bucket" {
                    continue;
                }
                out.push((format!("{name}{suffix}"), kind.to_owned()));
            }
        }
    }
    out
}
