//! The committed CRD YAML must be exactly what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crd_manifests_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for dir in voice_crds::manifests::OUTPUT_DIRS {
        for (file, expected) in voice_crds::manifests::rendered() {
            let path = root.join(dir).join(&file);
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{} is missing ({e}); run `cargo xtask crds`",
                    path.display()
                )
            });
            assert!(
                committed == expected,
                "{} differs from what crds/src generates; run `cargo xtask crds` and commit the result",
                path.display()
            );
        }
    }
}
