//! Pod volumes as kubelet would mount them, for processes that run without mount namespaces.
//!
//! `secret` and `emptyDir` volumes become directories under `<volume dir>/<pod uid>/<volume>`.
//! A container sees them where its `volumeMounts` say because the agent rewrites each
//! `mountPath` prefix in the container's env values and args to that directory (a process here
//! shares the host's file system; see [`rewrite`]). Secret volumes are synced every supervision
//! round from a cache of Secrets, and a key's file is replaced (write, then rename) only when
//! its bytes change, so a rotated certificate or signing key reaches a running process without
//! a restart, the way kubelet's periodic sync updates mounted Secrets.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::Error;

/// The directory of one pod's volumes.
pub fn pod_dir(volume_dir: &Path, pod_uid: &str) -> PathBuf {
    volume_dir.join(pod_uid)
}

/// Writes every volume of `pod` under `dir` from the cached Secrets; returns how many files
/// changed. A Secret that is missing (and not `optional`) fails the sync with the volume named,
/// as kubelet's `FailedMount`; an optional one yields an empty directory.
pub fn sync(secrets: &Store<Secret>, pod: &Pod, dir: &Path) -> Result<usize, Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut changed = 0;
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let target = dir.join(&volume.name);
        if volume.empty_dir.is_some() {
            create_dir(&target)?;
            continue;
        }
        let Some(source) = &volume.secret else {
            continue; // refused by `mounts` when a container mounts it
        };
        let secret_name = source.secret_name.as_deref().unwrap_or_default();
        let secret = secrets.get(&ObjectRef::new(secret_name).within(namespace));
        let Some(secret) = secret else {
            if source.optional.unwrap_or(false) {
                create_dir(&target)?;
                continue;
            }
            return Err(Error::Volume {
                volume: volume.name.clone(),
                problem: format!(
                    "Secret {namespace}/{secret_name} not found; create it or mark the volume optional"
                ),
            });
        };
        let data = secret.data.clone().unwrap_or_default();
        // `items` projects chosen keys to chosen paths; without it every key is a file.
        let files: Vec<(String, Vec<u8>)> = match &source.items {
            Some(items) => {
                let mut files = Vec::new();
                for item in items {
                    match data.get(&item.key) {
                        Some(bytes) => files.push((item.path.clone(), bytes.0.clone())),
                        None => {
                            return Err(Error::Volume {
                                volume: volume.name.clone(),
                                problem: format!(
                                    "key {:?} not found in Secret {namespace}/{secret_name}",
                                    item.key
                                ),
                            });
                        }
                    }
                }
                files
            }
            None => data.into_iter().map(|(k, v)| (k, v.0)).collect(),
        };
        changed += write_files(&target, &files)?;
    }
    Ok(changed)
}

/// The container's mounts as `(mountPath, host directory or file)`, longest mount path first
/// so nested mounts win. A mount of a volume the pod lacks, or of a kind the agent cannot
/// provide, is an error naming it.
pub fn mounts(
    pod: &Pod,
    container: &Container,
    dir: &Path,
) -> Result<Vec<(String, PathBuf)>, Error> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes.iter().find(|v| v.name == mount.name);
        match volume {
            Some(v) if v.secret.is_some() || v.empty_dir.is_some() => {}
            Some(_) => {
                return Err(Error::Volume {
                    volume: mount.name.clone(),
                    problem: "only secret and emptyDir volumes are supported by voice-node-agent"
                        .into(),
                });
            }
            None => {
                return Err(Error::Volume {
                    volume: mount.name.clone(),
                    problem: format!(
                        "container {:?} mounts it but the pod has no such volume",
                        container.name
                    ),
                });
            }
        }
        let mut host = dir.join(&mount.name);
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host = host.join(sub);
        }
        mounts.push((mount.mount_path.trim_end_matches('/').to_owned(), host));
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    Ok(mounts)
}

/// `value` with every mount path it contains replaced by the host directory, in one pass
/// over the original text (a host directory may itself contain a mount path: with the volumes
/// under `/tmp/…`, a `/tmp` mount must not rewrite them again). An occurrence counts only as a
/// whole path: it starts the value or follows a character that cannot be part of a path (`=`,
/// `,`, `:`, a space…), and ends the value or is followed by `/` or such a character, so
/// `/etc/tls` matches neither inside `/etc/tls-old` nor inside `/var/etc/tls`. The longest
/// mount path wins where several start at one place.
pub fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let path_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    let mut by_length: Vec<&(String, PathBuf)> =
        mounts.iter().filter(|(path, _)| !path.is_empty()).collect();
    by_length.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut out = String::with_capacity(value.len());
    let mut at = 0;
    let mut previous: Option<char> = None;
    while at < value.len() {
        let rest = &value[at..];
        let starts_path = previous.is_none_or(|c| !path_char(c));
        let matched = starts_path
            .then(|| {
                by_length.iter().find(|(path, _)| {
                    rest.starts_with(path.as_str())
                        && rest[path.len()..].chars().next().is_none_or(|c| {
                            c == '/' || !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
                        })
                })
            })
            .flatten();
        if let Some((path, host)) = matched {
            out.push_str(&host.display().to_string());
            at += path.len();
            previous = path.chars().last();
        } else if let Some(c) = rest.chars().next() {
            out.push(c);
            at += c.len_utf8();
            previous = Some(c);
        }
    }
    out
}

