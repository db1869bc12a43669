//! Pod status as kubelet reports it: phase, conditions, container statuses, addresses; written
//! through the `pods/status` subresource only when something changed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::Error;

/// Field manager of every write the agent makes.
pub const FIELD_MANAGER: &str = "voice-node-agent";

/// How a container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// `Completed`, `Error`, or why it was stopped.
    pub reason: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running: not started yet, backing off, or refused.
    Waiting {
        /// CamelCase reason (`ContainerCreating`, `CrashLoopBackOff`, `ImageNotMapped`…).
        reason: String,
        /// What to do about it.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// When the process started.
        started_at: Timestamp,
    },
    /// Ended for good (restartPolicy says no more restarts).
    Terminated(Termination),
}

/// One container as the supervisor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// Current state.
    pub state: State,
    /// The previous run, after a restart.
    pub last: Option<Termination>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Readiness (probe result, or running when there is no probe).
    pub ready: bool,
}

/// The whole pod as the supervisor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// The pod's loopback address once allocated (the node's, for a `hostNetwork` pod).
    pub pod_ip: Option<Ipv4Addr>,
    /// The node's address (`status.hostIP`).
    pub host_ip: Ipv4Addr,
    /// When the agent accepted the pod.
    pub start_time: Timestamp,
    /// Containers in spec order.
    pub containers: Vec<ContainerView>,
    /// Set when the pod failed as a whole (reason, message), e.g. `ImageNotMapped`.
    pub failure: Option<(String, String)>,
}

impl PodView {
    /// Pending until a container first starts, Running while any runs or will restart,
    /// then Succeeded (all exited 0) or Failed.
    pub fn phase(&self) -> &'static str {
        if self.failure.is_some() {
            return "Failed";
        }
        let terminated: Vec<&Termination> = self
            .containers
            .iter()
            .filter_map(|c| match &c.state {
                State::Terminated(t) => Some(t),
                _ => None,
            })
            .collect();
        if !self.containers.is_empty() && terminated.len() == self.containers.len() {
            return if terminated.iter().all(|t| t.exit_code == 0) {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        let started = self.containers.iter().any(|c| {
            matches!(c.state, State::Running { .. }) || c.last.is_some() || !terminated.is_empty()
        });
        if started { "Running" } else { "Pending" }
    }

    /// Whether the pod reached a phase it never leaves.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }
}

/// Remembers when each condition last changed, so an unchanged condition keeps its time and
/// an unchanged pod produces an identical status (and so no write).
#[derive(Debug, Default)]
pub struct Conditions {
    since: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl Conditions {
    fn condition(
        &mut self,
        kind: &'static str,
        value: bool,
        reason: Option<&str>,
        now: Timestamp,
    ) -> PodCondition {
        let entry = self.since.entry(kind).or_insert((value, now));
        if entry.0 != value {
            *entry = (value, now);
        }
        PodCondition {
            type_: kind.to_owned(),
            status: if value { "True" } else { "False" }.to_owned(),
            reason: if value {
                None
            } else {
                reason.map(str::to_owned)
            },
            last_transition_time: Some(Time(entry.1)),
            ..PodCondition::default()
        }
    }
}

/// The pod status for `view` at `now`.
pub fn build(view: &PodView, conditions: &mut Conditions, now: Timestamp) -> PodStatus {
    let all_ready = !view.containers.is_empty() && view.containers.iter().all(|c| c.ready);
    let terminal = view.is_terminal();
    let ready = all_ready && !terminal;
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let (reason, message) = view.failure.clone().unzip();
    PodStatus {
        phase: Some(view.phase().to_owned()),
        reason,
        message,
        conditions: Some(vec![
            conditions.condition("PodScheduled", true, None, now),
            conditions.condition("Initialized", true, None, now),
            conditions.condition("ContainersReady", ready, Some(not_ready_reason), now),
            conditions.condition("Ready", ready, Some(not_ready_reason), now),
        ]),
        host_ip: Some(view.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.to_string(),
        }]),
        pod_ip: view.pod_ip.map(|ip| ip.to_string()),
        pod_ips: view.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(Time(view.start_time)),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        // The API server sets qosClass from the resources when the pod is created and refuses
        // any change, so the agent leaves it out (a pod with requests is not BestEffort).
        qos_class: None,
        ..PodStatus::default()
    }
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    let running = matches!(c.state, State::Running { .. });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        state: Some(state(&c.state)),
        last_state: c
            .last
            .as_ref()
            .map(|t| state(&State::Terminated(t.clone()))),
        restart_count: c.restart_count,
        ready: c.ready && running,
        started: Some(running),
        ..ContainerStatus::default()
    }
}

