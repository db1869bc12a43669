//! CRD manifests generated from the Rust types.
//!
//! `cargo xtask crds` writes them to `crds/manifests/` and the chart's `crds/`; the drift test
//! fails when the committed files differ from what the types generate, so the YAML a user
//! applies is always the schema the operator was built against.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{VoiceBackend, VoiceProvider, VoiceSession};

/// Folders (relative to the workspace root) that hold the generated CRD manifests.
pub const OUTPUT_DIRS: [&str; 2] = ["crds/manifests", "charts/voice-operator/crds"];

const HEADER: &str = "# Generated from crds/src by `cargo xtask crds`. Do not edit by hand.\n";

/// Every CRD of the API.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VoiceProvider::crd(),
        VoiceBackend::crd(),
        VoiceSession::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                let mut value = serde_json::to_value(&*schema).expect("schema serializes");
                unwrap_descriptions(&mut value);
                *schema = serde_json::from_value(value).expect("schema round-trips");
            }
        }
    }
    crds
}

/// Joins the hard-wrapped lines of doc comments so `kubectl explain` can wrap the text itself;
/// blank lines (paragraph breaks) stay.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|para| {
                                para.split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// File name and YAML text of every CRD manifest.
pub fn rendered() -> Vec<(String, String)> {
    all()
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.spec.names.plural);
            let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD always serializes to YAML");
            (file, format!("{HEADER}{yaml}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_in_the_voice_category_with_a_short_name() {
        for crd in all() {
            let names = &crd.spec.names;
            assert_eq!(
                names.categories.as_deref(),
                Some(&["voice".to_string()][..]),
                "{}",
                names.kind
            );
            assert_eq!(
                names.short_names.as_ref().map(Vec::len),
                Some(1),
                "{}",
                names.kind
            );
            assert_eq!(crd.spec.group, crate::GROUP);
        }
    }
}
