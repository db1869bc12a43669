//! Readiness and liveness probes and lifecycle hooks: httpGet (HTTP or HTTPS), tcpSocket and
//! exec against the pod's loopback address, with kubelet's timing and thresholds.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The result of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Success,
    /// The check failed, with why.
    Failure(String),
}

/// Consecutive-result bookkeeping of one probe: when it is due and what it concluded.
#[derive(Debug, Clone)]
pub struct Tracker {
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    timeout: Duration,
    next_due: Instant,
    successes: u32,
    failures: u32,
    passing: bool,
}

impl Tracker {
    /// A tracker for `probe` on a container started at `started`; `initially_passing` is what
    /// the probe reports before its first run (false for readiness, true for liveness).
    pub fn new(probe: &Probe, started: Instant, initially_passing: bool) -> Tracker {
        let secs = |v: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
        };
        let count =
            |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1);
        Tracker {
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            next_due: started + secs(probe.initial_delay_seconds, 0),
            successes: 0,
            failures: 0,
            passing: initially_passing,
        }
    }

    /// Whether a run is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_due
    }

    /// How long one run may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records a run that finished at `now`; returns the (possibly new) conclusion.
    pub fn record(&mut self, outcome: &Outcome, now: Instant) -> bool {
        self.next_due = now + self.period;
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= self.success_threshold {
                    self.passing = true;
                }
            }
            Outcome::Failure(_) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures >= self.failure_threshold {
                    self.passing = false;
                }
            }
        }
        self.passing
    }

    /// The current conclusion.
    pub fn passing(&self) -> bool {
        self.passing
    }
}

/// One check, whichever of a probe's or a hook's handlers is set.
#[derive(Debug, Clone)]
pub enum Check {
    /// GET on the pod address.
    Http(HTTPGetAction),
    /// TCP connect on the pod address.
    Tcp(TCPSocketAction),
    /// A local command; exit 0 passes.
    Exec(ExecAction),
    /// A preStop `sleep`.
    Sleep(Duration),
}

impl Check {
    /// The check of a probe, if it has one this agent supports.
    pub fn of_probe(probe: &Probe) -> Option<Check> {
        probe
            .http_get
            .clone()
            .map(Check::Http)
            .or_else(|| probe.tcp_socket.clone().map(Check::Tcp))
            .or_else(|| probe.exec.clone().map(Check::Exec))
    }

    /// The check of a lifecycle hook, if it has one this agent supports.
    pub fn of_hook(hook: &LifecycleHandler) -> Option<Check> {
        hook.http_get
            .clone()
            .map(Check::Http)
            .or_else(|| hook.tcp_socket.clone().map(Check::Tcp))
            .or_else(|| hook.exec.clone().map(Check::Exec))
            .or_else(|| {
                hook.sleep
                    .as_ref()
                    .map(|s| Duration::from_secs(u64::try_from(s.seconds).unwrap_or(0)))
                    .map(Check::Sleep)
            })
    }

