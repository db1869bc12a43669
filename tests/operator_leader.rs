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
    assert!(http_get(b.metrics_port(), "/metrics").contains("voice_operator_leader 0"));
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
    assert!(http_get(b.metrics_port(), "/metrics").contains("voice_operator_leader 1"));
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
