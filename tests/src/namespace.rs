//! A fresh namespace per test, so tests can run in parallel against one cluster.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource};

use crate::{Watchdog, client, kubectl};

/// Label on every test namespace, so leftovers of crashed runs can be found and removed:
/// `kubectl delete ns -l voice-operator.dev/test=true`.
pub const TEST_LABEL: &str = "voice-operator.dev/test";

/// A namespace `<prefix>-<random>` that is deleted when dropped. It also keeps the test's
/// [`Watchdog`]: a test holding it past [`crate::TEST_TIME_LIMIT`] ends its test binary.
pub struct TestNamespace {
    name: String,
    client: kube::Client,
    _watchdog: Option<Watchdog>,
}

impl TestNamespace {
    /// Creates the namespace, labelled [`TEST_LABEL`]`=true`, for a test: held past
    /// [`crate::TEST_TIME_LIMIT`], it ends the test binary.
    pub async fn new(prefix: &str) -> TestNamespace {
        let mut ns = Self::without_time_limit(prefix).await;
        ns._watchdog = Some(Watchdog::start(format!("namespace {}", ns.name)));
        ns
    }

    /// [`TestNamespace::new`] for a benchmark, which may rightly run for long.
    pub async fn without_time_limit(prefix: &str) -> TestNamespace {
        let client = client().await;
        let suffix = getrandom::u32().expect("the OS has a random source");
        let name = format!("{prefix}-{suffix:08x}");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_LABEL.to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|err| panic!("creating namespace {name}: {err}"));
        TestNamespace {
            name,
            client,
            _watchdog: None,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client for the cluster (admin).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// An API for namespaced objects of kind `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    /// Deletes with kubectl, blocking and without waiting for finalization: Drop may run outside
    /// any async runtime (or inside one that is shutting down), and the request must be sent
    /// before the test process exits.
    fn drop(&mut self) {
        let output = kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
        if !output.status.success() && !std::thread::panicking() {
            eprintln!(
                "could not delete test namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
}
