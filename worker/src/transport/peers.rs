//! The WebRTC connections that signaling can still reach after the answer: a trickle ICE
//! `PATCH` finds its peer connection here by connection id.
//!
//! An entry lives exactly as long as its session task holds the [`Listed`] guard, so a
//! connection that ended (any way) is no longer patchable and answers 404.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use webrtc::peer_connection::PeerConnection;

/// What a `PATCH` needs of one live connection.
pub struct LivePeer {
    /// The session (`namespace/name`) the connection belongs to.
    pub session_id: String,
    /// The peer connection.
    pub pc: Arc<dyn PeerConnection>,
    /// The client's ICE ufrag and password from its offer.
    pub remote_credentials: (Option<String>, Option<String>),
    /// The strong entity-tag of the ICE session (RFC 9725 §4.3.1), quotes included.
    pub etag: String,
    /// Candidates the client has signalled so far (offer and trickle), against the limit.
    pub signalled: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for LivePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePeer")
            .field("session_id", &self.session_id)
            .field("etag", &self.etag)
            .finish_non_exhaustive()
    }
}

/// Live WebRTC connections by connection id.
#[derive(Debug, Default)]
pub struct Peers {
    by_connection: Mutex<HashMap<String, Arc<LivePeer>>>,
}

impl Peers {
    /// Lists `peer` under `connection_id` until the returned guard is dropped.
    pub fn list(self: &Arc<Self>, connection_id: &str, peer: LivePeer) -> Listed {
        self.lock().insert(connection_id.to_owned(), Arc::new(peer));
        Listed {
            peers: self.clone(),
            connection_id: connection_id.to_owned(),
        }
    }

    /// The connection `connection_id` of `session_id`, if it is live.
    pub fn get(&self, session_id: &str, connection_id: &str) -> Option<Arc<LivePeer>> {
        self.lock()
            .get(connection_id)
            .filter(|peer| peer.session_id == session_id)
            .cloned()
    }

    /// Live connections (for tests and stats).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<LivePeer>>> {
        // Every critical section is a single map operation: a poisoned map is consistent.
        self.by_connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a connection listed; unlists it when dropped.
#[derive(Debug)]
pub struct Listed {
    peers: Arc<Peers>,
    connection_id: String,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.peers.lock().remove(&self.connection_id);
    }
}
