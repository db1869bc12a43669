//! `voice-node-agent`: plays the kubelet for one fake Node on a machine without a kubelet or a
//! container runtime.
//!
//! It registers a Ready `Node`, binds unscheduled pods to it (a trivial scheduler), and runs
//! each container of a bound pod as a local process: the image picks a workspace binary
//! ([`images`]), the pod gets its own loopback address ([`ip_pool`]) and its env from the spec
//! ([`env`]), its `secret` and `emptyDir` volumes become directories ([`volumes`]), probes
//! decide readiness ([`probes`]), and status is written like kubelet's ([`status`]). Deleting a pod runs preStop, SIGTERM, SIGKILL after the grace period, then
//! removes the object.
//!
//! On start, pods an earlier run was running are marked Failed with reason
//! `NodeAgentRestarted` (their leftover processes are killed) so their owner replaces them;
//! nothing is adopted.

pub mod agent;
pub mod binding;
pub mod config;
pub mod container;
pub mod context;
pub mod env;
mod error;
pub mod images;
pub mod ip_pool;
pub mod node;
pub mod node_fit;
pub mod probe_tls;
pub mod probes;
pub mod runtime;
pub mod status;
pub mod supervisor;
pub mod volumes;

pub use config::Config;
pub use context::PROCESSES_ANNOTATION;
pub use error::Error;
pub use node::LOCAL_NODE_LABEL;
