//! `cargo xtask fuzz`: coverage-guided fuzzing (libFuzzer through `cargo fuzz`) of every
//! parser that reads network input (`fuzz/`). The test suite replays the same targets over
//! their seeds and random input; this runs the real fuzzer for as long as asked.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// The fuzz targets: the `[[bin]]`s of `fuzz/Cargo.toml` that need the `libfuzzer` feature.
fn targets(manifest: &str) -> Vec<String> {
    manifest
        .split("[[bin]]")
        .skip(1)
        .filter(|bin| bin.contains("required-features = [\"libfuzzer\"]"))
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect()
}

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// Targets to fuzz (default: all of them, one after the other).
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// Installs cargo-fuzz if needed, then fuzzes each target from its seeds.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let known = targets(&std::fs::read_to_string(root.join("fuzz/Cargo.toml"))?);
    let targets = if args.targets.is_empty() {
        known.clone()
    } else {
        args.targets.clone()
    };
    if let Some(unknown) = targets.iter().find(|t| !known.contains(t)) {
        bail!("no fuzz target {unknown:?} (known: {})", known.join(", "));
    }
    ensure_cargo_fuzz()?;
    let corpus_root = root.join("target/voice-fuzz/corpus");
    for target in &targets {
        let corpus = corpus_root.join(target);
        std::fs::create_dir_all(&corpus)?;
        // The seeds come from the library the suite tests them with.
        let status = crate::cargo_command()
            .current_dir(&root)
            .args([
                "run",
                "--quiet",
                "-p",
                "voice-fuzz",
                "--bin",
                "seeds",
                "--",
                target,
            ])
            .arg(&corpus)
            .status()
            .context("writing the seeds")?;
        if !status.success() {
            bail!("writing the seeds of {target} failed");
        }
        eprintln!(
            "==> fuzzing {target} for {} s (corpus {})",
            args.seconds,
            corpus.display()
        );
        let status = crate::cargo_command()
            .current_dir(&root)
            // cargo fuzz passes -Z flags (sanitizer, coverage); stable rustc takes them so.
            .env("RUSTC_BOOTSTRAP", "1")
            .args([
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                "--features",
                "libfuzzer",
                target,
            ])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzzing {target} found a failure ({status}); the input is under fuzz/artifacts/{target}/"
            );
        }
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("==> installing cargo-fuzz from crates.io");
    let status = Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz"])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_targets_are_the_libfuzzer_bins_of_the_fuzz_manifest() {
        let manifest =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/Cargo.toml"))
                .unwrap();
        let targets = super::targets(&manifest);
        assert!(targets.contains(&"sdp_offer".to_owned()), "{targets:?}");
        assert!(!targets.contains(&"seeds".to_owned()), "{targets:?}");
        // Every file in fuzz_targets/ is a target, and nothing else is.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/fuzz_targets");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".rs")
                    .map(str::to_owned)
            })
            .collect();
        files.sort();
        let mut sorted = targets.clone();
        sorted.sort();
        assert_eq!(sorted, files);
    }
}