/// Removes a pod's volumes once it is gone.
pub fn remove(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %err, "could not remove pod volumes");
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "create volume directory",
        path: dir.to_owned(),
        source,
    })
}

/// Makes `dir` hold exactly `files`, touching only what changed; returns the number of files
/// written or removed.
fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<usize, Error> {
    create_dir(dir)?;
    let mut changed = 0;
    let mut keep = BTreeSet::new();
    for (name, bytes) in files {
        // A key is a file name; a projected path may have directories but never leaves `dir`.
        let relative = Path::new(name);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            continue;
        }
        let path = dir.join(relative);
        keep.insert(path.clone());
        if fs::read(&path).is_ok_and(|old| old == *bytes) {
            continue;
        }
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        let tmp = path.with_extension("node-agent-tmp");
        let io = |action| {
            let path = path.clone();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        fs::write(&tmp, bytes).map_err(io("write volume file"))?;
        fs::rename(&tmp, &path).map_err(io("replace volume file"))?;
        changed += 1;
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_file() && !keep.contains(&path) {
            let _ = fs::remove_file(&path);
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts_of(list: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
        list.iter()
            .map(|(m, h)| ((*m).to_owned(), PathBuf::from(h)))
            .collect()
    }

    #[test]
    fn rewrite_replaces_mount_paths_only_at_path_boundaries() {
        let mounts = mounts_of(&[("/var/run/tls", "/agent/v/uid/tls")]);
        assert_eq!(rewrite("/var/run/tls", &mounts), "/agent/v/uid/tls");
        assert_eq!(
            rewrite("/var/run/tls/tls.crt", &mounts),
            "/agent/v/uid/tls/tls.crt"
        );
        assert_eq!(
            rewrite("--cert=/var/run/tls/tls.crt,--x", &mounts),
            "--cert=/agent/v/uid/tls/tls.crt,--x"
        );
        assert_eq!(rewrite("/var/run/tls-old/a", &mounts), "/var/run/tls-old/a");
        assert_eq!(rewrite("/var/run/tlsx", &mounts), "/var/run/tlsx");
        assert_eq!(rewrite("nothing here", &mounts), "nothing here");
        assert_eq!(rewrite("/opt/var/run/tls", &mounts), "/opt/var/run/tls");
    }

    #[test]
    fn a_host_directory_under_another_mount_path_is_not_rewritten_again() {
        // Volumes under /tmp/… (a checkout in a temporary directory) and a /tmp emptyDir.
        let mounts = mounts_of(&[
            ("/tmp", "/tmp/co/v/uid/tmp"),
            ("/var/run/tls", "/tmp/co/v/uid/tls"),
        ]);
        assert_eq!(
            rewrite("/var/run/tls/ca.crt", &mounts),
            "/tmp/co/v/uid/tls/ca.crt"
        );
        assert_eq!(
            rewrite("/tmp/x /var/run/tls", &mounts),
            "/tmp/co/v/uid/tmp/x /tmp/co/v/uid/tls"
        );
        // The longer mount path wins where both start.
        let nested = mounts_of(&[("/data", "/h/data"), ("/data/keys", "/h/keys")]);
        assert_eq!(rewrite("/data/keys/a", &nested), "/h/keys/a");
        assert_eq!(rewrite("/data/other", &nested), "/h/data/other");
    }

    #[test]
    fn write_files_touches_only_what_changed_and_removes_dropped_keys() {
        let dir = std::env::temp_dir().join(format!("node-agent-volumes-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let files = vec![
            ("a".to_owned(), b"one".to_vec()),
            ("b".to_owned(), b"two".to_vec()),
        ];
        assert_eq!(write_files(&dir, &files).unwrap(), 2);
        assert_eq!(write_files(&dir, &files).unwrap(), 0);
        let rotated = vec![("a".to_owned(), b"uno".to_vec())];
        assert_eq!(
            write_files(&dir, &rotated).unwrap(),
            2,
            "a rewritten, b removed"
        );
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"uno");
        assert!(!dir.join("b").exists());
        // A projected path cannot climb out of the volume.
        let hostile = vec![("../escape".to_owned(), b"x".to_vec())];
        write_files(&dir, &hostile).unwrap();
        assert!(!dir.parent().unwrap().join("escape").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
