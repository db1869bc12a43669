//! A real Prometheus scrapes the operator and its worker pods (file-based service discovery on
//! their addresses); PromQL must agree with what the API shows. And every metric the chart's
//! dashboard and alerts use must be one the components export.

mod operator_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use serde_json::{Value, json};
use voice_crds::{SessionPhase, VoiceSession};
use voice_tests::helm::{chart_dir, helm_ok, helm_run};
use voice_tests::prometheus::{Prometheus, Target, exposition_names};

use operator_common::{OperatorStack, apply, live_pods, wait_for, wait_healthy};

const T: Duration = Duration::from_secs(120);

fn session(name: &str) -> Value {
    json!({
        "apiVersion": "voicebackends.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": name},
        "spec": {
            "backendRef": {"name": "assistant"},
            "user": {"userID": format!("user-{name}")},
            "transport": "websocket",
        },
    })
}

async fn active_sessions(ns: &voice_tests::TestNamespace) -> usize {
    ns.api::<VoiceSession>()
        .list(&Default::default())
        .await
        .expect("listing sessions")
        .items
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|s| s.phase == SessionPhase::Active)
        })
        .count()
}

/// Polls `promql` until its single value is `want` (Prometheus scrapes every second).
async fn wait_value(prom: &Prometheus, promql: &str, want: f64) {
    wait_for(Duration::from_secs(30), promql, || async {
        match prom.scalar(promql) {
            Ok(v) if (v - want).abs() < 1e-9 => Ok(()),
            Ok(v) => Err(format!("{v}, want {want}")),
            Err(e) => Err(e),
        }
    })
    .await;
}

