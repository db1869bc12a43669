//! The local control plane really is a v1.36 Kubernetes control plane: matching versions,
//! namespace lifecycle and garbage collection by kube-controller-manager, RBAC enforcement.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use voice_tests::{KUBERNETES_VERSION, TestNamespace, client, cluster, kubectl, kubectl_ok};

/// Long enough for the controllers on a loaded 2-core machine; they usually act within a second.
const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, panicking with `what` after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn server_and_kubectl_are_the_pinned_kubernetes_version() {
    let json: serde_json::Value = serde_json::from_str(&kubectl_ok(&["version", "-o", "json"]))
        .expect("kubectl version prints JSON");
    assert_eq!(
        json["serverVersion"]["gitVersion"], KUBERNETES_VERSION,
        "server: {json}"
    );
    assert_eq!(
        json["clientVersion"]["gitVersion"], KUBERNETES_VERSION,
        "client: {json}"
    );
}

#[test]
fn up_again_reuses_the_running_control_plane() {
    let first = cluster();
    let again = voice_cluster::up().expect("second up succeeds");
    assert_eq!(
        again.server(),
        first.server(),
        "a second up must not start another apiserver"
    );
    assert_eq!(again.kubeconfig(), first.kubeconfig());
}

#[tokio::test]
async fn test_namespace_becomes_active_and_is_removed_after_drop() {
    let ns = TestNamespace::new("smoke-ns").await;
    let name = ns.name().to_owned();
    let namespaces: Api<Namespace> = Api::all(client().await);

    let created = namespaces.get(&name).await.expect("namespace exists");
    let labels = created.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get(voice_tests::TEST_LABEL).map(String::as_str),
        Some("true")
    );
    let phase = created.status.and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Active"));

    // An object inside makes the namespace controller do real work: it must empty it first.
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &config_map("inside", None))
        .await
        .expect("config map created");
    drop(ns);

    eventually(
        "the namespace controller to remove the namespace",
        || async {
            match namespaces.get_opt(&name).await.expect("get namespace") {
                None => Some(()),
                Some(_) => None,
            }
        },
    )
    .await;
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let ns = TestNamespace::new("smoke-gc").await;
    let config_maps = ns.api::<ConfigMap>();
    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .expect("owner created");
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.expect("server sets uid"),
        ..OwnerReference::default()
    };
    config_maps
        .create(
            &PostParams::default(),
            &config_map("dependent", Some(owner_ref)),
        )
        .await
        .expect("dependent created");
    config_maps
        .create(&PostParams::default(), &config_map("bystander", None))
        .await
        .expect("bystander created");

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("owner deleted");

    eventually("the garbage collector to delete the dependent", || async {
        config_maps
            .get_opt("dependent")
            .await
            .expect("get dependent")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        config_maps
            .get_opt("bystander")
            .await
            .expect("get bystander")
            .is_some(),
        "an object without owner must survive garbage collection"
    );
}

#[test]
fn rbac_forbids_a_user_without_bindings() {
    let denied = kubectl(&["get", "configmaps", "-n", "default", "--as=nobody"]);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success(),
        "nobody could list config maps: {stderr}"
    );
    assert!(
        stderr.contains("Forbidden") || stderr.contains("forbidden"),
        "unexpected failure: {stderr}"
    );

    // The admin from the kubeconfig is allowed the same request: the denial is RBAC, not a broken client.
    kubectl_ok(&["get", "configmaps", "-n", "default"]);
    let can_i = kubectl(&["auth", "can-i", "list", "configmaps", "--as=nobody"]);
    assert_eq!(String::from_utf8_lossy(&can_i.stdout).trim(), "no");
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
        ..ConfigMap::default()
    }
}

/// Not a test of its own: the hanging test that
/// [`a_test_that_hangs_ends_its_binary_naming_itself`] runs in a child process.
#[tokio::test]
#[ignore = "a fixture: it hangs on purpose, and only the test below runs it"]
async fn hangs_holding_a_namespace() {
    let _ns = TestNamespace::new("hang").await;
    std::future::pending::<()>().await;
}

/// A hanging test must not eat CI's whole time budget: past its limit the watchdog that
/// its namespace holds ends the test binary with a message naming the test.
#[test]
fn a_test_that_hangs_ends_its_binary_naming_itself() {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "hangs_holding_a_namespace",
            "--ignored",
            "--nocapture",
        ])
        .env(voice_tests::TIME_LIMIT_VARIABLE, "3")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running the fixture");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("hangs_holding_a_namespace (namespace hang-")
            && stderr.contains("still runs after 3s"),
        "{stderr}"
    );
    assert!(started.elapsed() < DEADLINE, "took {:?}", started.elapsed());
    // The fixture ended without its namespace's Drop: remove what it left.
    let left = stderr
        .split("(namespace ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the message names the namespace");
    kubectl_ok(&["delete", "namespace", left, "--wait=false"]);
}
