//! The Helm chart (`charts/voice-operator`) with Helm built from its Go module: lint, render,
//! schema errors, server-side dry runs, and a real install whose operator runs as the chart's
//! ServiceAccount (so its RBAC is what the API server checks) on the node agent.

mod operator_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use serde_json::{Value, json};
use voice_crds::{SessionPhase, VoiceProvider, VoiceSession};
use voice_tests::helm::{chart_dir, helm_ok, helm_on_cluster, helm_run, prometheus_operator_crds};
use voice_tests::{TestNamespace, kubectl, kubectl_ok, kubectl_with_stdin};

use operator_common::{
    apply, backend_manifest, events_about, http_get_from, leader_gauge, provider_condition,
    wait_for, wait_healthy,
};

/// Values that turn on every optional object of the chart.
const ALL_ENABLED: &[&str] = &[
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.grafanaDashboard.enabled=true",
    "networkPolicy.enabled=true",
    "opentelemetry.endpoint=http://otel-collector.observability:4317",
];

fn chart() -> String {
    chart_dir().display().to_string()
}

/// `helm template` of the chart into namespace `ns` with `--set` values; the documents.
fn render(ns: &str, set: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "voice", chart.as_str(), "--namespace", ns];
    for s in set {
        args.extend(["--set", s]);
    }
    parse_documents(&helm_ok(helm_run(&args), "template"))
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in yaml.lines().chain(std::iter::once("---")) {
        if line == "---" {
            let v: Value = serde_yaml_ng::from_str(&current).expect("helm renders valid YAML");
            if !v.is_null() {
                docs.push(v);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all = find(docs, kind);
    assert_eq!(all.len(), 1, "expected one {kind}, got {}", all.len());
    all[0]
}

#[test]
fn lint_passes_with_default_and_all_enabled_values() {
    let chart = chart();
    helm_ok(helm_run(&["lint", "--strict", &chart]), "lint (defaults)");
    let mut args = vec!["lint", "--strict", chart.as_str()];
    for s in ALL_ENABLED {
        args.extend(["--set", s]);
    }
    helm_ok(helm_run(&args), "lint (everything enabled)");
}

#[test]
fn default_render_is_a_hardened_leader_elected_operator_without_monitoring_objects() {
    let docs = render("voice-system", &[]);
    let kinds = kinds(&docs);
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "PodDisruptionBudget",
        "VoiceProvider",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    // The operator's NetworkPolicy is on by default: ingress only to its metrics port.
    let policy = one(&docs, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"],
        json!([{"port": "metrics", "protocol": "TCP"}])
    );
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(
            !kinds.contains(kind),
            "{kind} is optional and off by default"
        );
    }

    let deploy = one(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    // Each backend's NetworkPolicy admits the control port from pods with these labels:
    // they must be exactly the operator pods' selector labels.
    let env = deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    let labels = env
        .iter()
        .find(|e| e["name"] == "OPERATOR_POD_LABELS")
        .and_then(|e| e["value"].as_str())
        .expect("OPERATOR_POD_LABELS");
    let selector = &deploy["spec"]["selector"]["matchLabels"];
    let parsed: BTreeMap<&str, &str> = labels
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(
        serde_json::to_value(&parsed).expect("labels"),
        *selector,
        "OPERATOR_POD_LABELS={labels}"
    );
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--lease-name=voice-operator"), "{args:?}");
    assert!(args.contains(&"--lease-namespace=voice-system"), "{args:?}");
    assert!(args.contains(&"--metrics-addr=0.0.0.0:8081"), "{args:?}");
    // The operator binary accepts every rendered flag (clap refuses an unknown one before it
    // reaches the trailing --help).
    let binary = voice_cluster::layout::target_dir().join("debug/voice-operator");
    let out = std::process::Command::new(&binary)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("running {} (cargo build --bins): {e}", binary.display()));
    assert!(
        out.status.success(),
        "voice-operator refuses the chart's args {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["ports"][0]["containerPort"], 8081);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["image"], "voice-operator/operator:0.1.0");

    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // The built-in provider is the example's, with the worker image from the values.
    let provider = one(&docs, "VoiceProvider");
    let example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            voice_cluster::layout::workspace_root().join("examples/00-provider-builtin.yaml"),
        )
        .expect("the example exists"),
    )
    .expect("the example is YAML");
    assert_eq!(provider["metadata"]["name"], example["metadata"]["name"]);
    assert_eq!(provider["spec"], example["spec"]);
}

