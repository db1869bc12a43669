//! End to end: the operator, real worker processes run by the local node agent, and the real
//! API server. Workers answer gRPC health and stats on their own 127.0.0.x address.

mod operator_common;

use std::time::{Duration, Instant};

use operator_common::*;
use serde_json::json;
use voice_crds::VoiceBackend;
use voice_tests::kubectl_ok;

const T: Duration = Duration::from_secs(90);

#[tokio::test]
async fn ready_workers_make_the_backend_healthy_and_scale_down_drains_the_surplus() {
    let stack = OperatorStack::start("op-e2e-scale").await;
    let ns = &stack.ns;
    let operator = &stack.operator;
    let start = Instant::now();
    stack.apply_backend(
        "assistant",
        json!({"scaling": {"minWorkers": 1}, "replicas": 2}),
    );

    let status = wait_healthy(ns, "assistant", 2, T).await;
    eprintln!(
        "2 workers Healthy/Connected {:?} after the backend was applied",
        start.elapsed()
    );
    assert_eq!(status.active_sessions, 0);
    assert!(status.last_health_check.is_some());
    assert_eq!(status.worker_statuses.len(), 2);
    for w in &status.worker_statuses {
        assert_eq!(w.phase, voice_crds::WorkerPhase::Ready, "{w:?}");
        assert_eq!(w.capacity, 2, "{w:?}");
    }
    wait_event(ns, "assistant", "ConnectionConnected", T).await;
    wait_event(ns, "assistant", "HealthHealthy", T).await;

    kubectl_ok(&[
        "scale",
        "voicebackend/assistant",
        "-n",
        ns.name(),
        "--replicas=4",
    ]);
    wait_healthy(ns, "assistant", 4, T).await;

    let start = Instant::now();
    kubectl_ok(&[
        "scale",
        "voicebackend/assistant",
        "-n",
        ns.name(),
        "--replicas=1",
    ]);
    let status = wait_healthy(ns, "assistant", 1, T).await;
    eprintln!("4 → 1 drained and deleted in {:?}", start.elapsed());
    assert_eq!(status.workers.draining, 0);
    let pods = live_pods(ns, "assistant").await;
    assert_eq!(pods.len(), 1);
    assert!(!pod_draining(&pods[0]));
    wait_condition(ns, "assistant", "Progressing", "False", T).await;

    let metrics = http_get(operator.metrics_port(), "/metrics");
    let ready = format!(
        "voice_workers{{backend=\"{}/assistant\",state=\"ready\"}} 1",
        ns.name()
    );
    assert!(metrics.contains(&ready), "{ready} missing:\n{metrics}");
    assert!(
        metrics.contains("voice_health_checks_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert_eq!(leader_gauge(&metrics), Some(1), "{metrics}");
    // Figures, not assertions: mean reconcile and health-check times of this run.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let reconcile = "voice_operator_reconcile_duration_seconds";
    let backend = "{controller=\"backend\"}";
    let (sum, count) = (
        value(&format!("{reconcile}_sum{backend}")),
        value(&format!("{reconcile}_count{backend}")),
    );
    let (hsum, hcount) = (
        value("voice_health_check_duration_seconds_sum"),
        value("voice_health_check_duration_seconds_count"),
    );
    eprintln!(
        "backend reconciles: {count}, mean {:.1} ms; health checks: {hcount}, mean {:.2} ms",
        sum / count * 1000.0,
        hsum / hcount * 1000.0
    );
}

#[tokio::test]
async fn a_killed_worker_is_reported_replaced_and_the_backend_recovers() {
    let stack = OperatorStack::start("op-e2e-kill").await;
    let ns = &stack.ns;
    stack.apply_backend("assistant", json!({"scaling": {"minWorkers": 2}}));
    wait_healthy(ns, "assistant", 2, T).await;

    let pods = live_pods(ns, "assistant").await;
    let victim = pods[0].metadata.name.clone().expect("pod name");
    let pid = worker_pid(&pods[0]).expect("the node agent records the worker pid");
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());

    wait_event(ns, "assistant", "ConnectionReconnecting", T).await;
    wait_event(ns, "assistant", "HealthDegraded", T).await;
    let status = wait_healthy(ns, "assistant", 2, T).await;
    eprintln!(
        "killed worker replaced and backend Healthy again after {:?}",
        killed.elapsed()
    );
    assert!(
        status.worker_statuses.iter().all(|w| w.name != victim),
        "{status:?}"
    );
    let names: Vec<_> = live_pods(ns, "assistant")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(!names.contains(&victim), "{names:?}");
}

#[tokio::test]
async fn an_image_change_rolls_new_workers_out_before_old_ones_drain() {
    // The test rolls `spec.workers.image`, which the provider must allow.
    let stack = OperatorStack::start_with(
        "op-e2e-roll",
        json!({"worker": {"allowImageOverride": true}}),
    )
    .await;
    let ns = &stack.ns;
    stack.apply_backend("assistant", json!({"scaling": {"minWorkers": 2}}));
    wait_healthy(ns, "assistant", 2, T).await;
    let old: Vec<String> = live_pods(ns, "assistant")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();

    let start = Instant::now();
    kubectl_ok(&[
        "patch",
        "voicebackend",
        "assistant",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"spec":{"workers":{"image":"voice-operator/worker:0.2.0"}}}"#,
    ]);
    // Serving capacity never drops: at every sample, at least 2 Ready pods are not draining.
    let mut saw_progressing = false;
    loop {
        let pods = live_pods(ns, "assistant").await;
        let serving = pods
            .iter()
            .filter(|p| pod_ready(p) && !pod_draining(p))
            .count();
        assert!(
            serving >= 2,
            "only {serving} serving workers during the rollout: {:?}",
            pods.iter()
                .map(|p| (&p.metadata.name, pod_ready(p), pod_draining(p)))
                .collect::<Vec<_>>()
        );
        let status = backend_status(ns, "assistant").await.expect("status");
        saw_progressing |= status
            .conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason == "RollingUpdate");
        let done = pods.len() == 2
            && pods.iter().all(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.containers[0].image.as_deref())
                    == Some("voice-operator/worker:0.2.0")
                    && pod_ready(p)
            });
        if done {
            break;
        }
        assert!(
            start.elapsed() < T,
            "rollout did not finish in {T:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("rollout of 2 workers done in {:?}", start.elapsed());
    assert!(saw_progressing, "Progressing=RollingUpdate was never seen");
    let new: Vec<String> = live_pods(ns, "assistant")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        new.iter().all(|n| !old.contains(n)),
        "old {old:?} new {new:?}"
    );
    wait_healthy(ns, "assistant", 2, T).await;
    let b = ns
        .api::<VoiceBackend>()
        .get("assistant")
        .await
        .expect("backend");
    assert_eq!(
        b.status.and_then(|s| s.observed_generation),
        b.metadata.generation
    );
}

