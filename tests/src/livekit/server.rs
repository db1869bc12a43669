//! One livekit-server per test: free ports, a config file and a debug log in a directory of its
//! own, media on the host's LiveKit address ([`super::media_address`]).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server gets to answer on its HTTP port.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Fresh ports are tried this many times when another process took one first.
const PORT_ATTEMPTS: usize = 3;

/// A running livekit-server, killed (and its directory removed unless the test failed) on drop.
#[derive(Debug)]
pub struct LiveKitServer {
    child: Child,
    dir: PathBuf,
    address: Ipv4Addr,
    port: u16,
    api_key: String,
    api_secret: String,
}

impl LiveKitServer {
    /// Builds livekit-server if the cache has none, sets up the host's LiveKit address, then
    /// starts a server with its own key pair and waits until its HTTP port answers. Panics with
    /// the server's log when it does not come up.
    pub fn start() -> LiveKitServer {
        let binary = voice_cluster::livekit_server().unwrap_or_else(|e| panic!("{e}"));
        let address = super::media_address();
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::try_start(&binary, address) {
                Ok(server) => return server,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("livekit-server did not start:\n{log}"),
            }
        }
        panic!("livekit-server found its ports taken {PORT_ATTEMPTS} times:\n{last_log}");
    }

    fn try_start(binary: &Path, address: Ipv4Addr) -> Result<LiveKitServer, String> {
        let suffix = getrandom::u64().expect("the OS has a random source");
        let dir =
            std::env::temp_dir().join(format!("livekit-{}-{suffix:016x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let api_key = "voice-tests".to_owned();
        let api_secret = format!(
            "{:016x}{:016x}{:016x}",
            getrandom::u64().expect("random"),
            getrandom::u64().expect("random"),
            getrandom::u64().expect("random")
        );
        let port = free_tcp_port(address);
        let rtc_tcp_port = free_tcp_port(Ipv4Addr::UNSPECIFIED);
        let rtc_udp_port = free_udp_port(address);
        let config = config_yaml(
            address,
            port,
            rtc_tcp_port,
            rtc_udp_port,
            &api_key,
            &api_secret,
        );
        let config_path = dir.join("livekit.yaml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("{}: {e}", config_path.display()));
        let log_path = dir.join("livekit.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle on the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut server = LiveKitServer {
            child,
            dir,
            address,
            port,
            api_key,
            api_secret,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = server.log();
                // Nothing worth keeping: the next attempt gets a directory of its own.
                let _ = std::fs::remove_dir_all(&server.dir);
                return Err(format!("exited ({status}):\n{log}"));
            }
            if answers_ok(address, port) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                panic!(
                    "livekit-server did not answer on {address}:{port} within {READY_WITHIN:?}:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ws://<address>:<port>`: what users and workers dial.
    pub fn url(&self) -> String {
        format!("ws://{}:{}", self.address, self.port)
    }

    /// The API key tokens are signed for.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The API secret tokens are signed with (48 hex digits, fresh per server).
    pub fn api_secret(&self) -> &str {
        &self.api_secret
    }

    /// The server's stdout and stderr (debug level).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("livekit.log")
    }

    /// The log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for LiveKitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "livekit-server's log is kept: {}",
                self.log_path().display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The server's config: signaling on `address:port`, media on `address` alone (UDP on one
/// port, TCP on another), `address` advertised as is, no STUN server that exists (nothing may
/// reach out to the internet).
fn config_yaml(
    address: Ipv4Addr,
    port: u16,
    rtc_tcp_port: u16,
    rtc_udp_port: u16,
    api_key: &str,
    api_secret: &str,
) -> String {
    format!(
        "\
port: {port}
bind_addresses: [\"{address}\"]
keys:
  {api_key}: {api_secret}
logging:
  level: debug
rtc:
  node_ip: {address}
  use_external_ip: false
  tcp_port: {rtc_tcp_port}
  udp_port: {rtc_udp_port}
  ips:
    includes: [\"{address}/32\"]
  # Handed to every participant as its ICE servers (with none, the server hands out public
  # STUN servers), and unused by the server itself while node_ip is set: a dead local port.
  stun_servers: [\"127.0.0.1:9\"]
"
    )
}

/// Whether `GET /` on the server's HTTP port answers 200 (livekit-server answers `OK`).
fn answers_ok(address: Ipv4Addr, port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&(address, port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: livekit\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

fn free_tcp_port(address: Ipv4Addr) -> u16 {
    TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding {address}:0 (TCP): {e}"))
}

fn free_udp_port(address: Ipv4Addr) -> u16 {
    UdpSocket::bind((address, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding {address}:0 (UDP): {e}"))
}
