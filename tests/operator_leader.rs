//! Leader election: two operator processes, one Lease; killing the leader hands the work to
//! the standby, which keeps the status up to date.

mod operator_common;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use operator_common::*;
use serde_json::json;
use voice_tests::{OperatorProcess, TestNamespace, install_crds, kubectl_ok};

const T: Duration = Duration::from_secs(60);

async fn holder(ns: &TestNamespace) -> Result<String, String> {
    let lease = ns
        .api::<Lease>()
        .get("voice-operator")
        .await
        .map_err(|e| e.to_string())?;
    lease
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "no holder".to_owned())
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_dies() {
    install_crds();
    let ns = TestNamespace::new("op-leader").await;
    let (provider, manifest) = provider_manifest(&ns, "p", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    apply(&ns, &[&manifest]);
    let mut a = OperatorProcess::start(ns.name(), "a");
    let first = wait_for(T, "a lease holder", || holder(&ns)).await;
    assert!(first.starts_with(&format!("{}-a", ns.name())), "{first}");
    let mut b = OperatorProcess::start(ns.name(), "b");
    apply(
        &ns,
        &[&backend_manifest(
            "assistant",
            &provider,
            json!({"scaling": {"minWorkers": 0}}),
        )],
    );
    wait_condition(&ns, "assistant", "Accepted", "True", T).await;
    // The standby does nothing but is ready (so a PDB lets the leader be evicted).
    assert_eq!(
        leader_gauge(&http_get(b.metrics_port(), "/metrics")),
        Some(0)
    );
    assert_eq!(http_get(b.metrics_port(), "/readyz"), "standby");
    assert_eq!(http_get(a.metrics_port(), "/readyz"), "ready");

    let killed = Instant::now();
    a.kill();
    kubectl_ok(&[
        "scale",
        "voicebackend/assistant",
        "-n",
        ns.name(),
        "--replicas=2",
    ]);
    wait_for(T, "the standby to write desired = 2", || async {
        let s = backend_status(&ns, "assistant").await?;
        if s.workers.desired == 2 {
            Ok(())
        } else {
            Err(format!("{:?}", s.workers))
        }
    })
    .await;
    eprintln!(
        "standby took over and updated status {:?} after the leader was killed",
        killed.elapsed()
    );
    let second = holder(&ns).await.expect("holder");
    assert!(second.starts_with(&format!("{}-b", ns.name())), "{second}");
    assert!(b.is_running(), "{}", b.log_tail(20));
    assert_eq!(
        leader_gauge(&http_get(b.metrics_port(), "/metrics")),
        Some(1)
    );
    // A clean stop exits 0 and releases the lease.
    assert!(b.terminate(), "{}", b.log_tail(20));
    wait_for(T, "the lease to be released", || async {
        match holder(&ns).await {
            Err(_) => Ok(()),
            Ok(h) => Err(h),
        }
    })
    .await;
}

/// A panic in one controller (here the provider controller, made to panic by the debug-only
/// `voicebackends.dev/test-panic` annotation) must not leave a leader that renews its Lease
/// and does nothing: the leader exits non-zero and the standby leads within the lease duration.
#[tokio::test]
async fn a_controller_panic_makes_the_leader_exit_and_the_standby_lead() {
    install_crds();
    let ns = TestNamespace::new("op-panic").await;
    let (lease_secs, renew_secs) = (6u64, 1u64);
    let flags = [
        "--lease-duration-seconds",
        "6",
        "--lease-renew-seconds",
        "1",
    ];
    let mut a = OperatorProcess::start_with(ns.name(), "a", &flags);
    let first = wait_for(T, "a lease holder", || holder(&ns)).await;
    assert!(first.starts_with(&format!("{}-a", ns.name())), "{first}");
    let mut b = OperatorProcess::start_with(ns.name(), "b", &flags);
    let standby_port = b.metrics_port();
    wait_for(T, "the standby to serve", || async move {
        std::net::TcpStream::connect(("127.0.0.1", standby_port))
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(http_get(standby_port, "/readyz"), "standby");
    assert_eq!(http_get(a.metrics_port(), "/healthz"), "ok");

    let (provider, mut manifest) = provider_manifest(&ns, "boom", json!({}));
    let _cleanup = ProviderCleanup(vec![provider.clone()]);
    manifest["metadata"]["annotations"] =
        json!({"voicebackends.dev/test-panic": "provider-controller"});
    apply(&ns, &[&manifest]);
    let status = a.wait_exit(T).unwrap_or_else(|| {
        panic!(
            "the leader still runs after its controller panicked:\n{}",
            a.log_tail(30)
        )
    });
    let exited = Instant::now();
    assert_eq!(status.code(), Some(1), "{}", a.log_tail(30));
    let log = std::fs::read_to_string(a.log()).expect("leader log");
    assert!(log.contains("panicking on purpose"), "{}", a.log_tail(30));
    assert!(
        log.contains("controller panicked while leading; exiting"),
        "{}",
        a.log_tail(30)
    );
    // The trigger has done its job; the new leader must not trip over it too.
    kubectl_ok(&[
        "annotate",
        "voiceprovider",
        &provider,
        "voicebackends.dev/test-panic-",
    ]);

    let second = wait_for(T, "the standby to lead", || async {
        match holder(&ns).await {
            Ok(h) if h.starts_with(&format!("{}-b", ns.name())) => Ok(h),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let took = exited.elapsed();
    eprintln!("standby {second} led {took:?} after the leader exited (lease {lease_secs}s)");
    // It waits for the lease to expire (it was renewed at most `renew` before the exit), then
    // retries every `renew` period: the lease duration plus one retry, with a second to spare.
    assert!(
        took <= Duration::from_secs(lease_secs + renew_secs + 1),
        "took {took:?}"
    );
    // The new leader runs the same provider controller, which accepts the (now plain) provider.
    wait_for(T, "the new leader to accept the provider", || async {
        let p = kube::Api::<voice_crds::VoiceProvider>::all(ns.client())
            .get(&provider)
            .await
            .map_err(|e| e.to_string())?;
        match provider_condition(&p, "Accepted") {
            Some((status, _, _)) if status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(b.is_running(), "{}", b.log_tail(20));
    assert_eq!(http_get(b.metrics_port(), "/healthz"), "ok");
    assert!(b.terminate(), "{}", b.log_tail(20));
}

/// A controller that never finishes stopping (the allocator, held by a failpoint) must not
/// keep a SIGTERMed operator alive until the kubelet's SIGKILL: it exits 1 within
/// `--shutdown-timeout-seconds`, naming the controller, and keeps its Lease (releasing it
/// while the controller might still write would let the standby lead beside it).
#[tokio::test]
async fn a_controller_that_never_stops_cannot_hold_the_operator_past_its_shutdown_limit() {
    install_crds();
    let ns = TestNamespace::new("op-stuck").await;
    let limit = 2u64;
    let mut op = OperatorProcess::start_with_env(
        ns.name(),
        "a",
        &["--shutdown-timeout-seconds", &limit.to_string()],
        &[("FAILPOINTS", "allocator-stop-hangs=return")],
    );
    let port = op.metrics_port();
    wait_for(T, "the operator to lead", || async move {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => match leader_gauge(&http_get(port, "/metrics")) {
                Some(1) => Ok(()),
                other => Err(format!("leader gauge {other:?}")),
            },
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let identity = holder(&ns).await.expect("the leader holds the lease");

    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &op.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(sent.success());
    let status = op.wait_exit(T).unwrap_or_else(|| {
        panic!(
            "still running {T:?} after SIGTERM with a {limit}s limit:\n{}",
            op.log_tail(30)
        )
    });
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM (limit {limit}s) with {status}");
    assert_eq!(status.code(), Some(1), "{}", op.log_tail(30));
    assert!(
        took >= Duration::from_secs(limit) && took < Duration::from_secs(limit + 5),
        "took {took:?}"
    );
    let log = std::fs::read_to_string(op.log()).expect("operator log");
    let said = log
        .lines()
        .find(|l| l.contains("controllers did not stop in time"))
        .unwrap_or_else(|| panic!("no word of the stuck controller:\n{}", op.log_tail(30)));
    assert!(said.contains("allocator"), "{said}");
    assert!(!said.contains("backend-controller"), "{said}");
    assert_eq!(holder(&ns).await.as_deref(), Ok(identity.as_str()));
}

/// A SIGTERM in the first moments of leading, before the controllers' first lists: kube's
/// graceful shutdown alone would wait forever for a list its own shutdown stopped
/// (`operator/src/controller_stop.rs`). The operator must still exit 0 and release its Lease.
#[tokio::test]
async fn a_sigterm_right_after_winning_the_lease_still_stops_cleanly() {
    install_crds();
    let ns = TestNamespace::new("op-early").await;
    let mut op = OperatorProcess::start(ns.name(), "a");
    let deadline = Instant::now() + T;
    // The log line, not the Lease: polling the API would give the lists time to finish.
    while !std::fs::read_to_string(op.log())
        .unwrap_or_default()
        .contains(" leading")
    {
        assert!(Instant::now() < deadline, "never led:\n{}", op.log_tail(20));
        std::thread::sleep(Duration::from_millis(2));
    }
    let signalled = Instant::now();
    assert!(op.terminate(), "{}", op.log_tail(30));
    eprintln!("stopped {:?} after SIGTERM", signalled.elapsed());
    wait_for(T, "the lease to be released", || async {
        match holder(&ns).await {
            Err(_) => Ok(()),
            Ok(h) => Err(h),
        }
    })
    .await;
}
