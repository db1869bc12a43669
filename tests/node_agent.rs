//! The local node agent plays the kubelet well enough for the operator's pods: it binds them,
//! gives each a loopback address, runs the real worker binary, reports readiness from the
//! probe, restarts or fails per restartPolicy, and stops the process on deletion.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use voice_tests::{NodeAgentHandle, TestNamespace, node_agent};

/// Generous for a loaded 2-core machine; pods usually run within a second.
const DEADLINE: Duration = Duration::from_secs(60);

/// Annotation where the agent records each container's pid and log.
const PROCESSES: &str = "node-agent.voicebackends.dev/processes";

/// A worker pod as the operator writes one: downward-API POD_IP and an HTTP readiness probe.
fn worker_pod(name: &str, image: &str, restart_policy: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "worker",
                "image": image,
                "env": [
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "GRPC_PORT", "value": "50051" },
                    { "name": "HTTP_PORT", "value": "8080" },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                ],
                "readinessProbe": {
                    "httpGet": { "path": "/readyz", "port": 8080 },
                    "periodSeconds": 1,
                },
            }],
        },
    }))
    .expect("the pod manifest is valid")
}

/// Polls the pod until `check` returns `Some`, panicking with the last status and the agent's
/// log after [`DEADLINE`].
async fn wait_for<T>(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    mut check: impl FnMut(&Pod) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut last = None;
    loop {
        if let Some(pod) = pods.get_opt(name).await.expect("reading the pod") {
            if let Some(value) = check(&pod) {
                return value;
            }
            last = pod.status;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {DEADLINE:?} waiting for pod {name} to {what}; last status: {last:#?}\nagent log:\n{}",
                node_agent().log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until the pod object no longer exists.
async fn wait_gone(pods: &Api<Pod>, name: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while pods.get_opt(name).await.expect("reading the pod").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} still exists {DEADLINE:?} after its deletion; agent log:\n{}",
            node_agent().log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_ready(status: &PodStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn ready_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    is_ready(status).then(|| status.pod_ip.clone()).flatten()
}

/// The worker's pid from the agent's annotation.
fn worker_pid(pod: &Pod) -> Option<i32> {
    let raw = pod.metadata.annotations.as_ref()?.get(PROCESSES)?;
    let json: serde_json::Value = serde_json::from_str(raw).ok()?;
    json["worker"]["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().as_bytes()[0]),
                Some(b'Z' | b'X')
            )
        })
        .unwrap_or(false)
}

fn sigkill(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// GET with hyper, a client independent of the agent's own prober.
async fn http_get(ip: &str, port: u16, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .unwrap_or_else(|e| panic!("connecting to {ip}:{port}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", format!("{ip}:{port}"))
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = sender.send_request(request).await.expect("GET answered");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body read")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn create(ns: &TestNamespace, pod: &Pod) -> Api<Pod> {
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), pod)
        .await
        .expect("creating the pod");
    pods
}

fn agent() -> &'static NodeAgentHandle {
    // Started from a plain thread: the handle blocks on kubectl while it waits for the Node.
    std::thread::spawn(node_agent)
        .join()
        .expect("the node agent started")
}

#[tokio::test]
async fn worker_pod_is_bound_gets_a_loopback_ip_becomes_ready_and_stops_on_delete() {
    let agent = agent();
    let ns = TestNamespace::new("na-ready").await;
    let pods = create(
        &ns,
        &worker_pod("worker", "voice-operator/worker:dev", "Always"),
    )
    .await;

    let ip = wait_for(&pods, "worker", "become Ready", ready_ip).await;
    let pod = pods.get("worker").await.expect("reading the pod");
    let spec = pod.spec.as_ref().expect("pod has a spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(agent.node_name()),
        "bound to the agent's node"
    );
    assert!(
        ip.starts_with("127.0.0.") && ip != "127.0.0.1",
        "pod IP {ip}"
    );
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.host_ip.as_deref()),
        Some("127.0.0.1")
    );

    let (status, body) = http_get(&ip, 8080, "/healthz").await;
    assert_eq!(status, 200, "GET /healthz on the pod IP: {body}");

    let pid = worker_pid(&pod).expect("the agent records the worker's pid");
    assert!(pid_alive(pid));
    pods.delete("worker", &DeleteParams::default())
        .await
        .expect("deleting the pod");
    wait_gone(&pods, "worker").await;
    assert!(
        !pid_alive(pid),
        "the worker process {pid} still runs after deletion"
    );

    let log = agent.container_log(ns.name(), "worker", "worker");
    let worker_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        worker_log.contains("worker stopped"),
        "the worker did not drain and stop on SIGTERM; {}:\n{worker_log}",
        log.display()
    );
    let agent_log = std::fs::read_to_string(agent.log()).unwrap_or_default();
    assert!(
        agent_log
            .lines()
            .any(|l| l.contains(ns.name()) && l.contains("exit_code=0")),
        "the agent did not see the worker exit 0:\n{}",
        agent.log_tail(30)
    );
}

