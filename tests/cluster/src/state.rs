//! The small JSON file recording what `up` started, so later calls can reuse or stop it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::pki::write_file;

/// One started process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// etcd, kube-apiserver or kube-controller-manager.
    pub name: String,
    /// Its pid (also its process group id).
    pub pid: i32,
    /// The binary it runs, used to tell it from an unrelated process that reused the pid.
    pub binary: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

/// Loopback ports picked at start.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Ports {
    /// etcd client URL port.
    pub etcd_client: u16,
    /// etcd peer URL port.
    pub etcd_peer: u16,
    /// kube-apiserver secure port.
    pub apiserver: u16,
    /// kube-controller-manager secure (health) port.
    pub controller_manager: u16,
}

/// Contents of `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The apiserver URL.
    pub server: String,
    /// Directory of the binaries in use, including kubectl.
    pub bin_dir: PathBuf,
    /// Ports in use.
    pub ports: Ports,
    /// Started processes, in start order.
    pub processes: Vec<ProcessRecord>,
}

impl State {
    /// Path of the state file inside the state dir.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// Reads the state file; `None` when there is none or it is unreadable (then it is stale).
    pub fn load(state_dir: &Path) -> Option<State> {
        let bytes = std::fs::read(Self::path(state_dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the state file atomically, so a concurrent reader never sees half of it.
    pub fn save(&self, state_dir: &Path) -> Result<(), Error> {
        let path = Self::path(state_dir);
        let tmp = state_dir.join("state.json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        write_file(&tmp, &json, 0o644)?;
        std::fs::rename(&tmp, &path).map_err(Error::io("rename", tmp))
    }
}
