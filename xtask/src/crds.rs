//! `cargo xtask crds`: writes the CRD manifests generated from `voice-crds`.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Arguments of `cargo xtask crds`.
#[derive(clap::Args)]
pub struct Args {
    /// Fail if the committed manifests differ from the types instead of rewriting them.
    #[arg(long)]
    check: bool,
}

/// Regenerates (or checks) every CRD manifest in every output folder.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let mut stale = Vec::new();
    for dir in voice_crds::manifests::OUTPUT_DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, yaml) in voice_crds::manifests::rendered() {
            let path = dir.join(file);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == yaml {
                continue;
            }
            if args.check {
                stale.push(path.display().to_string());
            } else {
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "CRD manifests are out of date: {}; run `cargo xtask crds`",
            stale.join(", ")
        );
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}