fn state(s: &State) -> ContainerState {
    match s {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: t.exit_code,
                reason: Some(t.reason.clone()),
                started_at: Some(Time(t.started_at)),
                finished_at: Some(Time(t.finished_at)),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        },
    }
}

/// Writes one pod's status; remembers the last write to skip identical ones.
#[derive(Debug)]
pub struct Writer {
    api: Api<Pod>,
    name: String,
    last: Option<PodStatus>,
}

impl Writer {
    /// A writer for pod `name` in `api`'s namespace.
    pub fn new(api: Api<Pod>, name: String) -> Writer {
        Writer {
            api,
            name,
            last: None,
        }
    }

    /// Applies `status` (server-side apply on pods/status) unless it equals the last one
    /// written. A failed write is forgotten so the next call retries it.
    pub async fn write(&mut self, status: PodStatus) -> Result<(), Error> {
        if self.last.as_ref() == Some(&status) {
            return Ok(());
        }
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .api
            .patch_status(&self.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                self.last = Some(status);
                Ok(())
            }
            Err(source) => {
                self.last = None;
                Err(Error::Api {
                    action: format!("patch the status of pod {}", self.name),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: State, ready: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "worker".into(),
            state,
            last: None,
            restart_count: 0,
            ready,
        }
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            pod_ip: Some(Ipv4Addr::new(127, 0, 0, 2)),
            host_ip: Ipv4Addr::new(192, 0, 2, 7),
            start_time: Timestamp::UNIX_EPOCH,
            containers,
            failure: None,
        }
    }

    fn ended(code: i32) -> State {
        State::Terminated(Termination {
            exit_code: code,
            reason: "Completed".into(),
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
        })
    }

    #[test]
    fn phase_follows_kubelet() {
        let waiting = State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        let running = State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        assert_eq!(view(vec![container(waiting, false)]).phase(), "Pending");
        assert_eq!(
            view(vec![container(running.clone(), true)]).phase(),
            "Running"
        );
        assert_eq!(view(vec![container(ended(0), false)]).phase(), "Succeeded");
        assert_eq!(
            view(vec![container(ended(0), false), container(ended(1), false)]).phase(),
            "Failed"
        );
        assert_eq!(
            view(vec![container(ended(0), false), container(running, false)]).phase(),
            "Running"
        );
        let mut failed = view(vec![]);
        failed.failure = Some(("ImageNotMapped".into(), "x".into()));
        assert_eq!(failed.phase(), "Failed");
    }

    #[test]
    fn unchanged_view_builds_identical_status_and_ready_moves_its_time() {
        let mut conds = Conditions::default();
        let running = State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        let t1 = Timestamp::from_second(100).unwrap();
        let t2 = Timestamp::from_second(200).unwrap();
        let a = build(
            &view(vec![container(running.clone(), false)]),
            &mut conds,
            t1,
        );
        let b = build(
            &view(vec![container(running.clone(), false)]),
            &mut conds,
            t2,
        );
        assert_eq!(a, b, "nothing changed, so nothing to write");
        let c = build(&view(vec![container(running, true)]), &mut conds, t2);
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&c).status, "True");
        assert_eq!(ready(&c).last_transition_time, Some(Time(t2)));
        assert_eq!(ready(&a).last_transition_time, Some(Time(t1)));
        assert!(c.container_statuses.unwrap()[0].ready);
        // status.hostIP is the node's address (`--node-ip`), not a constant.
        assert_eq!(c.host_ip.as_deref(), Some("192.0.2.7"));
    }
}