/// (API group, resource, verb) triples of the rendered ClusterRole and Role.
fn granted(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for role in find(docs, "ClusterRole")
        .into_iter()
        .chain(find(docs, "Role"))
    {
        for rule in role["rules"].as_array().expect("rules") {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_what_the_operator_calls_and_nothing_wider() {
    let docs = render("voice-system", &[]);
    let granted = granted(&docs);
    assert!(!granted.is_empty());
    for (g, r, v) in &granted {
        for part in [g, r, v] {
            assert!(!part.contains('*'), "wildcard in ({g}, {r}, {v})");
        }
    }
    // What operator/src calls (kube Api calls, Controller watches, the event Recorder, the
    // Lease loop) and the session allocator (session status, join-token Secrets, TTL deletes).
    let needed = [
        ("voicebackends.dev", "voiceproviders", "list"),
        ("voicebackends.dev", "voiceproviders", "watch"),
        ("voicebackends.dev", "voiceproviders/status", "patch"),
        ("voicebackends.dev", "voicebackends", "list"),
        ("voicebackends.dev", "voicebackends", "watch"),
        ("voicebackends.dev", "voicebackends", "patch"),
        ("voicebackends.dev", "voicebackends/status", "patch"),
        ("voicebackends.dev", "voicesessions", "list"),
        ("voicebackends.dev", "voicesessions", "watch"),
        ("voicebackends.dev", "voicesessions", "delete"),
        ("voicebackends.dev", "voicesessions/status", "patch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "create"),
        ("", "pods", "patch"),
        ("", "pods", "delete"),
        ("", "services", "get"),
        ("", "services", "patch"),
        ("", "secrets", "get"),
        ("", "secrets", "list"),
        ("", "secrets", "watch"),
        ("", "secrets", "create"),
        ("", "secrets", "patch"),
        ("networking.k8s.io", "networkpolicies", "get"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("networking.k8s.io", "networkpolicies", "patch"),
        ("", "secrets", "update"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        // The allocator reads a Namespace's session quota annotation.
        ("", "namespaces", "get"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    ];
    for (g, r, v) in needed {
        assert!(
            granted.contains(&(g.to_owned(), r.to_owned(), v.to_owned())),
            "the chart does not grant {v} on {r}.{g}"
        );
    }
    // Nothing the operator never touches.
    let resources: BTreeSet<&str> = granted.iter().map(|(_, r, _)| r.as_str()).collect();
    for never in [
        "nodes",
        "configmaps",
        "clusterroles",
        "roles",
        "rolebindings",
        "serviceaccounts",
        "customresourcedefinitions",
        "pods/exec",
    ] {
        assert!(
            !resources.contains(never),
            "the chart grants access to {never}"
        );
    }
    // Leases live in the release namespace only: a Role, not the ClusterRole.
    let cluster_role = one(&docs, "ClusterRole");
    assert!(
        !cluster_role.to_string().contains("leases"),
        "leases belong in the namespaced Role"
    );
    let role = one(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "voice-system");
}

/// The rules of one rendered Role or ClusterRole, as (group, resource, verb) triples.
fn rules_of(role: &Value) -> BTreeSet<(String, String, String)> {
    granted(std::slice::from_ref(role))
}

#[test]
fn a_watched_namespace_gets_namespaced_roles_and_the_cluster_role_keeps_only_providers_and_namespaces()
 {
    let docs = render("voice-system", &["operator.watchNamespace=team-a"]);
    let cluster = rules_of(one(&docs, "ClusterRole"));
    let resources: BTreeSet<&str> = cluster.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(
        resources,
        BTreeSet::from(["namespaces", "voiceproviders", "voiceproviders/status"]),
        "the ClusterRole grants only the cluster-scoped providers and namespaces"
    );
    let writes = cluster
        .iter()
        .filter(|(_, r, v)| r == "namespaces" && !["get", "list", "watch"].contains(&v.as_str()))
        .count();
    assert_eq!(writes, 0, "namespaces are only read");
    let roles = find(&docs, "Role");
    let watched = roles
        .iter()
        .find(|r| r["metadata"]["name"] == "voice-voice-operator-watched")
        .expect("a Role for the watched namespace");
    assert_eq!(watched["metadata"]["namespace"], "team-a");
    let namespaced = rules_of(watched);
    for (g, r, v) in [
        ("voicebackends.dev", "voicebackends", "watch"),
        ("voicebackends.dev", "voicesessions/status", "patch"),
        ("", "pods", "create"),
        ("", "secrets", "watch"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(
            namespaced.contains(&(g.to_owned(), r.to_owned(), v.to_owned())),
            "the watched Role lacks {v} on {r}.{g}"
        );
    }
    let binding = find(&docs, "RoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"] == "voice-voice-operator-watched")
        .expect("its RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], "team-a");
    assert_eq!(binding["subjects"][0]["namespace"], "voice-system");
    // Provider Events land in `default`: a Role there for Events and nothing else.
    let events = roles
        .iter()
        .find(|r| r["metadata"]["name"] == "voice-voice-operator-provider-events")
        .expect("a Role for provider Events");
    assert_eq!(events["metadata"]["namespace"], "default");
    assert_eq!(
        rules_of(events),
        BTreeSet::from([
            (
                "events.k8s.io".to_owned(),
                "events".to_owned(),
                "create".to_owned()
            ),
            (
                "events.k8s.io".to_owned(),
                "events".to_owned(),
                "patch".to_owned()
            ),
        ])
    );

    // Without watchNamespace, one ClusterRole covers every namespace and no extra Role exists.
    let docs = render("voice-system", &[]);
    let cluster = rules_of(one(&docs, "ClusterRole"));
    assert!(cluster.contains(&("".to_owned(), "pods".to_owned(), "create".to_owned())));
    assert_eq!(
        find(&docs, "Role").len(),
        1,
        "only the leader-election Role"
    );
}

#[test]
fn everything_enabled_renders_monitors_rules_dashboard_and_network_policy() {
    let docs = render("voice-system", ALL_ENABLED);
    let kinds = kinds(&docs);
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    let cm = one(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value = serde_json::from_str(
        cm["data"]["voice-operator.json"]
            .as_str()
            .expect("dashboard JSON"),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));

    let deploy = one(&docs, "Deployment");
    let env = deploy["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{env}");

    // The alert rules pass Prometheus' own checker.
    let rule = one(&docs, "PrometheusRule");
    let groups = json!({"groups": rule["spec"]["groups"]});
    let dir = scratch_dir("rules");
    let file = dir.join("rules.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&groups).expect("YAML")).expect("writing");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs (Debian package prometheus; cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = voice_cluster::layout::target_dir()
        .join("voice-helm")
        .join(format!("{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch dir");
    dir
}

#[test]
fn bad_values_fail_template_and_install_with_the_schema_message() {
    let chart = chart();
    let cases: &[(&str, &[&str])] = &[
        ("replicaCount=0", &["replicaCount", "minimum"]),
        (
            "image.pullPolicy=Sometimes",
            &["pullPolicy", "must be one of"],
        ),
        (
            "monitoring.prometheusRule.backendDegradedFor=five minutes",
            &["backendDegradedFor"],
        ),
        (
            "monitoring.prometheusRule.providerAtCapFor=soon",
            &["providerAtCapFor"],
        ),
        ("replicas=2", &["replicas", "additional properties"]),
        ("metrics.port=70000", &["port", "maximum"]),
        ("opentelemetry.endpoint=collector:4317", &["endpoint"]),
    ];
    for (set, words) in cases {
        let out = helm_run(&["template", "voice", &chart, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} rendered");
        for w in *words {
            assert!(stderr.contains(w), "--set {set}: {w:?} not in {stderr}");
        }
    }
    // helm install checks the same schema before it creates anything.
    let out = helm_on_cluster(&[
        "install",
        "bad-values",
        &chart,
        "--namespace",
        "default",
        "--set",
        "replicaCount=0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "install with replicaCount=0 succeeded"
    );
    assert!(
        stderr.contains("replicaCount") && stderr.contains("minimum"),
        "{stderr}"
    );
    let ls = helm_ok(
        helm_on_cluster(&["list", "--namespace", "default", "-q", "--all"]),
        "list",
    );
    assert!(!ls.contains("bad-values"), "a release was recorded: {ls}");
}

/// `kubectl apply --dry-run=server` of documents into `ns`: the API server's admission and
/// schema validation, nothing stored.
fn server_dry_run(ns: &str, docs: &[&Value]) {
    let input: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).expect("YAML")))
        .collect();
    let out = kubectl_with_stdin(&["apply", "--dry-run=server", "-n", ns, "-f", "-"], &input);
    assert!(
        out.status.success(),
        "dry run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("(server dry run)").count(),
        docs.len(),
        "{stdout}"
    );
}

#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run() {
    voice_tests::install_crds();
    let ns = TestNamespace::new("helm-dry").await;
    let defaults = render(ns.name(), &[]);
    server_dry_run(ns.name(), &defaults.iter().collect::<Vec<_>>());

    let all = render(ns.name(), ALL_ENABLED);
    let monitoring = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];
    let (mon, rest): (Vec<&Value>, Vec<&Value>) = all
        .iter()
        .partition(|d| monitoring.iter().any(|k| d["kind"] == *k));
    assert_eq!(mon.len(), 3);
    server_dry_run(ns.name(), &rest);
    match prometheus_operator_crds(&["servicemonitors", "podmonitors", "prometheusrules"]) {
        Ok(files) => {
            for f in &files {
                let f = f.to_str().expect("UTF-8 path");
                kubectl_ok(&[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager=voice-tests",
                    "-f",
                    f,
                ]);
                kubectl_ok(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "-f",
                    f,
                ]);
            }
            server_dry_run(ns.name(), &mon);
        }
        Err(reason) => eprintln!(
            "skipping the dry run of ServiceMonitor/PodMonitor/PrometheusRule: no \
             monitoring.coreos.com CRDs ({reason})"
        ),
    }
}

/// Removes a release (and with it the cluster-scoped ClusterRole, binding and provider).
struct Release {
    name: String,
    ns: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm_on_cluster(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.ns,
            "--wait=false",
        ]);
    }
}

/// A kubeconfig that authenticates as ServiceAccount `sa` of `ns` (a TokenRequest token),
/// against the local control plane.
fn service_account_kubeconfig(ns: &str, sa: &str, path: &Path) {
    let token = kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=2h"]);
    let admin: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(voice_tests::cluster().kubeconfig()).expect("admin kubeconfig"),
    )
    .expect("kubeconfig is YAML");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa, "namespace": ns}}],
        "current-context": "sa",
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_yaml_ng::to_string(&config).expect("YAML")).expect("writing");
    std::fs::rename(&tmp, path).expect("renaming the kubeconfig into place");
}

