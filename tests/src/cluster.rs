//! One local control plane per test process, shared by every test in it.

use std::sync::OnceLock;

use voice_cluster::Cluster;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The local control plane, started (or reused, also across test binaries) on first use.
///
/// Panics with voice-cluster's error, which says what to do, when it cannot be started: a test
/// that needs the cluster cannot do anything useful without it.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| match voice_cluster::up() {
        Ok(cluster) => cluster,
        Err(err) => panic!(
            "the local control plane is not available ({}): {err}",
            err.reason()
        ),
    })
}
