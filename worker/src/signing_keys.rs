//! The join-token keys a worker verifies with, kept current while it runs.
//!
//! The operator mounts the backend's signing-key Secret and names its `keys.json` in
//! `SESSION_SIGNING_KEYS_FILE`; when the key is rotated the mounted file changes under the
//! running process. [`SigningKeys`] holds the last good [`KeySet`] and [`SigningKeys::reload`]
//! re-reads the file: a file that is missing, half-written or malformed leaves the last good set
//! in place (and is logged once per distinct problem), so a rotation never leaves a worker
//! without keys. Until the file has been read once, the bare key of `SESSION_SIGNING_KEY` (the
//! key current when the pod started) serves alone.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use voice_proto::token::KeySet;

/// How often the keys file is re-read: well under a token's lifetime, and cheap (one small
/// file whose bytes are compared before parsing).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The keys join tokens are checked with.
#[derive(Debug, Default)]
pub struct SigningKeys {
    file: Option<PathBuf>,
    current: RwLock<Option<Arc<KeySet>>>,
    /// The bytes last parsed and the problem last logged, so an unchanged file costs no parse
    /// and a broken one is reported once.
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    bytes: Option<Vec<u8>>,
    problem: Option<String>,
}

/// What a [`SigningKeys::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// No keys file is configured.
    NoFile,
    /// The file is as it was.
    Unchanged,
    /// A new key set is in use; its current key id.
    Loaded(String),
    /// The file could not be used; the previous keys stay.
    Kept(String),
}

impl SigningKeys {
    /// Keys from the bare `key` (if any) until `file` (if any) is read.
    pub fn new(key: Option<&str>, file: Option<PathBuf>) -> SigningKeys {
        let keys = SigningKeys {
            file,
            current: RwLock::new(key.map(|k| Arc::new(KeySet::single(k.as_bytes().to_vec())))),
            seen: Mutex::default(),
        };
        keys.reload();
        keys
    }

    /// The keys in use, `None` when the worker has none and must refuse every client.
    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the keys file and switches to its key set when it changed and parses.
    pub fn reload(&self) -> Reload {
        let Some(file) = &self.file else {
            return Reload::NoFile;
        };
        let read = std::fs::read(file);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match read {
            Ok(bytes) if seen.bytes.as_deref() == Some(&bytes[..]) => return Reload::Unchanged,
            Ok(bytes) => {
                let parsed = KeySet::parse(&bytes);
                seen.bytes = Some(bytes);
                match parsed {
                    Ok(set) => {
                        let kid = set.current.clone();
                        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(Arc::new(set));
                        seen.problem = None;
                        tracing::info!(current = %kid, file = %file.display(), "join-token keys loaded");
                        return Reload::Loaded(kid);
                    }
                    Err(e) => format!("{}: {e}", file.display()),
                }
            }
            Err(e) => {
                // A file that went away and comes back with the same bytes must load again.
                seen.bytes = None;
                format!("{}: {e}", file.display())
            }
        };
        if seen.problem.as_deref() != Some(&outcome) {
            tracing::warn!(
                problem = %outcome,
                "the join-token keys file cannot be used; the keys loaded before stay in use"
            );
            seen.problem = Some(outcome.clone());
        }
        Reload::Kept(outcome)
    }

    /// Re-reads the keys file every [`RELOAD_INTERVAL`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.file.is_none() {
            return;
        }
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    // The read is a small file on local disk; blocking this briefly is cheaper
                    // than a blocking-pool hop every second.
                    self.reload();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "0123456789abcdef0123456789abcdef";
    const NEW: &str = "fedcba9876543210fedcba9876543210";

    /// A fresh directory for one test (removed by the OS's temp cleaning; the files are tiny).
    fn temp_keys_file(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("voice-worker-keys-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("keys.json")
    }

    fn write(path: &std::path::Path, set: &KeySet) {
        std::fs::write(path, set.to_json()).unwrap();
    }

    #[test]
    fn the_bare_key_serves_until_the_file_is_readable_then_the_file_wins() {
        let file = temp_keys_file("bare");
        let keys = SigningKeys::new(Some(OLD), Some(file.clone()));
        let bare = keys.get().unwrap();
        assert_eq!(bare.key_for(Some("anything")), Some(OLD.as_bytes()));
        assert!(matches!(keys.reload(), Reload::Kept(p) if p.contains("keys.json")));

        write(&file, &KeySet::new("k1".into(), OLD.into()));
        assert_eq!(keys.reload(), Reload::Loaded("k1".into()));
        assert_eq!(keys.reload(), Reload::Unchanged);
        let set = keys.get().unwrap();
        assert_eq!(set.key_for(Some("k1")), Some(OLD.as_bytes()));
        assert_eq!(set.key_for(Some("anything")), None, "kids now matter");
    }

    #[test]
    fn a_rotation_adds_the_new_key_and_keeps_the_old_until_it_is_pruned() {
        let file = temp_keys_file("rotation");
        let mut set = KeySet::new("k1".into(), OLD.into());
        write(&file, &set);
        let keys = SigningKeys::new(None, Some(file.clone()));
        set.rotate("k2".into(), NEW.into(), 100);
        write(&file, &set);
        assert_eq!(keys.reload(), Reload::Loaded("k2".into()));
        let both = keys.get().unwrap();
        assert_eq!(both.key_for(Some("k1")), Some(OLD.as_bytes()));
        assert_eq!(both.key_for(Some("k2")), Some(NEW.as_bytes()));

        assert!(set.prune(100 + 3600, 3600));
        write(&file, &set);
        keys.reload();
        assert_eq!(keys.get().unwrap().key_for(Some("k1")), None);
    }

    #[test]
    fn a_broken_or_missing_file_keeps_the_last_good_keys() {
        let file = temp_keys_file("broken");
        write(&file, &KeySet::new("k1".into(), OLD.into()));
        let keys = SigningKeys::new(None, Some(file.clone()));

        std::fs::write(&file, b"{\"current\":\"k").unwrap();
        assert!(matches!(keys.reload(), Reload::Kept(p) if p.contains("not valid JSON")));
        std::fs::write(&file, br#"{"current":"k9","keys":[]}"#).unwrap();
        assert!(matches!(keys.reload(), Reload::Kept(p) if p.contains("k9")));
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(keys.reload(), Reload::Kept(_)));
        assert_eq!(
            keys.get().unwrap().key_for(Some("k1")),
            Some(OLD.as_bytes())
        );

        // The same good bytes coming back load again.
        write(&file, &KeySet::new("k1".into(), OLD.into()));
        assert_eq!(keys.reload(), Reload::Loaded("k1".into()));
    }

    #[test]
    fn without_key_or_file_there_are_no_keys() {
        let keys = SigningKeys::new(None, None);
        assert!(keys.get().is_none());
        assert_eq!(keys.reload(), Reload::NoFile);
    }
}