/// The local control plane runs no Deployment or ReplicaSet controller (only garbage
/// collection and namespaces), so this plays their part: it creates the Deployment's
/// `replicas` pods from its pod template as they would, owned by the Deployment so that
/// uninstalling the release removes them. Returns how many it created.
fn create_deployment_pods(ns: &str, deployment: &str) -> usize {
    let deploy: Value = serde_json::from_str(&kubectl_ok(&[
        "get",
        "deployment",
        deployment,
        "-n",
        ns,
        "-o",
        "json",
    ]))
    .expect("kubectl prints JSON");
    let replicas = deploy["spec"]["replicas"].as_u64().expect("replicas");
    let template = &deploy["spec"]["template"];
    for _ in 0..replicas {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": format!("{deployment}-"),
                "labels": template["metadata"]["labels"],
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": deployment,
                    "uid": deploy["metadata"]["uid"],
                    "controller": true,
                }],
            },
            "spec": template["spec"],
        });
        voice_tests::kubectl_stdin(&["create", "-n", ns, "-f", "-"], &pod.to_string());
    }
    usize::try_from(replicas).expect("a small count")
}

/// Whether the API server's authorizer lets `sa` do `verb` on `resource` (`name.group`,
/// `name.group/object`, or `name.group:subresource`).
fn can_i(ns: &str, sa: &str, verb: &str, resource: &str) -> bool {
    can_i_in(ns, ns, sa, verb, resource)
}

