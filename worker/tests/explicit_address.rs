//! `advertise: Explicit` + `udpPort` through a real 1:1 NAT: the worker's mux binds
//! 127.0.0.1:P, a DNAT rule in this host's netfilter maps 127.0.77.7:P to it (as a cloud
//! load balancer or a router's port forward maps a public address to a pod), the worker
//! advertises 127.0.77.7:P, and aiortc — a client nobody here wrote — connects through the
//! NAT address and hears its tone back.
//!
//! Why iptables: a second loopback address the mux also listened on would not be a NAT
//! (the worker would answer from the address it was reached at by itself); DNAT is what a
//! real deployment has in front of the worker. The rule names only 127.0.77.7 (outside the
//! node agent's 127.0.0.0/20 pool) and one port, and is removed when the test ends. Needs
//! root and `iptables` (xtask's prerequisites install it).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{IptablesRule, Worker, aiortc_python, free_udp_port, token};

/// The "public" address of the NAT.
const NAT_ADDRESS: &str = "127.0.77.7";

/// A DNAT rule: UDP to `NAT_ADDRESS:port` goes to the worker's mux at `127.0.0.1:port`.
fn dnat(port: u16) -> IptablesRule {
    let (port, to) = (port.to_string(), format!("127.0.0.1:{port}"));
    IptablesRule::insert(
        Some("nat"),
        &[
            "OUTPUT",
            "-d",
            NAT_ADDRESS,
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ],
    )
}

#[tokio::test]
async fn the_answer_names_exactly_the_explicit_address_and_port_and_aiortc_connects_through_it() {
    let python = aiortc_python();
    let port = free_udp_port();
    let _nat = dnat(port);
    let udp_port = port.to_string();
    let worker = Worker::start_with_env(
        1,
        &[
            ("UDP_PORT", udp_port.as_str()),
            ("ADVERTISE_IP", NAT_ADDRESS),
        ],
    );
    worker.reserve("team/nat-1", "uid-nat").await;

    let out = std::env::temp_dir().join(format!("aiortc-nat-{}.pcm", std::process::id()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aiortc_echo.py");
    let base = format!("http://127.0.0.1:{}", worker.http_port);
    let join = token("team/nat-1", "uid-nat", 600);
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([base.as_str(), "team/nat-1", join.as_str(), "2"])
        .arg(&out)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the aiortc client hung"))
        .unwrap_or_else(|e| panic!("running the aiortc client: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "aiortc client failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    println!(
        "aiortc through the NAT: connect {} ms; {report}",
        report["connect_ms"]
    );
    let _ = std::fs::remove_file(&out);

    // Every candidate of the answer is the explicit address and the configured port.
    let candidates: Vec<&str> = report["answer_candidates"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    assert!(!candidates.is_empty(), "{report}");
    for candidate in &candidates {
        let fields: Vec<&str> = candidate.split_whitespace().collect();
        assert_eq!(
            (
                fields.get(2).copied(),
                fields.get(4).copied(),
                fields.get(5).copied()
            ),
            (
                Some("udp"),
                Some(NAT_ADDRESS),
                Some(port.to_string().as_str())
            ),
            "{candidate}"
        );
    }
    // And the client reached the worker through it, and heard the echo.
    assert_eq!(report["state"], "connected", "{report}");
    assert_eq!(
        report["selected_remote"],
        format!("{NAT_ADDRESS}:{port}"),
        "{report}"
    );
    assert!(
        report["round_trip_ms"].as_f64().is_some(),
        "the tone never came back: {report}"
    );
}
