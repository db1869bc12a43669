//! The node agent's own shutdown against the real API server: a second agent (its own Node,
//! binding nothing, so it never takes the shared agent's pods) runs a process that ignores
//! SIGTERM in a pod with a long grace period; the pod is deleted and, while the agent waits out
//! that grace, the agent is stopped. It must not leave the process behind (as `cargo xtask
//! dev`'s Ctrl-C stops the agent: a worker draining for minutes must not outlive it).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use voice_tests::TestNamespace;

const NODE: &str = "voice-shutdown-test-node";
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 200 ms until it gives `Some`, panicking with `what` after [`PATIENCE`].
async fn wait<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGKILL to process group `pgid`, by system call. Never through `kill(1)`: procps-ng
/// 4.0.2 read `kill -KILL -<pgid>` as `kill(-1, SIGKILL)` once the group was gone, which
/// killed every process of the user, the test runner and its shell included.
fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid)
        && pgid > 1
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kills a process group when dropped, so a failed assertion leaves no agent or pod process
/// running (a leftover agent for the same Node would run the next run's pods too).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().as_bytes()[0]),
            Some(b'Z' | b'X')
        )
    })
}

#[tokio::test]
async fn stopping_the_agent_while_a_pod_waits_out_its_grace_leaves_no_process_behind() {
    let cluster = voice_tests::cluster();
    let target = voice_cluster::layout::target_dir();
    let dir = target.join("voice-node-agent-shutdown-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::File::create(dir.join("agent.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut agent = Command::new(target.join("debug/voice-node-agent"))
        .args(["--node-name", NODE, "--no-scheduler"])
        .args(["--image", "sleeper=/bin/sh"])
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .arg("--volume-dir")
        .arg(dir.join("volumes"))
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting the node agent: {e}"));
    let _agent_group = KillOnDrop(i32::try_from(agent.id()).unwrap_or(i32::MAX));

    // A pod bound before the agent has cleaned up is taken for one of an earlier run.
    let agent_log = dir.join("agent.log");
    wait("the agent to clean up and run pods", || async {
        std::fs::read_to_string(&agent_log)
            .ok()
            .filter(|l| l.contains("running this node's pods"))
    })
    .await;
    let ns = TestNamespace::new("na-shutdown").await;
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 60,
            "containers": [{
                "name": "sleeper",
                "image": "sleeper",
                // SIGTERM reaches the whole group: sh ignores it, a killed sleep is restarted.
                "args": ["-c", "trap '' TERM; while :; do sleep 1; done"],
            }],
        },
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating the pod: {e}"));
    let pid = wait("the pod's process", || async {
        let pod = pods.get("stubborn").await.ok()?;
        let raw = pod
            .metadata
            .annotations?
            .remove("node-agent.voicebackends.dev/processes")?;
        let json: serde_json::Value = serde_json::from_str(&raw).ok()?;
        json["sleeper"]["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
    })
    .await;
    let _pod_group = KillOnDrop(pid);
    assert!(alive(pid));

    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting the pod: {e}"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        alive(pid),
        "the process should ignore SIGTERM for its 60 s grace"
    );

    let stopped = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
    let exited = loop {
        if let Some(status) = agent.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(
            stopped.elapsed() < PATIENCE,
            "the agent did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = stopped.elapsed();
    let gone = !alive(pid);
    if !gone {
        kill_group(pid);
    }
    // No agent finishes the deletion now: remove the pod and the Node by hand.
    let _ = pods
        .delete(
            "stubborn",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await;
    let _ = Api::<Node>::all(ns.client())
        .delete(NODE, &DeleteParams::default())
        .await;
    assert!(exited.success(), "the agent exited with {exited}");
    assert!(gone, "process {pid} outlived the agent");
    assert!(
        took < Duration::from_secs(15),
        "the agent took {took:?} to stop (its shutdown grace is 5 s)"
    );
}
