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
mod kubectl;
mod namespace;

pub use client::client;
pub use cluster::cluster;
pub use crds::{crds_dir, install_crds};
pub use kubectl::{kubectl, kubectl_ok, kubectl_stdin, kubectl_with_stdin};
pub use namespace::{TEST_LABEL, TestNamespace};
pub use voice_cluster::{Cluster, KUBERNETES_VERSION};
