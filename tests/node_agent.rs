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
                    // These tests are about the agent, not the control channel's mTLS.
                    { "name": "CONTROL_INSECURE", "value": "true" },
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
    // The agent's pool is 127.0.0.0/20 (a long-lived agent moves on past 127.0.0.x).
    assert!(ip.starts_with("127.0.") && ip != "127.0.0.1", "pod IP {ip}");
    // hostIP is the Node's InternalIP: the shared agent runs with `--node-ip lan`, so this
    // machine's own address, never loopback.
    let node = kube::Api::<k8s_openapi::api::core::v1::Node>::all(pods.clone().into_client())
        .get(agent.node_name())
        .await
        .expect("the agent's Node");
    let internal = node
        .status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .expect("an InternalIP");
    let host_ip = pod.status.as_ref().and_then(|s| s.host_ip.clone());
    assert_eq!(host_ip.as_deref(), Some(internal.as_str()));
    assert!(!internal.starts_with("127."), "hostIP {internal}");

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

/// The value of `name` in the environment of process `pid`.
fn process_env(pid: i32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        entry.strip_prefix(&format!("{name}=")).map(str::to_owned)
    })
}

#[tokio::test]
async fn secret_volume_is_mounted_as_files_and_follows_the_secret() {
    agent();
    let ns = TestNamespace::new("na-volume").await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    let secret = |value: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": "demo-tls" },
            "stringData": { "tls.crt": value, "ca.crt": "ca" },
        }))
        .expect("the Secret manifest is valid")
    };
    secrets
        .create(&PostParams::default(), &secret("first"))
        .await
        .expect("creating the Secret");
    let mut pod = worker_pod("worker", "voice-operator/worker:dev", "Never");
    let spec = pod.spec.as_mut().expect("a spec");
    spec.volumes = Some(vec![
        serde_json::from_value(serde_json::json!({
            "name": "tls", "secret": { "secretName": "demo-tls" }
        }))
        .expect("a valid volume"),
    ]);
    let container = &mut spec.containers[0];
    container.volume_mounts = Some(vec![
        serde_json::from_value(serde_json::json!({
            "name": "tls", "mountPath": "/var/run/demo/tls", "readOnly": true
        }))
        .expect("a valid mount"),
    ]);
    container.env.get_or_insert_default().push(
        serde_json::from_value(serde_json::json!({
            "name": "DEMO_CERT", "value": "/var/run/demo/tls/tls.crt"
        }))
        .expect("a valid env var"),
    );
    let pods = create(&ns, &pod).await;
    wait_for(&pods, "worker", "become Ready", ready_ip).await;
    let pod = pods.get("worker").await.expect("reading the pod");
    let pid = worker_pid(&pod).expect("the agent records the worker's pid");

    // The process sees the mount path rewritten to the pod's volume directory.
    let cert = process_env(pid, "DEMO_CERT").expect("DEMO_CERT is in the process environment");
    assert!(
        cert.ends_with("/tls/tls.crt") && !cert.starts_with("/var/run/demo"),
        "DEMO_CERT={cert}"
    );
    assert_eq!(
        std::fs::read_to_string(&cert).expect("the file exists"),
        "first"
    );

    // A rotated Secret reaches the running process's file without a restart.
    secrets
        .replace("demo-tls", &PostParams::default(), &{
            let mut s = secret("second");
            s.metadata.resource_version = secrets
                .get("demo-tls")
                .await
                .expect("reading the Secret")
                .metadata
                .resource_version;
            s
        })
        .await
        .expect("rotating the Secret");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&cert).unwrap_or_default() != "second" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated Secret did not reach {cert} within 20 s:\n{}",
            node_agent().log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        pid_alive(pid),
        "the process was not restarted for the rotation"
    );

    pods.delete("worker", &DeleteParams::default())
        .await
        .expect("deleting the pod");
    wait_gone(&pods, "worker").await;
    let dir = std::path::Path::new(&cert)
        .parent()
        .and_then(|p| p.parent());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dir.is_some_and(std::path::Path::exists) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pod's volume directory {dir:?} outlived the pod"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn missing_secret_of_a_volume_keeps_the_container_waiting_with_failed_mount() {
    agent();
    let ns = TestNamespace::new("na-nosecret").await;
    let mut pod = worker_pod("worker", "voice-operator/worker:dev", "Never");
    let spec = pod.spec.as_mut().expect("a spec");
    spec.volumes = Some(vec![
        serde_json::from_value(serde_json::json!({
            "name": "tls", "secret": { "secretName": "absent" }
        }))
        .expect("a valid volume"),
    ]);
    spec.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(serde_json::json!({ "name": "tls", "mountPath": "/tls" }))
            .expect("a valid mount"),
    ]);
    let pods = create(&ns, &pod).await;
    let message = wait_for(&pods, "worker", "wait with FailedMount", |pod| {
        let state = pod.status.as_ref()?.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .clone()?;
        (state.reason.as_deref() == Some("FailedMount")).then(|| state.message.unwrap_or_default())
    })
    .await;
    assert!(
        message.contains("Secret") && message.contains("absent") && message.contains("optional"),
        "the message names the Secret and the fix: {message}"
    );
}