#[tokio::test]
async fn scale_down_keeps_busy_workers_and_a_draining_worker_stays_until_its_session_ends() {
    use voice_proto::worker::v1::{ReleaseSessionRequest, ReserveResult, ReserveSessionRequest};

    // The test rolls `spec.workers.image`, which the provider must allow.
    let stack = OperatorStack::start_with(
        "op-e2e-drain",
        json!({"worker": {"allowImageOverride": true}}),
    )
    .await;
    let ns = &stack.ns;
    stack.apply_backend(
        "assistant",
        json!({"scaling": {"minWorkers": 1}, "replicas": 3, "workers": {"drainTimeout": "120s"}}),
    );
    let status = wait_healthy(ns, "assistant", 3, T).await;

    // One session on one worker, reserved the way the session allocator will do it.
    let busy = status.worker_statuses[1].clone();
    let ip = busy.pod_ip.clone().expect("pod IP");
    // The test calls the worker as the operator does (mutual TLS from the operator's CA);
    // a plaintext call would be refused.
    let mut client = worker_control_client(ns, "assistant", &ip).await;
    let session_id = format!("{}/call-1", ns.name());
    let reserved = client
        .reserve_session(ReserveSessionRequest {
            session_id: session_id.clone(),
            uid: "uid-1".to_owned(),
            ..Default::default()
        })
        .await
        .expect("ReserveSession")
        .into_inner();
    assert_eq!(reserved.result(), ReserveResult::Reserved);
    wait_for(T, "activeSessions = 1", || async {
        let s = backend_status(ns, "assistant").await?;
        if s.active_sessions == 1 {
            Ok(())
        } else {
            Err(format!("{}", s.active_sessions))
        }
    })
    .await;

    // Scale to 1: the two empty workers go, the busy one stays.
    kubectl_ok(&[
        "scale",
        "voicebackend/assistant",
        "-n",
        ns.name(),
        "--replicas=1",
    ]);
    let status = wait_healthy(ns, "assistant", 1, T).await;
    assert_eq!(
        status.worker_statuses[0].name, busy.name,
        "the busy worker must be kept: {status:?}"
    );

    // A rollout drains the busy worker; it stays while it holds its session.
    kubectl_ok(&[
        "patch",
        "voicebackend",
        "assistant",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"spec":{"workers":{"image":"voice-operator/worker:0.2.0"}}}"#,
    ]);
    wait_for(
        T,
        "the busy worker draining next to a ready new one",
        || async {
            let s = backend_status(ns, "assistant").await?;
            if s.workers.draining == 1 && s.workers.ready == 1 {
                Ok(())
            } else {
                Err(format!("{:?}", s.workers))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pods = live_pods(ns, "assistant").await;
    let draining = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(busy.name.as_str()))
        .expect("the draining worker is still there");
    assert!(pod_draining(draining));
    assert_eq!(
        backend_status(ns, "assistant")
            .await
            .expect("status")
            .active_sessions,
        1
    );

    // The session ends: the drained worker goes.
    let ended = Instant::now();
    client
        .release_session(ReleaseSessionRequest {
            session_id,
            uid: "uid-1".to_owned(),
            reason: "Completed".to_owned(),
        })
        .await
        .expect("ReleaseSession");
    wait_for(T, "the drained worker deleted", || async {
        let pods = live_pods(ns, "assistant").await;
        if pods
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some(busy.name.as_str()))
        {
            Ok(())
        } else {
            Err(format!("{} pods", pods.len()))
        }
    })
    .await;
    eprintln!(
        "drained worker deleted {:?} after its last session ended",
        ended.elapsed()
    );
    wait_healthy(ns, "assistant", 1, T).await;
}

#[tokio::test]
async fn a_hung_worker_is_replaced_after_failing_its_health_checks() {
    let stack = OperatorStack::start("op-e2e-hung").await;
    let ns = &stack.ns;
    stack.apply_backend("assistant", json!({"scaling": {"minWorkers": 2}, "healthCheck": {"interval": "1s", "timeout": "500ms", "failureThreshold": 2}}));
    wait_healthy(ns, "assistant", 2, T).await;
    let pods = live_pods(ns, "assistant").await;
    let victim = pods[0].metadata.name.clone().expect("pod name");
    let pid = worker_pid(&pods[0]).expect("the node agent records the worker pid");
    // A hung process: alive, holding its ports, answering nothing.
    let stopped = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );

    let note = wait_event(ns, "assistant", "WorkerReplaced", T).await;
    assert!(note.contains(&victim), "{note}");
    let status = wait_healthy(ns, "assistant", 2, T).await;
    eprintln!(
        "hung worker replaced and backend Healthy again after {:?}",
        stopped.elapsed()
    );
    assert!(
        status.worker_statuses.iter().all(|w| w.name != victim),
        "{status:?}"
    );
    // The stopped process is this test's leftover: end it rather than wait for the grace period.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}