/// GET http://addr/metrics; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
    // A server that accepts and never answers must fail the test, not hang it.
    let limit = Some(std::time::Duration::from_secs(30));
    stream
        .set_read_timeout(limit)
        .expect("setting a read timeout");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("writing");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reading");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn prometheus_scrapes_operator_and_workers_and_promql_matches_the_api() {
    // The diagnostic echo speech-to-speech pipeline, so a WebRTC call hears itself back.
    let stack = OperatorStack::start_with(
        "prom",
        json!({"capabilities": {"s2sSupport": true, "maxConcurrentSessions": 10}, "stages": {"s2s": ["echo"]}}),
    )
    .await;
    let ns = &stack.ns;
    stack.apply_backend(
        "assistant",
        json!({
            "pipeline": {"type": "S2S", "s2s": {"provider": "echo"}, "stt": null, "tts": null, "latencyTarget": "750ms"},
            "agent": null,
            "scaling": {"minWorkers": 2, "maxWorkers": 2},
            "workers": {"sessionsPerWorker": 2},
        }),
    );
    wait_healthy(ns, "assistant", 2, T).await;
    let names = ["s1", "s2", "s3"];
    for n in names {
        apply(ns, &[&session(n)]);
    }
    wait_for(T, "three Active sessions", || async {
        match active_sessions(ns).await {
            3 => Ok(()),
            n => Err(format!("{n} Active")),
        }
    })
    .await;

    // The operator through file-based discovery; the workers through the API, with the
    // scrape config the Prometheus Operator would build from the chart's PodMonitor.
    let started = Instant::now();
    let sd_dir = voice_cluster::layout::target_dir().join("voice-prometheus");
    std::fs::create_dir_all(&sd_dir).expect("creating the Prometheus directory");
    let sd_file = sd_dir.join(format!("{}-pods.json", ns.name()));
    let tmp = sd_file.with_extension("tmp");
    std::fs::write(&tmp, discovered_pods(ns).await.to_string()).expect("writing pods");
    std::fs::rename(&tmp, &sd_file).expect("renaming pods");
    let prom = Prometheus::start_with(
        ns.name(),
        vec![podmonitor_scrape_config(ns.name(), &sd_file)],
    );
    let backend = format!("{}/assistant", ns.name());
    let operator_addr = format!("127.0.0.1:{}", stack.operator.metrics_port());
    let targets = vec![Target {
        address: operator_addr.clone(),
        labels: vec![("role".into(), "operator".into())],
    }];
    let mut worker_addrs = Vec::new();
    for pod in live_pods(ns, "assistant").await {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("a running worker has an IP");
        worker_addrs.push(format!("{ip}:8080"));
    }
    assert_eq!(worker_addrs.len(), 2);
    prom.set_targets(&targets);
    wait_for(Duration::from_secs(30), "every target up", || async {
        let t = prom.targets()?;
        if t.len() == 3 && t.iter().all(|(_, health, _)| health == "up") {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    eprintln!(
        "prometheus: started and scraped all three targets in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Session counts: the workers' slots and the allocator's per-provider count match the API.
    let api_active = active_sessions(ns).await as f64;
    wait_value(
        &prom,
        &format!("sum(voice_worker_sessions{{backend=\"{backend}\"}})"),
        api_active,
    )
    .await;
    wait_value(
        &prom,
        &format!(
            "sum(voice_provider_sessions{{provider=\"{}\",state=\"in_use\"}})",
            stack.provider
        ),
        api_active,
    )
    .await;
    // Workers by state agree with the backend's status.
    let status = operator_common::backend_status(ns, "assistant")
        .await
        .expect("status");
    wait_value(
        &prom,
        &format!("max(voice_workers{{backend=\"{backend}\",state=\"ready\"}})"),
        f64::from(status.workers.ready),
    )
    .await;
    // Both workers were found through the API and carry the PodMonitor's labels.
    wait_value(
        &prom,
        &format!("count(up{{job=\"podmonitor\",backend=\"{backend}\"}} == 1)"),
        2.0,
    )
    .await;
    // The gauges the alerts and the dashboard's health row read: the provider's cap, the
    // backend's health and latency target, and no session waiting.
    wait_value(
        &prom,
        &format!(
            "max(voice_provider_session_limit{{provider=\"{}\"}})",
            stack.provider
        ),
        10.0,
    )
    .await;
    wait_value(
        &prom,
        &format!("max(voice_backend_health{{backend=\"{backend}\",status=\"Healthy\"}})"),
        1.0,
    )
    .await;
    wait_value(
        &prom,
        &format!("sum(voice_backend_health{{backend=\"{backend}\"}})"),
        1.0,
    )
    .await;
    wait_value(
        &prom,
        &format!("max(voice_backend_latency_target_seconds{{backend=\"{backend}\"}})"),
        0.75,
    )
    .await;
    wait_value(
        &prom,
        &format!("sum(voice_sessions_waiting{{backend=\"{backend}\"}}) or vector(0)"),
        0.0,
    )
    .await;
    // The workers' backend label (the PodMonitor's relabeling) joins the operator's: the
    // turn-latency alert compares each backend's p95 with its target this way.
    wait_value(
        &prom,
        &format!(
            "count(voice_worker_capacity{{job=\"podmonitor\",backend=\"{backend}\"}} \
             * on (backend) group_left max by (backend) (voice_backend_latency_target_seconds))"
        ),
        2.0,
    )
    .await;
    // The operator's reconcile and admission histograms have observations.
    for promql in [
        "sum(voice_operator_reconciles_total{controller=\"backend\"})",
        "sum(voice_operator_reconcile_duration_seconds_count{controller=\"backend\"})",
        "sum(voice_session_admission_duration_seconds_count)",
    ] {
        wait_for(Duration::from_secs(30), promql, || async {
            match prom.scalar(promql) {
                Ok(v) if v >= 1.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let p95 = prom
        .scalar("histogram_quantile(0.95, sum by (le) (voice_operator_reconcile_duration_seconds_bucket))")
        .expect("a reconcile p95");
    assert!(p95.is_finite() && p95 > 0.0, "reconcile p95 {p95}");

    // Live: ending a session shows in PromQL within a few scrapes.
    ns.api::<VoiceSession>()
        .delete("s1", &DeleteParams::default())
        .await
        .expect("deleting s1");
    wait_for(T, "two Active sessions", || async {
        match active_sessions(ns).await {
            2 => Ok(()),
            n => Err(format!("{n} Active")),
        }
    })
    .await;
    wait_value(
        &prom,
        &format!("sum(voice_worker_sessions{{backend=\"{backend}\"}})"),
        2.0,
    )
    .await;

    // An echo call from an independent WebRTC client (aiortc) fills the media and latency
    // histograms, and Prometheus sees them.
    let mut call = session("call");
    call["spec"]["transport"] = json!("webrtc");
    apply(ns, &[&call]);
    let api = ns.api::<VoiceSession>();
    let endpoint = wait_for(T, "call Active", || async {
        let s = api.get("call").await.map_err(|e| e.to_string())?;
        let status = s.status.unwrap_or_default();
        match (status.phase, status.endpoint) {
            (SessionPhase::Active, Some(e)) => Ok(e),
            (phase, _) => Err(format!("{phase:?}")),
        }
    })
    .await;
    let secrets = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        voice_tests::client().await,
        ns.name(),
    );
    let token = voice_tests::join_token(&secrets, &endpoint.token_secret_name).await;
    let (base, _) = endpoint
        .url
        .split_once("/v1/sessions/")
        .expect("a WHIP offer URL");
    let (report, _) =
        operator_common::aiortc::call(base, &format!("{}/call", ns.name()), &token, 3.0, 1.0).await;
    assert_eq!(report["state"], "connected", "{report}");
    for promql in [
        format!("sum(voice_worker_connect_duration_seconds_count{{backend=\"{backend}\"}})"),
        format!("sum(voice_worker_codec_duration_seconds_count{{backend=\"{backend}\"}})"),
        format!("sum(voice_worker_media_packets_total{{backend=\"{backend}\",direction=\"in\"}})"),
        format!("sum(voice_worker_media_packets_total{{backend=\"{backend}\",direction=\"out\"}})"),
    ] {
        wait_for(Duration::from_secs(30), &promql, || async {
            match prom.scalar(&promql) {
                Ok(v) if v >= 1.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let connect_p95 = prom
        .scalar(&format!(
            "histogram_quantile(0.95, sum by (le) (voice_worker_connect_duration_seconds_bucket{{backend=\"{backend}\"}}))"
        ))
        .expect("a connect p95");
    assert!(
        connect_p95.is_finite() && connect_p95 > 0.0,
        "connect p95 {connect_p95}"
    );
    eprintln!("prometheus: echo call connected; connect time p95 {connect_p95} s");

    // What the processes expose is what their metric definitions declare.
    let declared = declared_metrics();
    let mut live = exposition_names(&scrape(&operator_addr));
    for a in &worker_addrs {
        live.extend(exposition_names(&scrape(a)));
    }
    assert!(live.len() >= 20, "few metrics exposed: {live:?}");
    for (name, kind) in &live {
        assert_eq!(
            declared.get(name),
            Some(kind),
            "{name} ({kind}) is exposed but not declared as such in a metrics.rs: the parser of \
             declared_metrics() is out of date"
        );
    }
    let _ = std::fs::remove_file(&sd_file);
    // Removed while the operator runs, so its cleanup finalizer is released and the
    // namespace can go.
    voice_tests::kubectl_ok(&[
        "delete",
        "voicebackend",
        "assistant",
        "-n",
        ns.name(),
        "--timeout=60s",
    ]);
}

/// The scrape config the Prometheus Operator generates from the chart's PodMonitor, built here
/// from the rendered PodMonitor: `keep` rules for its pod selector and port, its path, and its
/// relabelings as written. Debian's Prometheus is built without Kubernetes discovery, so the
/// pods come from `sd_file`, which [`discovered_pods`] fills from the API with the `__meta_*`
/// labels Kubernetes discovery would give them.
fn podmonitor_scrape_config(ns: &str, sd_file: &Path) -> Value {
    let chart = chart_dir().display().to_string();
    let watch = format!("operator.watchNamespace={ns}");
    let rendered = helm_ok(
        helm_run(&[
            "template",
            "voice",
            &chart,
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--set",
            &watch,
        ]),
        "template",
    );
    let pm = rendered
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap_or(Value::Null))
        .find(|d| d["kind"] == "PodMonitor")
        .expect("a PodMonitor");
    let spec = &pm["spec"];
    let endpoint = &spec["podMetricsEndpoints"][0];
    let sanitize = |label: &str| {
        label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    let mut relabel = Vec::new();
    for (k, v) in spec["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        relabel.push(json!({
            "action": "keep",
            "source_labels": [format!("__meta_kubernetes_pod_label_{}", sanitize(k))],
            "regex": v,
        }));
    }
    relabel.push(json!({
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": endpoint["port"],
    }));
    for r in endpoint["relabelings"].as_array().expect("relabelings") {
        let mut out = json!({"source_labels": r["sourceLabels"], "target_label": r["targetLabel"]});
        for (from, to) in [
            ("separator", "separator"),
            ("regex", "regex"),
            ("replacement", "replacement"),
            ("action", "action"),
        ] {
            if !r[from].is_null() {
                out[to] = r[from].clone();
            }
        }
        relabel.push(out);
    }
    let names = spec["namespaceSelector"]["matchNames"].clone();
    assert_eq!(
        names,
        json!([ns]),
        "the PodMonitor follows operator.watchNamespace"
    );
    json!({
        "job_name": "podmonitor",
        "metrics_path": endpoint["path"],
        "file_sd_configs": [{
            "files": [sd_file.display().to_string()],
            "refresh_interval": "1s",
        }],
        "relabel_configs": relabel,
    })
}

/// Every container port of every pod in `ns` as a target with the meta labels of Prometheus'
/// Kubernetes pod discovery (namespace, pod name, pod labels, container port name).
async fn discovered_pods(ns: &voice_tests::TestNamespace) -> Value {
    let pods = ns
        .api::<k8s_openapi::api::core::v1::Pod>()
        .list(&Default::default())
        .await
        .expect("listing pods")
        .items;
    let mut groups = Vec::new();
    for pod in pods {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let mut labels = serde_json::Map::new();
        labels.insert("__meta_kubernetes_namespace".into(), json!(ns.name()));
        labels.insert(
            "__meta_kubernetes_pod_name".into(),
            json!(pod.metadata.name.clone().unwrap_or_default()),
        );
        for (k, v) in pod.metadata.labels.clone().unwrap_or_default() {
            let k: String = k
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            labels.insert(format!("__meta_kubernetes_pod_label_{k}"), json!(v));
        }
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for port in c.ports.iter().flatten() {
                let mut l = labels.clone();
                l.insert(
                    "__meta_kubernetes_pod_container_port_name".into(),
                    json!(port.name.clone().unwrap_or_default()),
                );
                groups.push(json!({
                    "targets": [format!("{ip}:{}", port.container_port)],
                    "labels": l,
                }));
            }
        }
    }
    Value::Array(groups)
}

/// Every metric the operator and worker define, with its type: the string literals that name a
/// metric in their `metrics.rs` files (the one place each process registers its metrics), and
/// a histogram's `_bucket`/`_sum`/`_count` series.
fn declared_metrics() -> BTreeMap<String, String> {
    let root = voice_cluster::layout::workspace_root();
    let mut files = Vec::new();
    for dir in ["operator/src", "worker/src"] {
        collect_metrics_files(&root.join(dir), &mut files);
    }
    assert!(files.len() >= 2, "no metrics.rs found: {files:?}");
    let mut out = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a metrics.rs");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut rest = code;
        while let Some(start) = rest.find("\"voice_") {
            let before = &rest[..start];
            let after = &rest[start + 1..];
            let end = after.find('"').expect("a closed literal");
            let name = &after[..end];
            // The constructor right before the literal says the type.
            let ctor = before
                .rfind("::new(")
                .or_else(|| before.rfind("::with_opts("))
                .map(|i| {
                    &before[before[..i]
                        .rfind(|c: char| !c.is_alphanumeric())
                        .map_or(0, |j| j + 1)..i]
                })
                .unwrap_or_default();
            let kind = if ctor.starts_with("HistogramOpts") || ctor.starts_with("Histogram") {
                "histogram"
            } else if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            out.insert(name.to_owned(), kind.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"), kind.to_owned());
                }
            }
            rest = &after[end + 1..];
        }
    }
    out
}

fn collect_metrics_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("reading a source dir")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            collect_metrics_files(&path, out);
        } else if path.file_name().is_some_and(|n| n == "metrics.rs") {
            out.push(path);
        }
    }
}

/// Metric names in a PromQL expression: identifiers outside `{…}` and `"…"` that are not
/// functions, aggregations, keywords, or label names in `by (…)`/`without (…)`/`on (…)`.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const WORDS: &[&str] = &[
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "vector",
        "absent",
        "label_values",
        "bool",
        "offset",
        "topk",
        "bottomk",
        "clamp_min",
        "clamp_max",
        "delta",
        "deriv",
        "time",
        "scalar",
        "abs",
        "inf",
        "nan",
    ];
    let mut out = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut depth_braces = 0;
    let mut grouping = false; // inside by (…) and friends: label names
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                let q = c;
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += usize::from(chars[i] == '\\') + 1;
                }
            }
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            '(' => {
                grouping = matches!(
                    last_word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            }
            ')' => grouping = false,
            '$' => {
                // A Grafana variable such as $__rate_interval.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if depth_braces == 0 && !grouping && !WORDS.contains(&word.as_str()) {
                    // A label name of label_values(metric, label) follows a comma.
                    let prev = chars[..start].iter().rev().find(|c| !c.is_whitespace());
                    if prev != Some(&',') {
                        out.insert(word.clone());
                    }
                }
                last_word = word;
                continue;
            }
            c if c.is_ascii_digit() => {
                // A number literal, or a duration such as 5m.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of the dashboard (targets and templating) and of the alert rules,
/// rendered from the chart with everything enabled.
fn chart_expressions() -> Vec<(String, String)> {
    let chart = chart_dir().display().to_string();
    let rendered = helm_ok(
        helm_run(&[
            "template",
            "voice",
            &chart,
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.grafanaDashboard.enabled=true",
        ]),
        "template",
    );
    let mut out = Vec::new();
    for doc in rendered.split("\n---\n") {
        let v: Value = serde_yaml_ng::from_str(doc).unwrap_or(Value::Null);
        if v["kind"] == "PrometheusRule" {
            for group in v["spec"]["groups"].as_array().expect("groups") {
                for rule in group["rules"].as_array().expect("rules") {
                    let name = rule["alert"].as_str().unwrap_or("record").to_owned();
                    out.push((
                        format!("alert {name}"),
                        rule["expr"].as_str().expect("expr").to_owned(),
                    ));
                }
            }
        }
        if v["kind"] == "ConfigMap" {
            let dashboard: Value = serde_json::from_str(
                v["data"]["voice-operator.json"]
                    .as_str()
                    .expect("dashboard"),
            )
            .expect("dashboard JSON");
            for panel in dashboard["panels"].as_array().expect("panels") {
                for t in panel["targets"].as_array().into_iter().flatten() {
                    out.push((
                        format!("panel {}", panel["title"]),
                        t["expr"].as_str().expect("expr").to_owned(),
                    ));
                }
            }
            for var in dashboard["templating"]["list"]
                .as_array()
                .expect("templating")
            {
                if let Some(q) = var["query"]["query"].as_str() {
                    out.push((format!("variable {}", var["name"]), q.to_owned()));
                }
            }
        }
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_components_export() {
    let declared = declared_metrics();
    for must in [
        "voice_operator_reconciles_total",
        "voice_worker_sessions",
        "voice_workers",
    ] {
        assert!(
            declared.contains_key(must),
            "{must} not found in {declared:?}"
        );
    }
    let exprs = chart_expressions();
    let alerts = exprs.iter().filter(|(w, _)| w.starts_with("alert")).count();
    let panels = exprs.iter().filter(|(w, _)| w.starts_with("panel")).count();
    assert!(
        alerts >= 8 && panels >= 25,
        "{alerts} alerts, {panels} panel queries"
    );
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (where_, expr) in &exprs {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "{where_}: no metric found in {expr}");
        for name in names {
            match declared.get(&name) {
                None => missing.push(format!("{where_}: {name}")),
                Some(kind) => {
                    // rate()/increase() want counters or histogram series; _bucket wants a histogram.
                    if expr.contains(&format!("rate({name}")) {
                        assert!(
                            kind == "counter" || kind == "histogram",
                            "{where_}: rate() over the {kind} {name}"
                        );
                    }
                }
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "the chart uses metrics no component exports:\n{}",
        missing.join("\n")
    );
    // The operator's health, cap, queue and target gauges are on the dashboard, not only in
    // the alerts (health, provider usage against its cap, sessions waiting by reason).
    let panel_names: BTreeSet<String> = exprs
        .iter()
        .filter(|(w, _)| w.starts_with("panel"))
        .flat_map(|(_, e)| promql_metrics(e))
        .collect();
    for shown in [
        "voice_backend_health",
        "voice_provider_session_limit",
        "voice_sessions_waiting",
        "voice_backend_latency_target_seconds",
    ] {
        assert!(
            panel_names.contains(shown),
            "no dashboard panel shows {shown}"
        );
    }
    eprintln!(
        "{} metrics used by {} expressions, all exported",
        used.len(),
        exprs.len()
    );
}

#[test]
fn the_promql_name_parser_sees_metrics_and_skips_labels_and_functions() {
    let names = promql_metrics(
        r#"histogram_quantile(0.95, sum by (backend, le) (rate(voice_x_bucket{backend=~"$backend", state="up"}[5m]))) > on (backend) group_left max without (state) (voice_y) and vector(0) or label_values(voice_z, backend)"#,
    );
    assert_eq!(
        names,
        ["voice_x_bucket", "voice_y", "voice_z"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
}