    /// Runs the check against `pod_ip` within `timeout`.
    pub async fn run(
        &self,
        container: &Container,
        pod_ip: IpAddr,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Outcome {
        let work = async {
            match self {
                Check::Http(get) => {
                    let port = resolve_port(&get.port, container)?;
                    let path = get.path.as_deref().unwrap_or("/");
                    let addr = SocketAddr::new(pod_ip, port);
                    let status = if get.scheme.as_deref() == Some("HTTPS") {
                        let stream = crate::probe_tls::connect(addr).await?;
                        status_of_get(stream, addr, path).await?
                    } else {
                        http_get(addr, path).await?
                    };
                    if (200..400).contains(&status) {
                        Ok(())
                    } else {
                        Err(format!("GET {path} answered {status}"))
                    }
                }
                Check::Tcp(tcp) => {
                    let port = resolve_port(&tcp.port, container)?;
                    TcpStream::connect((pod_ip, port))
                        .await
                        .map(drop)
                        .map_err(|e| format!("connect {pod_ip}:{port}: {e}"))
                }
                Check::Exec(exec) => run_exec(exec, env).await,
                Check::Sleep(d) => {
                    tokio::time::sleep(*d).await;
                    Ok(())
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(())) => Outcome::Success,
            Ok(Err(why)) => Outcome::Failure(why),
            Err(_) => Outcome::Failure(format!("timed out after {timeout:?}")),
        }
    }
}

/// A numeric port, or a named one looked up in the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// A minimal HTTP/1.1 GET that only reads the status line: probes need no body, and keeping
/// it this small avoids pulling an HTTP client into the agent.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    status_of_get(stream, addr, path).await
}

/// Sends the GET on `stream` (plain or TLS) and reads the status code.
async fn status_of_get<S>(mut stream: S, addr: SocketAddr, path: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: voice-node-agent\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if n == 0 || head.len() > 8192 {
            return Err(format!("{addr} closed before a status line"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr} sent no HTTP status line: {:?}", line.lines().next()))
}

async fn run_exec(exec: &ExecAction, env: &[(String, String)]) -> Result<(), String> {
    let argv = exec.command.clone().unwrap_or_default();
    let Some((program, args)) = argv.split_first() else {
        return Err("exec has no command".into());
    };
    let status = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(period: i32, success: i32, failure: i32, delay: i32) -> Probe {
        Probe {
            period_seconds: Some(period),
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            initial_delay_seconds: Some(delay),
            ..Probe::default()
        }
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let t0 = Instant::now();
        let mut t = Tracker::new(&probe(1, 2, 3, 5), t0, false);
        assert!(!t.due(t0));
        assert!(t.due(t0 + Duration::from_secs(5)));
        let fail = Outcome::Failure("x".into());
        assert!(!t.record(&Outcome::Success, t0));
        assert!(
            t.record(&Outcome::Success, t0),
            "two successes make it pass"
        );
        assert!(t.record(&fail, t0));
        assert!(t.record(&fail, t0));
        assert!(
            t.record(&Outcome::Success, t0),
            "a success resets the failure count"
        );
        assert!(t.record(&fail, t0) && t.record(&fail, t0));
        assert!(!t.record(&fail, t0), "three failures in a row make it fail");
        assert!(!t.due(t0 + Duration::from_millis(500)));
    }

    #[tokio::test]
    async fn http_get_reads_the_status_and_tcp_checks_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                    .await;
            }
        });
        assert_eq!(http_get(addr, "/readyz").await, Ok(503));
        let container = Container::default();
        let http = Check::Http(HTTPGetAction {
            path: Some("/readyz".into()),
            port: IntOrString::Int(i32::from(addr.port())),
            ..HTTPGetAction::default()
        });
        let timeout = Duration::from_secs(2);
        assert!(matches!(
            http.run(&container, addr.ip(), &[], timeout).await,
            Outcome::Failure(_)
        ));
        let tcp = Check::Tcp(TCPSocketAction {
            port: IntOrString::Int(i32::from(addr.port())),
            ..TCPSocketAction::default()
        });
        assert_eq!(
            tcp.run(&container, addr.ip(), &[], timeout).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn an_https_probe_accepts_any_certificate_and_fails_on_a_plain_port() {
        let certified = rcgen::generate_simple_self_signed(vec!["worker.example".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap_or_else(|e| panic!("{e}"));
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap_or_else(|e| panic!("{e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let Ok(mut s) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                let _ = s.shutdown().await;
            }
        });
        let probe = |scheme: Option<&str>| {
            Check::Http(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(addr.port())),
                scheme: scheme.map(str::to_owned),
                ..HTTPGetAction::default()
            })
        };
        let (container, timeout) = (Container::default(), Duration::from_secs(2));
        assert_eq!(
            probe(Some("HTTPS"))
                .run(&container, addr.ip(), &[], timeout)
                .await,
            Outcome::Success,
            "a self-signed certificate for another name passes, as with the kubelet"
        );
        assert!(
            matches!(
                probe(None).run(&container, addr.ip(), &[], timeout).await,
                Outcome::Failure(_)
            ),
            "plain HTTP to a TLS port fails"
        );
    }
}