/// Whether ServiceAccount `sa_ns/sa` may `verb` `resource` in namespace `ns`.
fn can_i_in(ns: &str, sa_ns: &str, sa: &str, verb: &str, resource: &str) -> bool {
    let who = format!("--as=system:serviceaccount:{sa_ns}:{sa}");
    let (resource, sub) = match resource.split_once(':') {
        Some((r, s)) => (r, format!("--subresource={s}")),
        None => (resource, String::new()),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "-n", ns, &who];
    if !sub.is_empty() {
        args.push(&sub);
    }
    let out = kubectl(&args);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// The release's two operator pods once both run and are Ready: the leader once its caches
/// synced, the standby at once (`/readyz` answers "standby", so the PDB can evict the leader).
async fn running_operator_pods(ns: &TestNamespace, release: &str) -> Result<Vec<Pod>, String> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
        )))
        .await
        .map_err(|e| e.to_string())?
        .items;
    let running = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    let ready = pods
        .iter()
        .filter(|p| operator_common::pod_ready(p))
        .count();
    if running == 2 && ready == 2 {
        Ok(pods)
    } else {
        Err(format!(
            "{running} of {} operator pods Running, {ready} Ready",
            pods.len()
        ))
    }
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

#[tokio::test]
async fn helm_install_runs_the_operator_with_only_the_charts_rbac() {
    voice_tests::install_crds();
    let agent = voice_tests::node_agent();
    let ns = TestNamespace::new("helm-install").await;
    let release = ns.name().to_owned();
    let sa = format!("{release}-voice-operator");
    let provider = format!("{release}-builtin");
    let dir = scratch_dir(&release);
    let kubeconfig = dir.join("operator-kubeconfig.yaml");

    // The shipped built-in provider spec, under a name and label only this test's operator
    // manages (the cluster is shared with tests running in parallel).
    let chart_values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let values = json!({
        "operator": {
            "watchNamespace": ns.name(),
            "providerSelector": format!("{}={}", voice_tests::PROVIDER_LABEL, ns.name()),
            "logJson": false,
            "logLevel": "info,voice_operator=debug",
            // The node agent runs the pod as a local process with no service-account mount:
            // this kubeconfig carries a token of the chart's ServiceAccount instead, so every
            // call the operator makes is authorised by the chart's RBAC alone.
            "extraEnv": [{"name": "KUBECONFIG", "value": kubeconfig.display().to_string()}],
        },
        // Both replicas are processes on one machine: each binds its own pod IP.
        "metrics": {"bindAddress": "$(POD_IP)"},
        "providers": [{
            "name": provider,
            "labels": {voice_tests::PROVIDER_LABEL: ns.name()},
            "spec": chart_values["providers"][0]["spec"],
        }],
    });
    let values_file = dir.join("values.yaml");
    std::fs::write(
        &values_file,
        serde_yaml_ng::to_string(&values).expect("YAML"),
    )
    .expect("writing");

    let started = Instant::now();
    let chart = chart();
    let _release = Release {
        name: release.clone(),
        ns: ns.name().to_owned(),
    };
    helm_ok(
        helm_on_cluster(&[
            "install",
            &release,
            &chart,
            "--namespace",
            ns.name(),
            "-f",
            values_file.to_str().expect("UTF-8 path"),
        ]),
        "install",
    );
    service_account_kubeconfig(ns.name(), &sa, &kubeconfig);
    // The Deployment and the ServiceAccount share the full name.
    let replicas = create_deployment_pods(ns.name(), &sa);
    assert_eq!(replicas, 2, "the chart's default is two replicas");

    // Least privilege, asked of the API server's authorizer for the chart's ServiceAccount.
    assert!(can_i(
        ns.name(),
        &sa,
        "patch",
        "voicebackends.voicebackends.dev:status"
    ));
    assert!(can_i(ns.name(), &sa, "create", "pods"));
    assert!(can_i(ns.name(), &sa, "create", "events.events.k8s.io"));
    assert!(can_i(ns.name(), &sa, "update", "leases/voice-operator"));
    // watchNamespace: namespaced Roles, so nothing in any other namespace.
    for (verb, resource) in [
        ("create", "pods"),
        ("get", "secrets"),
        ("list", "voicesessions.voicebackends.dev"),
    ] {
        assert!(
            !can_i_in("kube-system", ns.name(), &sa, verb, resource),
            "{sa} may {verb} {resource} outside its watched namespace"
        );
    }
    assert!(can_i_in(
        "default",
        ns.name(),
        &sa,
        "create",
        "events.events.k8s.io"
    ));
    for (verb, resource) in [
        ("list", "configmaps"),
        ("get", "nodes"),
        ("update", "leases/someone-elses-lease"),
        ("delete", "voicebackends.voicebackends.dev"),
        ("create", "pods:exec"),
        ("create", "clusterroles"),
    ] {
        assert!(
            !can_i(ns.name(), &sa, verb, resource),
            "{sa} may {verb} {resource}"
        );
    }

    // Both replicas run; the leader turns Ready (/readyz answers once its caches synced, which
    // needs list/watch on everything the controllers watch).
    let pods = wait_for(
        Duration::from_secs(90),
        "two running operator pods, both Ready",
        || running_operator_pods(&ns, &release),
    )
    .await;
    let operators_ready = started.elapsed();

    // An example backend on the chart's provider is reconciled into a healthy worker.
    let mut backend = backend_manifest(
        "assistant",
        &provider,
        json!({"scaling": {"minWorkers": 1, "maxWorkers": 2}}),
    );
    let example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            voice_cluster::layout::workspace_root().join("examples/10-backend-stt-tts.yaml"),
        )
        .expect("the example exists"),
    )
    .expect("YAML");
    backend["spec"]["pipeline"] = example["spec"]["pipeline"].clone();
    backend["spec"]["agent"] = example["spec"]["agent"].clone();
    apply(&ns, &[&backend]);
    let status = wait_healthy(&ns, "assistant", 1, Duration::from_secs(120)).await;
    assert_eq!(status.workers.ready, 1);
    let backend_healthy = started.elapsed();

    // A session (the example's) is admitted through the chart's RBAC: the allocator lists and
    // watches sessions, reserves a slot on the worker, writes the join-token Secret and the
    // session's status.
    let mut session: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            voice_cluster::layout::workspace_root().join("examples/30-session.yaml"),
        )
        .expect("the example exists"),
    )
    .expect("YAML");
    session["spec"]["backendRef"]["name"] = json!("assistant");
    apply(&ns, &[&session]);
    let sessions = ns.api::<VoiceSession>();
    let endpoint = wait_for(Duration::from_secs(60), "call-42 Active", || {
        let sessions = sessions.clone();
        async move {
            let s = sessions.get("call-42").await.map_err(|e| e.to_string())?;
            let status = s.status.unwrap_or_default();
            match (status.phase, status.endpoint) {
                (SessionPhase::Active, Some(endpoint)) => Ok(endpoint),
                (phase, _) => Err(format!("{phase:?}, conditions {:?}", status.conditions)),
            }
        }
    })
    .await;
    let secrets = kube::Api::<Secret>::namespaced(voice_tests::client().await, ns.name());
    let token = voice_tests::token_secret(&secrets, &endpoint.token_secret_name).await;
    assert!(
        token
            .data
            .is_some_and(|d| d.get("token").is_some_and(|t| !t.0.is_empty())),
        "the token Secret holds a token"
    );
    let session_active = started.elapsed();

    // The chart's provider is Accepted: the provider controller could write its status.
    let vp = kube::Api::<VoiceProvider>::all(voice_tests::client().await)
        .get(&provider)
        .await
        .expect("the chart's provider exists");
    let accepted = provider_condition(&vp, "Accepted");
    assert_eq!(
        accepted.as_ref().map(|c| c.0.as_str()),
        Some("True"),
        "{accepted:?}"
    );

    // The leader holds the Lease named by the chart, in the release namespace.
    let holder = kubectl_ok(&[
        "get",
        "lease",
        "voice-operator",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    // The holder identity is the pod name plus a per-process suffix.
    let leader_name = names
        .iter()
        .find(|n| holder.starts_with(&format!("{n}-")))
        .unwrap_or_else(|| panic!("lease holder {holder:?} is none of {names:?}"))
        .clone();

    // No permission error anywhere: not in either operator's log, not in any Event.
    let mut logs = String::new();
    for name in &names {
        let log = agent.container_log(ns.name(), name, "operator");
        logs.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
    }
    assert!(
        logs.contains("voice_operator") || logs.contains("INFO"),
        "the operator logs are empty: {}",
        &logs
    );
    for line in logs.lines() {
        let lower = line.to_lowercase();
        assert!(
            !lower.contains("forbidden")
                && !lower.contains("cannot list")
                && !lower.contains("cannot watch"),
            "permission error in the operator log: {line}"
        );
    }
    let mut events = events_about(&ns, "assistant").await;
    events.extend(events_about(&ns, "call-42").await);
    assert!(
        !events.is_empty(),
        "the operator published no Event about the backend"
    );
    for (reason, note) in &events {
        assert!(
            !reason.to_lowercase().contains("forbidden")
                && !note.to_lowercase().contains("forbidden"),
            "Event {reason}: {note}"
        );
    }

    // Their metrics endpoints serve on the pod IPs, and the leader exports its reconciles.
    let leader = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(leader_name.as_str()))
        .expect("leader pod");
    assert!(
        operator_common::pod_ready(leader),
        "the leader is the Ready pod"
    );
    let standby = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() != Some(leader_name.as_str()))
        .expect("standby pod");
    assert_eq!(http_get_from(&pod_ip(standby), 8081, "/healthz"), "ok");
    let metrics = http_get_from(&pod_ip(leader), 8081, "/metrics");
    assert_eq!(leader_gauge(&metrics), Some(1), "{metrics}");
    assert!(
        metrics.contains("voice_operator_reconciles_total{controller=\"backend\",result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voice_session_admissions_total{result=\"admitted\"} 1"),
        "{metrics}"
    );
    // Removed while the operator runs, so its cleanup finalizer is released and the
    // namespace can go.
    kubectl_ok(&[
        "delete",
        "voicebackend",
        "assistant",
        "-n",
        ns.name(),
        "--timeout=60s",
    ]);
    // Uninstalling removes the cluster-scoped objects too (ClusterRole, binding, provider).
    helm_ok(
        helm_on_cluster(&["uninstall", &release, "--namespace", ns.name(), "--wait"]),
        "uninstall",
    );
    for (kind, name) in [
        ("clusterrole", sa.as_str()),
        ("clusterrolebinding", sa.as_str()),
        ("voiceprovider", provider.as_str()),
    ] {
        let out = kubectl(&["get", kind, name, "--ignore-not-found", "-o", "name"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{kind} {name} outlived helm uninstall"
        );
    }
    eprintln!(
        "helm install: operators Ready after {:.1} s, backend Healthy after {:.1} s, \
         session Active after {:.1} s",
        operators_ready.as_secs_f64(),
        backend_healthy.as_secs_f64(),
        session_active.as_secs_f64()
    );
}

