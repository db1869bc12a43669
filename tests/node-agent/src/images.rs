//! Which local binary stands in for which container image.
//!
//! There is no container runtime here, so an image is only a name: its repository picks a
//! binary built in this workspace. Explicit `--image REPO=PATH` rules win over the defaults.

use std::path::{Path, PathBuf};

use crate::Error;

/// One `--image REPO=PATH` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRule {
    /// Repository to match: the whole repository (`voice-operator/worker`) or its trailing
    /// path segments (`worker`).
    pub repository: String,
    /// Binary to run for it.
    pub binary: PathBuf,
}

impl std::str::FromStr for ImageRule {
    type Err = Error;

    fn from_str(raw: &str) -> Result<Self, Error> {
        match raw.split_once('=') {
            Some((repo, path)) if !repo.is_empty() && !path.is_empty() => Ok(ImageRule {
                repository: repo.to_owned(),
                binary: PathBuf::from(path),
            }),
            _ => Err(Error::BadImageRule(raw.to_owned())),
        }
    }
}

/// Maps images to binaries: explicit rules first, then the workspace's own binaries by the
/// repository's last path segment.
#[derive(Debug, Clone)]
pub struct ImageMap {
    rules: Vec<ImageRule>,
    binary_dir: PathBuf,
}

/// Default rules: last repository segment → binary name in the binary dir.
const DEFAULTS: &[(&str, &str)] = &[
    ("worker", "voice-worker"),
    ("voice-worker", "voice-worker"),
    ("operator", "voice-operator"),
    ("voice-operator", "voice-operator"),
];

/// The image of the `pipecat` provider's bots (`spec.workers.bot`): with no image to unpack,
/// its stand-in is the python of the Pipecat venv that `cargo xtask` installs, and the
/// container's args name the bot script.
pub const PIPECAT_BOT_REPOSITORY: &str = "pipecat-bot";

/// The python [`PIPECAT_BOT_REPOSITORY`] maps to, under `home`.
pub fn pipecat_python(home: &Path) -> PathBuf {
    home.join(".cache/voice-operator/pipecat-venv/bin/python")
}

impl ImageMap {
    /// A map with `rules` tried in order before the defaults, which look in `binary_dir`.
    pub fn new(binary_dir: PathBuf, rules: Vec<ImageRule>) -> ImageMap {
        ImageMap { rules, binary_dir }
    }

    /// The directory default rules resolve into.
    pub fn binary_dir(&self) -> &Path {
        &self.binary_dir
    }

    /// Whether `path` is a binary some image maps to (to recognise our own processes).
    pub fn is_mapped_binary(&self, path: &Path) -> bool {
        self.rules.iter().any(|r| r.binary == path)
            || DEFAULTS
                .iter()
                .any(|(_, binary)| self.binary_dir.join(binary) == path)
    }

    /// The binary for `image`, or [`Error::ImageNotMapped`] naming the flag to add.
    pub fn resolve(&self, image: &str) -> Result<PathBuf, Error> {
        let repo = repository(image);
        let explicit = self.rules.iter().find(|rule| {
            repo == rule.repository || repo.ends_with(&format!("/{}", rule.repository))
        });
        if let Some(rule) = explicit {
            return Ok(rule.binary.clone());
        }
        let last = repo.rsplit('/').next().unwrap_or(repo);
        if last == PIPECAT_BOT_REPOSITORY
            && let Some(home) = std::env::var_os("HOME")
        {
            return Ok(pipecat_python(Path::new(&home)));
        }
        DEFAULTS
            .iter()
            .find(|(segment, _)| *segment == last)
            .map(|(_, binary)| self.binary_dir.join(binary))
            .ok_or_else(|| Error::ImageNotMapped {
                image: image.to_owned(),
                repository: repo.to_owned(),
            })
    }
}

/// The repository part of an image reference: without `@digest` and without `:tag` (a colon
/// before the last `/` is a registry port, not a tag).
pub fn repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> ImageMap {
        let rules = rules.iter().map(|r| r.parse().unwrap()).collect();
        ImageMap::new(PathBuf::from("/t/debug"), rules)
    }

    #[test]
    fn repository_drops_tag_digest_but_keeps_registry_port() {
        assert_eq!(
            repository("voice-operator/worker:dev"),
            "voice-operator/worker"
        );
        assert_eq!(repository("reg:5000/a/worker"), "reg:5000/a/worker");
        assert_eq!(
            repository("reg:5000/a/worker:1@sha256:ab"),
            "reg:5000/a/worker"
        );
        assert_eq!(repository("worker"), "worker");
    }

    #[test]
    fn the_pipecat_bot_image_runs_the_pipecat_venv_python() {
        let home = std::env::var_os("HOME").expect("HOME is set under cargo test");
        assert_eq!(
            map(&[]).resolve("example.com/team/pipecat-bot:1").unwrap(),
            pipecat_python(Path::new(&home))
        );
        // An explicit rule still wins.
        assert_eq!(
            map(&["pipecat-bot=/opt/py"])
                .resolve("pipecat-bot")
                .unwrap(),
            PathBuf::from("/opt/py")
        );
    }

    #[test]
    fn default_rules_map_worker_and_operator_by_last_segment() {
        let m = map(&[]);
        assert_eq!(
            m.resolve("voice-operator/worker:dev").unwrap(),
            PathBuf::from("/t/debug/voice-worker")
        );
        assert_eq!(
            m.resolve("ghcr.io/x/voice-worker:1").unwrap(),
            PathBuf::from("/t/debug/voice-worker")
        );
        assert_eq!(
            m.resolve("voice-operator/operator").unwrap(),
            PathBuf::from("/t/debug/voice-operator")
        );
    }

    #[test]
    fn unknown_image_names_the_flag_to_add() {
        let err = map(&[]).resolve("nginx:1.27").unwrap_err();
        assert_eq!(err.reason(), "ImageNotMapped");
        assert!(err.to_string().contains("--image nginx="), "{err}");
    }

    #[test]
    fn explicit_rules_win_and_match_whole_repo_or_trailing_segments() {
        let m = map(&["nginx=/bin/true", "voice-operator/worker=/opt/w"]);
        assert_eq!(
            m.resolve("docker.io/library/nginx:1").unwrap(),
            PathBuf::from("/bin/true")
        );
        assert_eq!(
            m.resolve("voice-operator/worker:dev").unwrap(),
            PathBuf::from("/opt/w")
        );
        assert!(m.resolve("xnginx").is_err());
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!("nginx".parse::<ImageRule>().is_err());
        assert!("=x".parse::<ImageRule>().is_err());
    }
}
