//! TURN with coturn (Debian's `coturn`, started here) in its REST-credential mode
//! (`use-auth-secret` + `static-auth-secret`): the backend names the shared secret
//! (`authSecretRef`), the worker mints per-session credentials, and headless Chromium with
//! `iceTransportPolicy: 'relay'` (the demo page's `&relay=1`) joins the session through
//! coturn and hears its tone back; with a worker holding the wrong secret the page fails
//! with a clear error. coturn's own log shows the allocation under the session's username.
//!
//! coturn refuses to relay to loopback peers by default; everything here is loopback, so it
//! runs with `--allow-loopback-peers` (never in production) and listens and relays on
//! 127.0.0.1 only. Chromium is stock: it reaches the loopback TURN server from this
//! machine's own address.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::browser::Browser;
use common::{Worker, free_port, sine, token};

/// The secret coturn and the worker share.
const SECRET: &str = "turn-shared-secret-for-the-test";

/// A coturn process on 127.0.0.1, killed on drop; its log is a file.
struct Coturn {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Coturn {
    fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("voice-coturn-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let log =
            std::fs::File::create(dir.join("turnserver.log")).unwrap_or_else(|e| panic!("{e}"));
        // Relay ports from a range above the ephemeral ports the other tests draw from.
        let relay_low = 61_000 + (port % 20) * 100;
        let child = std::process::Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint"])
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay_low}"))
            .arg(format!("--max-port={}", relay_low + 99))
            .args(["--use-auth-secret", &format!("--static-auth-secret={SECRET}")])
            .args(["--realm=voice.test", "--allow-loopback-peers"])
            .args(["--log-file=stdout", "--simple-log", "--verbose"])
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting turnserver (apt-get install coturn; cargo xtask test installs it): {e}"));
        let coturn = Self { child, port, dir };
        let started = std::time::Instant::now();
        while !coturn.log().contains("UDP listener opened on: 127.0.0.1") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "coturn did not start:\n{}",
                coturn.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        coturn
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn worker_with_turn(coturn: &Coturn, secret: &str) -> Worker {
    let ice = serde_json::json!([{
        "urls": [format!("turn:127.0.0.1:{}?transport=udp", coturn.port)],
        "authSecretRef": {"name": "coturn", "key": "static-auth-secret"},
    }])
    .to_string();
    Worker::start_with_env(
        1,
        &[
            ("ICE_SERVERS", ice.as_str()),
            ("VOICE_SECRET_COTURN_STATIC_AUTH_SECRET", secret),
        ],
    )
}

#[tokio::test]
async fn chromium_relays_through_coturn_with_session_credentials_and_a_wrong_secret_fails_clearly()
{
    let coturn = Coturn::start();

    // The right secret: the call goes through coturn and the tone comes back.
    let worker = worker_with_turn(&coturn, SECRET);
    worker.reserve("team/relay-1", "uid-r1").await;
    let join = token("team/relay-1", "uid-r1", 600);
    let url = format!(
        "http://127.0.0.1:{}/demo?session=team/relay-1&relay=1&token={join}",
        worker.http_port
    );
    let mut browser = Browser::open(&url, &sine(1_000.0, 48_000, 2.0), &[]).await;
    let (state, connected_after) = browser
        .watch_demo(Duration::from_secs(40), |s| {
            s["maxAudioLevel"].as_f64().unwrap_or(0.0) > 0.05 && s["localCandidateType"] == "relay"
        })
        .await;
    println!("chromium over coturn: connected after {connected_after:?}; {state}");
    assert!(
        state["errors"].as_array().is_some_and(Vec::is_empty),
        "{state}"
    );
    assert_eq!(state["iceTransportPolicy"], "relay", "{state}");
    assert_eq!(state["connectionState"], "connected", "{state}");
    assert_eq!(
        state["localCandidateType"], "relay",
        "the media did not go through TURN: {state}"
    );
    assert!(
        state["maxAudioLevel"].as_f64().unwrap_or(0.0) > 0.05,
        "the tone never came back: {state}"
    );
    // coturn allocated for the session's time-limited username (`<expiry>:<session>`).
    let log = coturn.log();
    let allocation = log
        .lines()
        .find(|l| l.contains(":team/relay-1>") && l.contains("ALLOCATE processed, success"))
        .unwrap_or_else(|| {
            panic!("no successful allocation for team/relay-1 in coturn's log:\n{log}")
        });
    println!("coturn: {allocation}");
    drop(browser);
    drop(worker);

    // A worker with the wrong secret mints credentials coturn refuses: the page says so.
    let worker = worker_with_turn(&coturn, "not-the-secret");
    worker.reserve("team/relay-2", "uid-r2").await;
    let join = token("team/relay-2", "uid-r2", 600);
    let url = format!(
        "http://127.0.0.1:{}/demo?session=team/relay-2&relay=1&token={join}",
        worker.http_port
    );
    let mut browser = Browser::open(&url, &sine(1_000.0, 48_000, 2.0), &[]).await;
    let (state, _) = browser.watch_demo(Duration::from_secs(40), |_| false).await;
    println!("chromium with a wrong TURN secret: {state}");
    assert_ne!(state["connectionState"], "connected", "{state}");
    let errors = state["errors"].to_string();
    assert!(
        errors.contains("ICE failed"),
        "no clear error on the page: {state}"
    );
    assert!(
        errors.contains("401"),
        "the TURN refusal is not named: {state}"
    );
    let log = coturn.log();
    assert!(
        log.lines()
            .any(|l| l.contains(":team/relay-2>") && l.contains("401")),
        "coturn's log shows no refusal for team/relay-2:\n{log}"
    );
}