/// An alert as `promtool test rules` expects it: the rule's labels plus `labels`, and its
/// annotations with `{{ $labels.x }}` and `{{ $value }}` (or `{{ printf "%.3f" $value }}`)
/// filled in as Prometheus would; `value` is the text Prometheus renders.
fn expected_alert(rules: &[Value], alert: &str, labels: &[(&str, &str)], value: &str) -> Value {
    let rule = rules
        .iter()
        .find(|r| r["alert"] == alert)
        .unwrap_or_else(|| panic!("no alert {alert} in the chart"));
    let mut exp_labels = rule["labels"].clone();
    for (k, v) in labels {
        exp_labels[*k] = json!(v);
    }
    let mut annotations = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_object().expect("annotations") {
        let mut text = v
            .as_str()
            .expect("annotation text")
            .replace("{{ $value }}", value)
            .replace(r#"{{ printf "%.3f" $value }}"#, value);
        for (lk, lv) in labels {
            text = text.replace(&format!("{{{{ $labels.{lk} }}}}"), lv);
        }
        assert!(!text.contains("{{"), "{alert}: unfilled template in {text}");
        annotations.insert(k.clone(), json!(text));
    }
    json!({"exp_labels": exp_labels, "exp_annotations": annotations})
}

#[test]
fn alerts_fire_on_the_conditions_the_runbook_names_and_not_otherwise() {
    let docs = render("voice-system", &["monitoring.prometheusRule.enabled=true"]);
    let rule = one(&docs, "PrometheusRule");
    let groups = rule["spec"]["groups"].as_array().expect("groups");
    let rules: Vec<Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect();
    let series = |s: &str, v: &str| json!({"series": s, "values": v});
    let case = |t: &str, alert: &str, exp: Vec<Value>| json!({"eval_time": t, "alertname": alert, "exp_alerts": exp});
    let healthy_world = json!({
        "interval": "1m",
        "input_series": [
            // Worker counts of the leading operator (the backend alerts join them, so a
            // deleted backend, whose voice_workers the operator removes, stays quiet).
            series(r#"voice_workers{backend="ns/a",state="desired"}"#, "2x30"),
            series(r#"voice_workers{backend="ns/a",state="ready"}"#, "0x30"),
            series(r#"voice_workers{backend="ns/b",state="desired"}"#, "3x30"),
            series(r#"voice_workers{backend="ns/b",state="ready"}"#, "1x30"),
            series(r#"voice_workers{backend="ns/ok",state="desired"}"#, "2x30"),
            series(r#"voice_workers{backend="ns/ok",state="ready"}"#, "2x30"),
            series(r#"voice_workers{backend="ns/new",state="desired"}"#, "1x30"),
            series(r#"voice_workers{backend="ns/idle",state="desired"}"#, "0x30"),
            // Health: ns/a Unhealthy (the leader moves from op-0 to op-1 after 3 m: the alert
            // keeps its pending time), ns/b Degraded, ns/ok Healthy, ns/new Unknown with a
            // worker desired (none ever passed a check), ns/idle Unknown with none desired,
            // ns/gone Unhealthy when it was deleted (its gauge left behind, no voice_workers).
            series(r#"voice_backend_health{backend="ns/a",pod="op-0",status="Unhealthy"}"#, "1x3"),
            series(r#"voice_backend_health{backend="ns/a",pod="op-1",status="Unhealthy"}"#, "_x3 1x26"),
            series(r#"voice_backend_health{backend="ns/a",pod="op-0",status="Healthy"}"#, "0x3"),
            series(r#"voice_backend_health{backend="ns/a",pod="op-1",status="Healthy"}"#, "_x3 0x26"),
            series(r#"voice_backend_health{backend="ns/b",pod="op-0",status="Degraded"}"#, "1x30"),
            series(r#"voice_backend_health{backend="ns/b",pod="op-0",status="Unhealthy"}"#, "0x30"),
            series(r#"voice_backend_health{backend="ns/ok",pod="op-0",status="Healthy"}"#, "1x30"),
            series(r#"voice_backend_health{backend="ns/ok",pod="op-0",status="Degraded"}"#, "0x30"),
            series(r#"voice_backend_health{backend="ns/ok",pod="op-0",status="Unhealthy"}"#, "0x30"),
            series(r#"voice_backend_health{backend="ns/ok",pod="op-0",status="Unknown"}"#, "0x30"),
            series(r#"voice_backend_health{backend="ns/new",pod="op-0",status="Unknown"}"#, "1x30"),
            series(r#"voice_backend_health{backend="ns/idle",pod="op-0",status="Unknown"}"#, "1x30"),
            series(r#"voice_backend_health{backend="ns/gone",pod="op-0",status="Unhealthy"}"#, "1x30"),
            // ns/c: its only worker is full; ns/ok's has room.
            series(r#"voice_worker_sessions{backend="ns/c",pod="c-0",state="active"}"#, "1x30"),
            series(r#"voice_worker_sessions{backend="ns/c",pod="c-0",state="reserved"}"#, "1x30"),
            series(r#"voice_worker_capacity{backend="ns/c",pod="c-0"}"#, "2x30"),
            series(r#"voice_worker_sessions{backend="ns/ok",pod="ok-0",state="active"}"#, "1x30"),
            series(r#"voice_worker_capacity{backend="ns/ok",pod="ok-0"}"#, "4x30"),
            series(r#"voice_operator_leader{pod="op-0"}"#, "1x30"),
            series(r#"voice_operator_leader{pod="op-1"}"#, "0x30"),
            // Provider p holds its cap of 10; q is below its cap; u has no cap (0).
            series(r#"voice_provider_sessions{provider="p",pod="op-0",state="in_use"}"#, "10x30"),
            series(r#"voice_provider_session_limit{provider="p",pod="op-0"}"#, "10x30"),
            series(r#"voice_provider_sessions{provider="q",pod="op-0",state="in_use"}"#, "5x30"),
            series(r#"voice_provider_session_limit{provider="q",pod="op-0"}"#, "10x30"),
            series(r#"voice_provider_sessions{provider="u",pod="op-0",state="in_use"}"#, "50x30"),
            series(r#"voice_provider_session_limit{provider="u",pod="op-0"}"#, "0x30"),
            series(r#"voice_provider_sessions{provider="p",pod="op-0",state="pending"}"#, "3x30"),
            // Two sessions of ns/c wait for worker capacity the whole time; one of ns/ok waited
            // for a ready worker for a minute only; none waits on ns/ok's provider.
            series(r#"voice_sessions_waiting{backend="ns/c",pod="op-0",reason="NoWorkerCapacity"}"#, "2x30"),
            series(r#"voice_sessions_waiting{backend="ns/ok",pod="op-0",reason="BackendNotReady"}"#, "1 0x29"),
            series(r#"voice_sessions_waiting{backend="ns/ok",pod="op-0",reason="ProviderLimit"}"#, "0x30"),
            // Turn latency p95 against each backend's own target: ns/a (0.975 s, target
            // 0.5 s) and ns/strict (0.4875 s, target 0.25 s, under the 0.8 s fallback) are
            // slow; ns/slow (0.975 s, target 1.5 s, over the fallback) is not; ns/untargeted
            // (0.975 s) has no target series and falls back to turnLatencyP95Seconds.
            series(r#"voice_backend_latency_target_seconds{backend="ns/a",pod="op-0"}"#, "0.5x30"),
            series(r#"voice_backend_latency_target_seconds{backend="ns/strict",pod="op-0"}"#, "0.25x30"),
            series(r#"voice_backend_latency_target_seconds{backend="ns/slow",pod="op-0"}"#, "1.5x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/a",pod="a-0",le="0.5"}"#, "0x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/a",pod="a-0",le="1"}"#, "0+10x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/a",pod="a-0",le="+Inf"}"#, "0+10x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/strict",pod="s-0",le="0.25"}"#, "0x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/strict",pod="s-0",le="0.5"}"#, "0+10x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/strict",pod="s-0",le="+Inf"}"#, "0+10x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/slow",pod="w-0",le="0.5"}"#, "0x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/slow",pod="w-0",le="1"}"#, "0+10x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/slow",pod="w-0",le="+Inf"}"#, "0+10x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/untargeted",pod="u-0",le="0.5"}"#, "0x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/untargeted",pod="u-0",le="1"}"#, "0+10x30"),
            series(r#"voice_turn_latency_seconds_bucket{backend="ns/untargeted",pod="u-0",le="+Inf"}"#, "0+10x30"),
            // Admissions take 1 to 2.5 s; clients of ns/a lose 5 to 10 % of packets.
            series(r#"voice_session_admission_duration_seconds_bucket{le="1"}"#, "0x30"),
            series(r#"voice_session_admission_duration_seconds_bucket{le="2.5"}"#, "0+10x30"),
            series(r#"voice_session_admission_duration_seconds_bucket{le="+Inf"}"#, "0+10x30"),
            series(r#"voice_worker_rtcp_fraction_lost_bucket{backend="ns/a",le="0.05"}"#, "0x30"),
            series(r#"voice_worker_rtcp_fraction_lost_bucket{backend="ns/a",le="0.1"}"#, "0+10x30"),
            series(r#"voice_worker_rtcp_fraction_lost_bucket{backend="ns/a",le="+Inf"}"#, "0+10x30"),
            series(r#"voice_operator_reconciles_total{controller="backend",result="ok"}"#, "0+60x30"),
            series(r#"voice_health_checks_total{result="ok"}"#, "0+60x30"),
        ],
        "alert_rule_test": [
            case("4m", "VoiceBackendUnhealthy", vec![]),
            case("6m", "VoiceBackendUnhealthy", vec![
                expected_alert(&rules, "VoiceBackendUnhealthy", &[("backend", "ns/a")], "1"),
                expected_alert(&rules, "VoiceBackendUnhealthy", &[("backend", "ns/new")], "1"),
            ]),
            case("4m", "VoiceBackendDegraded", vec![]),
            case("6m", "VoiceBackendDegraded", vec![expected_alert(&rules, "VoiceBackendDegraded", &[("backend", "ns/b")], "1")]),
            case("6m", "VoiceWorkersFull", vec![expected_alert(&rules, "VoiceWorkersFull", &[("backend", "ns/c")], "2")]),
            case("4m", "VoiceProviderAtSessionCap", vec![]),
            case("6m", "VoiceProviderAtSessionCap", vec![expected_alert(&rules, "VoiceProviderAtSessionCap", &[("provider", "p")], "10")]),
            case("1m", "VoiceSessionsPendingTooLong", vec![]),
            case("3m", "VoiceSessionsPendingTooLong", vec![expected_alert(&rules, "VoiceSessionsPendingTooLong", &[("backend", "ns/c"), ("reason", "NoWorkerCapacity")], "2")]),
            case("9m", "VoiceTurnLatencyHigh", vec![]),
            case("20m", "VoiceTurnLatencyHigh", vec![
                expected_alert(&rules, "VoiceTurnLatencyHigh", &[("backend", "ns/a")], "0.975"),
                expected_alert(&rules, "VoiceTurnLatencyHigh", &[("backend", "ns/strict")], "0.488"),
                expected_alert(&rules, "VoiceTurnLatencyHigh", &[("backend", "ns/untargeted")], "0.975"),
            ]),
            case("20m", "VoiceAdmissionSlow", vec![expected_alert(&rules, "VoiceAdmissionSlow", &[], "2.425")]),
            case("20m", "VoiceMediaPacketLoss", vec![expected_alert(&rules, "VoiceMediaPacketLoss", &[("backend", "ns/a")], "0.0975")]),
            case("20m", "VoiceOperatorNoLeader", vec![]),
            case("20m", "VoiceOperatorReconcileErrors", vec![]),
            case("20m", "VoiceWorkerHealthChecksFailing", vec![]),
        ],
    });
    let broken_world = json!({
        "interval": "1m",
        "input_series": [
            series(r#"voice_operator_leader{pod="op-0"}"#, "0x30"),
            series(r#"voice_operator_reconciles_total{controller="backend",result="error"}"#, "0+60x30"),
            series(r#"voice_health_checks_total{result="ok"}"#, "0+60x30"),
            series(r#"voice_health_checks_total{result="error"}"#, "0+60x30"),
        ],
        "alert_rule_test": [
            case("1m", "VoiceOperatorNoLeader", vec![]),
            case("3m", "VoiceOperatorNoLeader", vec![expected_alert(&rules, "VoiceOperatorNoLeader", &[], "0")]),
            case("20m", "VoiceOperatorReconcileErrors", vec![expected_alert(&rules, "VoiceOperatorReconcileErrors", &[("controller", "backend")], "1")]),
            case("20m", "VoiceWorkerHealthChecksFailing", vec![expected_alert(&rules, "VoiceWorkerHealthChecksFailing", &[], "0.5")]),
        ],
    });
    // Every alert of the chart is exercised at least once.
    for r in &rules {
        let name = r["alert"].as_str().expect("alert name");
        assert!(
            healthy_world.to_string().contains(&format!("\"{name}\""))
                || broken_world.to_string().contains(&format!("\"{name}\"")),
            "alert {name} has no case"
        );
    }
    let dir = scratch_dir("alerts");
    std::fs::write(
        dir.join("rules.yaml"),
        serde_yaml_ng::to_string(&json!({"groups": groups})).expect("YAML"),
    )
    .expect("writing rules");
    let tests = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [healthy_world, broken_world],
    });
    std::fs::write(
        dir.join("tests.yaml"),
        serde_yaml_ng::to_string(&tests).expect("YAML"),
    )
    .expect("writing tests");
    let out = std::process::Command::new("promtool")
        .current_dir(&dir)
        .args(["test", "rules", "tests.yaml"])
        .output()
        .expect("promtool runs (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
