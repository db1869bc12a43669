//! A container's environment and argv, resolved the way kubelet does: literal values, the
//! downward API, Secret and ConfigMap keys, `envFrom`, and `$(VAR)` references.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

use crate::Error;

/// What the downward API can report that is not in the pod object yet when it starts.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// The pod's loopback address.
    pub pod_ip: Ipv4Addr,
    /// The node's address (127.0.0.1).
    pub host_ip: Ipv4Addr,
}

/// The value of a downward-API `fieldRef` path, or `None` when the path is not supported.
pub fn field_value(pod: &Pod, path: &str, addrs: Addresses) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
        ),
        "status.podIP" | "status.podIPs" => Some(addrs.pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(addrs.host_ip.to_string()),
        _ => subscript("metadata.labels['", meta.labels.as_ref())
            .or_else(|| subscript("metadata.annotations['", meta.annotations.as_ref())),
    }
}

/// Resolves the container's `envFrom` and `env` into an ordered list of variables; Secret and
/// ConfigMap references are read through the API.
pub async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    addrs: Addresses,
) -> Result<Vec<(String, String)>, Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, name: String, value: String| {
        vars.retain(|(n, _)| *n != name);
        vars.push((name, value));
    };

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            if let Some(cm) = get_optional(&config_maps, &r.name, optional, "ConfigMap").await? {
                for (k, v) in cm.data.unwrap_or_default() {
                    set(&mut vars, format!("{prefix}{k}"), v);
                }
            }
        }
        if let Some(r) = &source.secret_ref {
            let optional = r.optional.unwrap_or(false);
            if let Some(secret) = get_optional(&secrets, &r.name, optional, "Secret").await? {
                for (k, v) in secret.data.unwrap_or_default() {
                    set(&mut vars, format!("{prefix}{k}"), bytes_to_string(&v.0));
                }
            }
        }
    }

    for var in container.env.iter().flatten() {
        let env_error = |problem: String| Error::Env {
            name: var.name.clone(),
            problem,
        };
        let value = if let Some(value) = &var.value {
            let known: BTreeMap<String, String> = vars.iter().cloned().collect();
            expand(value, &known)
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(pod, &field.field_path, addrs).ok_or_else(|| {
                    env_error(format!(
                        "fieldRef {:?} is not supported by voice-node-agent; use metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName, status.podIP or status.hostIP",
                        field.field_path
                    ))
                })?
            } else if let Some(key) = &from.secret_key_ref {
                let optional = key.optional.unwrap_or(false);
                let secret = get_optional(&secrets, &key.name, optional, "Secret").await?;
                match secret.and_then(|s| s.data.and_then(|mut d| d.remove(&key.key))) {
                    Some(v) => bytes_to_string(&v.0),
                    None if optional => continue,
                    None => {
                        return Err(env_error(format!(
                            "key {:?} not found in Secret {}/{}: add it or mark the reference optional",
                            key.key, ns, key.name
                        )));
                    }
                }
            } else if let Some(key) = &from.config_map_key_ref {
                let optional = key.optional.unwrap_or(false);
                let cm = get_optional(&config_maps, &key.name, optional, "ConfigMap").await?;
                match cm.and_then(|c| c.data.and_then(|mut d| d.remove(&key.key))) {
                    Some(v) => v,
                    None if optional => continue,
                    None => {
                        return Err(env_error(format!(
                            "key {:?} not found in ConfigMap {}/{}: add it or mark the reference optional",
                            key.key, ns, key.name
                        )));
                    }
                }
            } else {
                return Err(env_error(
                    "only fieldRef, secretKeyRef and configMapKeyRef are supported by voice-node-agent"
                        .into(),
                ));
            }
        } else {
            String::new()
        };
        set(&mut vars, var.name.clone(), value);
    }
    Ok(vars)
}

async fn get_optional<K>(
    api: &Api<K>,
    name: &str,
    optional: bool,
    kind: &str,
) -> Result<Option<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(obj)) => Ok(Some(obj)),
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(Error::Env {
            name: format!("(from {kind} {name})"),
            problem: format!(
                "{kind} {name} does not exist: create it or mark the reference optional"
            ),
        }),
        Err(source) => Err(Error::Api {
            action: format!("read {kind} {name}"),
            source,
        }),
    }
}

fn bytes_to_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Replaces `$(NAME)` with the value of a known variable, as kubelet does in `env` values,
/// `command` and `args`; unknown references stay as written and `$$(` escapes to `$(`.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(escaped) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = vars.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process arguments after argv\[0\]: kubelet's rules with the image's entrypoint being
/// the mapped binary. `command` replaces the entrypoint (its first element becomes the
/// binary, the rest leading arguments); `args` follow.
pub fn arguments(container: &Container, vars: &BTreeMap<String, String>) -> Vec<String> {
    let command = container.command.iter().flatten().skip(1);
    let args = container.args.iter().flatten();
    command.chain(args).map(|a| expand(a, vars)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn expand_replaces_known_keeps_unknown_and_unescapes() {
        let v = vars(&[("A", "1"), ("POD_IP", "127.0.0.2")]);
        assert_eq!(expand("--addr=$(POD_IP):$(A)", &v), "--addr=127.0.0.2:1");
        assert_eq!(expand("$(NOPE) $$(A) $ x$", &v), "$(NOPE) $(A) $ x$");
    }

    #[test]
    fn command_first_element_is_replaced_by_the_binary() {
        let c = Container {
            command: Some(vec!["/worker".into(), "--flag".into()]),
            args: Some(vec!["$(A)".into()]),
            ..Container::default()
        };
        assert_eq!(arguments(&c, &vars(&[("A", "x")])), vec!["--flag", "x"]);
        let only_args = Container {
            args: Some(vec!["run".into()]),
            ..Container::default()
        };
        assert_eq!(arguments(&only_args, &vars(&[])), vec!["run"]);
    }

    #[test]
    fn downward_api_fields() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                labels: Some([("app".to_owned(), "w".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let addrs = Addresses {
            pod_ip: Ipv4Addr::new(127, 0, 0, 9),
            host_ip: Ipv4Addr::LOCALHOST,
        };
        assert_eq!(
            field_value(&pod, "status.podIP", addrs).as_deref(),
            Some("127.0.0.9")
        );
        assert_eq!(
            field_value(&pod, "metadata.namespace", addrs).as_deref(),
            Some("ns")
        );
        assert_eq!(
            field_value(&pod, "metadata.labels['app']", addrs).as_deref(),
            Some("w")
        );
        assert_eq!(
            field_value(&pod, "metadata.annotations['x']", addrs).as_deref(),
            Some("")
        );
        assert_eq!(field_value(&pod, "spec.volumes", addrs), None);
    }
}
