//! A kube client for the local control plane's admin kubeconfig.

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cluster;

/// A client authenticated as `admin` (`system:masters`) on the local control plane.
///
/// Reads the kubeconfig file rather than `$KUBECONFIG`, so a developer's own cluster is never
/// touched by the tests.
pub async fn client() -> kube::Client {
    let path = cluster().kubeconfig();
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|err| panic!("loading {}: {err}", path.display()));
    kube::Client::try_from(config)
        .unwrap_or_else(|err| panic!("building a client for {}: {err}", path.display()))
}
