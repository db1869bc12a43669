//! Shared helpers for the integration tests: a cluster per test run, a namespace per test.
//!
//! ```no_run
//! # async fn demo() {
//! let ns = voice_tests::TestNamespace::new("smoke").await;
//! voice_tests::kubectl_ok(&["get", "configmaps", "-n", ns.name()]);
//! # }
//! ```

mod client;
mod cluster;
mod crds;
pub mod helm;
mod join_token;
mod kubectl;
pub mod livekit;
mod namespace;
mod node_agent;
mod operator;
pub mod prometheus;
mod watchdog;

pub use client::client;
pub use cluster::cluster;
pub use crds::{crds_dir, install_crds};
pub use join_token::{join_token, token_secret};
pub use kubectl::{kubectl, kubectl_ok, kubectl_stdin, kubectl_with_stdin};
pub use namespace::{TEST_LABEL, TestNamespace};
pub use node_agent::{NODE_NAME, NodeAgentHandle, node_agent, node_agent_dir, node_agent_pid_file};
pub use operator::{OperatorProcess, PROVIDER_LABEL};
pub use voice_cluster::{Cluster, KUBERNETES_VERSION};
pub use watchdog::{TEST_TIME_LIMIT, TIME_LIMIT_VARIABLE, Watchdog};