#[tokio::test]
async fn killed_process_with_restart_policy_never_fails_the_pod() {
    agent();
    let ns = TestNamespace::new("na-never").await;
    let pods = create(
        &ns,
        &worker_pod("worker", "voice-operator/worker:dev", "Never"),
    )
    .await;
    wait_for(&pods, "worker", "become Ready", ready_ip).await;
    let pid = wait_for(&pods, "worker", "record its pid", worker_pid).await;

    sigkill(pid);
    let status = wait_for(&pods, "worker", "fail", |pod| {
        let status = pod.status.as_ref()?;
        (status.phase.as_deref() == Some("Failed")).then(|| status.clone())
    })
    .await;
    let container = &status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0];
    let terminated = container
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("the container is terminated");
    assert_eq!(terminated.exit_code, 137, "SIGKILL shows as 128 + 9");
    assert_eq!(container.restart_count, 0);
    assert!(!is_ready(&status), "a failed pod is not Ready");
}

#[tokio::test]
async fn killed_process_with_restart_policy_always_is_restarted_and_ready_again() {
    agent();
    let ns = TestNamespace::new("na-always").await;
    let pods = create(
        &ns,
        &worker_pod("worker", "voice-operator/worker:dev", "Always"),
    )
    .await;
    let first_ip = wait_for(&pods, "worker", "become Ready", ready_ip).await;
    let pid = wait_for(&pods, "worker", "record its pid", worker_pid).await;

    sigkill(pid);
    let (new_pid, ip) = wait_for(&pods, "worker", "restart and become Ready again", |pod| {
        let status = pod.status.as_ref()?;
        let restarts = status.container_statuses.as_ref()?.first()?.restart_count;
        let new_pid = worker_pid(pod).filter(|p| *p != pid)?;
        (restarts == 1 && is_ready(status)).then(|| (new_pid, status.pod_ip.clone()))
    })
    .await;
    assert_eq!(
        ip.as_deref(),
        Some(first_ip.as_str()),
        "a restart keeps the pod IP"
    );
    assert!(pid_alive(new_pid));
    let pod = pods.get("worker").await.expect("reading the pod");
    let container = &pod
        .status
        .expect("status")
        .container_statuses
        .expect("statuses")[0];
    let last = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("the killed run is the last state");
    assert_eq!(last.exit_code, 137);
    let (status, _) = http_get(&first_ip, 8080, "/healthz").await;
    assert_eq!(status, 200, "the restarted worker serves again");
}

#[tokio::test]
async fn unknown_image_is_reported_as_image_not_mapped() {
    agent();
    let ns = TestNamespace::new("na-image").await;
    let pods = create(&ns, &worker_pod("web", "nginx:1.27", "Always")).await;
    let status = wait_for(&pods, "web", "be refused", |pod| {
        let status = pod.status.as_ref()?;
        (status.phase.as_deref() == Some("Failed")).then(|| status.clone())
    })
    .await;
    assert_eq!(status.reason.as_deref(), Some("ImageNotMapped"));
    let waiting = status.container_statuses.as_ref().expect("statuses")[0]
        .state
        .as_ref()
        .and_then(|s| s.waiting.clone())
        .expect("the container waits");
    assert_eq!(waiting.reason.as_deref(), Some("ImageNotMapped"));
    let message = waiting.message.unwrap_or_default();
    assert!(
        message.contains("--image nginx="),
        "the message names the flag: {message}"
    );
}
