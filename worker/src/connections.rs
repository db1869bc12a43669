//! The media connections open on this worker: at most one per participant of a session
//! (a session of one user has one), each with a cancellation token that ends it.
//!
//! A connection is claimed before any media work starts (so a second offer for the same
//! participant is refused with 409 instead of racing the first) and unclaimed when its
//! [`Claim`] is dropped or left, whatever path ended it. A reaper ends connections whose session
//! lost its slot (released by the operator, or ended by a drain deadline), so the ledger
//! stays the single truth about which sessions may have media.
//!
//! Each connection also records when its client last sent media ([`MediaActivity`]): the
//! session's liveness pings (the operator's `lastActivity`, from which `idleTimeout`
//! counts) follow media, not a connection that is merely open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use voice_proto::worker::v1 as pb;

use crate::metrics::MediaMetrics;
use crate::sessions::Sessions;

/// How a client is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// WebRTC (Opus over SRTP), signaled WHIP-style.
    WebRtc,
    /// A WebSocket carrying PCM16 frames.
    WebSocket,
    /// A LiveKit room the worker joined as the agent (the user is another participant).
    LiveKit,
    /// A Twilio Media Streams WebSocket (μ-law at 8 kHz): a phone call.
    Twilio,
}

impl Transport {
    /// The `transport` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebRtc => "webrtc",
            Transport::WebSocket => "websocket",
            Transport::LiveKit => "livekit",
            Transport::Twilio => "twilio",
        }
    }

    /// The transport as the control API names it.
    pub fn to_proto(self) -> pb::Transport {
        match self {
            Transport::WebRtc => pb::Transport::Webrtc,
            Transport::WebSocket => pb::Transport::Websocket,
            Transport::LiveKit => pb::Transport::Livekit,
            Transport::Twilio => pb::Transport::Twilio,
        }
    }
}

/// A second connection for a participant that already has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this participant already has a {transport} connection ({connection_id}); hang it up first"
)]
pub struct AlreadyConnected {
    /// The transport of the existing connection.
    pub transport: &'static str,
    /// Its id.
    pub connection_id: String,
}

#[derive(Debug)]
struct Entry {
    uid: String,
    participant: String,
    connection_id: String,
    transport: Transport,
    cancel: CancellationToken,
    media: MediaActivity,
}

/// When a connection's client last sent media: cheap to clone into a receive task and to
/// touch on every packet (one atomic store).
#[derive(Clone, Debug)]
pub struct MediaActivity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last media, plus one (0: none yet).
    last: Arc<AtomicU64>,
    /// Frames of this connection dropped so far (full queues, late packets, decode errors).
    pub dropped: Arc<AtomicU64>,
}

impl MediaActivity {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            last: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records media arriving now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, at: Instant) {
        let millis = u64::try_from(at.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1);
        self.last.store(millis + 1, Ordering::Relaxed);
    }

    /// Whether media arrived within `window` before `now`.
    pub fn within(&self, window: Duration, now: Instant) -> bool {
        match self.last.load(Ordering::Relaxed) {
            0 => false,
            last => {
                let at = self.epoch + Duration::from_millis(last - 1);
                now.saturating_duration_since(at) <= window
            }
        }
    }
}

/// Every open media connection, by session id (one per participant).
#[derive(Debug)]
pub struct Connections {
    entries: Mutex<HashMap<String, Vec<Entry>>>,
    epoch: Instant,
    shutdown: CancellationToken,
    metrics: MediaMetrics,
}

impl Connections {
    /// No connections; all of them end when `shutdown` fires.
    pub fn new(shutdown: CancellationToken, metrics: MediaMetrics) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            shutdown,
            metrics,
        })
    }

    /// Claims the connection of `participant` (the userID its token names) in the session.
    pub fn claim(
        self: &Arc<Self>,
        session_id: &str,
        uid: &str,
        participant: &str,
        transport: Transport,
    ) -> Result<Claim, AlreadyConnected> {
        let mut entries = self.lock();
        let open = entries.entry(session_id.to_owned()).or_default();
        if let Some(existing) = open.iter().find(|e| e.participant == participant) {
            return Err(AlreadyConnected {
                transport: existing.transport.label(),
                connection_id: existing.connection_id.clone(),
            });
        }
        let connection_id = random_id(16);
        let cancel = self.shutdown.child_token();
        let media = MediaActivity::new(self.epoch);
        open.push(Entry {
            uid: uid.to_owned(),
            participant: participant.to_owned(),
            connection_id: connection_id.clone(),
            transport,
            cancel: cancel.clone(),
            media: media.clone(),
        });
        Ok(Claim {
            connections: self.clone(),
            session_id: session_id.to_owned(),
            uid: uid.to_owned(),
            participant: participant.to_owned(),
            connection_id,
            transport,
            cancel,
            media,
            active: false,
            left: false,
        })
    }

    /// Ends the connection `connection_id` of `session_id` (a WHIP `DELETE`); false if
    /// there is no such connection.
    pub fn hang_up(&self, session_id: &str, connection_id: &str) -> bool {
        match self
            .lock()
            .get(session_id)
            .and_then(|open| open.iter().find(|e| e.connection_id == connection_id))
        {
            Some(entry) => {
                entry.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether a connection of `session_id` had media from its client within `window`.
    pub fn had_media_within(&self, session_id: &str, window: Duration) -> bool {
        let now = Instant::now();
        self.lock()
            .get(session_id)
            .is_some_and(|open| open.iter().any(|e| e.media.within(window, now)))
    }

    /// Frames the connections of `session_id` dropped so far, if it has any.
    pub fn dropped(&self, session_id: &str) -> Option<u64> {
        self.lock()
            .get(session_id)
            .filter(|open| !open.is_empty())
            .map(|open| {
                open.iter()
                    .map(|e| e.media.dropped.load(Ordering::Relaxed))
                    .sum()
            })
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Ends, until `stop` fires, every connection whose session no longer holds its slot.
    pub async fn reap_released(self: Arc<Self>, sessions: Arc<Sessions>, stop: CancellationToken) {
        let mut occupancy = sessions.watch();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = occupancy.changed() => if changed.is_err() { return },
            }
            for (session_id, open) in self.lock().iter() {
                for entry in open {
                    if sessions.held_uid(session_id).as_deref() != Some(entry.uid.as_str()) {
                        tracing::info!(session = %session_id, connection = %entry.connection_id, "slot released: ending the media connection");
                        entry.cancel.cancel();
                    }
                }
            }
        }
    }

    /// Removes `connection_id` of `session_id`; true if no other connection of the
    /// session remains. One lock, so of two participants leaving at once exactly one is
    /// the last.
    fn remove(&self, session_id: &str, connection_id: &str) -> bool {
        let mut entries = self.lock();
        let Some(open) = entries.get_mut(session_id) else {
            return true;
        };
        open.retain(|e| e.connection_id != connection_id);
        if open.is_empty() {
            entries.remove(session_id);
            true
        } else {
            false
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        // Each critical section is a single map operation, so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The right to run the media connection of one participant of a session; dropping it
/// frees the participant for a new connection.
#[derive(Debug)]
pub struct Claim {
    connections: Arc<Connections>,
    /// `namespace/name` of the session.
    pub session_id: String,
    /// The session's uid.
    pub uid: String,
    /// The participant connected: the userID its join token names (empty for a token
    /// minted before sessions had participants: the session's user).
    pub participant: String,
    /// Identifies this connection (the `Location` of a WHIP resource).
    pub connection_id: String,
    /// How the client connects.
    pub transport: Transport,
    /// Fires when the connection must end (hang-up, slot released, shutdown).
    pub cancel: CancellationToken,
    /// When the client last sent media.
    pub media: MediaActivity,
    active: bool,
    left: bool,
}

impl Claim {
    /// Gives the connection up; true if it was the session's last open connection (the
    /// session ends with it), false if other participants are still connected.
    pub fn leave(&mut self) -> bool {
        self.left = true;
        self.connections
            .remove(&self.session_id, &self.connection_id)
    }

    /// Records media from the client now (see [`MediaActivity`]).
    pub fn touch_media(&self) {
        self.media.touch();
    }

    /// Counts the connection as active (media flowing) until the claim is dropped.
    pub fn set_active(&mut self) {
        if !self.active {
            self.active = true;
            self.connections
                .metrics
                .add_active(self.transport.label(), 1);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.active {
            self.connections
                .metrics
                .add_active(self.transport.label(), -1);
        }
        if !self.left {
            self.connections
                .remove(&self.session_id, &self.connection_id);
        }
    }
}

/// A random identifier of `len` characters from `[A-Za-z0-9]` (ICE ufrags and
/// passwords need that alphabet; connection ids need only be unguessable).
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness is not something a worker can serve without; fail loudly
        // rather than hand out predictable ids.
        panic!("the OS random number generator is unavailable");
    }
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn connections() -> Arc<Connections> {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        Connections::new(CancellationToken::new(), metrics.media().clone())
    }

    #[test]
    fn one_connection_per_session_until_the_claim_is_dropped() {
        let connections = connections();
        let first = connections
            .claim("ns/a", "u", "", Transport::WebRtc)
            .unwrap_or_else(|e| panic!("{e}"));
        let second = connections.claim("ns/a", "u", "", Transport::WebSocket);
        assert_eq!(
            second.map(|_| ()).unwrap_err().connection_id,
            first.connection_id
        );
        assert!(
            connections
                .claim("ns/b", "u", "", Transport::WebSocket)
                .is_ok()
        );
        drop(first);
        assert!(
            connections
                .claim("ns/a", "u", "", Transport::WebRtc)
                .is_ok()
        );
    }

    #[test]
    fn participants_connect_once_each_and_the_last_to_leave_ends_the_session() {
        let connections = connections();
        let mut alice = connections
            .claim("ns/a", "u", "alice", Transport::WebRtc)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut bob = connections
            .claim("ns/a", "u", "bob", Transport::WebSocket)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            connections
                .claim("ns/a", "u", "bob", Transport::WebRtc)
                .is_err(),
            "bob connected twice"
        );
        assert_eq!(connections.len(), 2);
        assert!(!alice.leave(), "bob is still connected");
        assert!(bob.leave(), "bob was the last");
        drop((alice, bob));
        assert!(connections.is_empty());
        assert!(
            connections
                .claim("ns/a", "u", "bob", Transport::WebRtc)
                .is_ok()
        );
    }

    #[test]
    fn hang_up_needs_the_right_connection_id() {
        let connections = connections();
        let claim = connections
            .claim("ns/a", "u", "", Transport::WebRtc)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!connections.hang_up("ns/a", "someone-elses"));
        assert!(!claim.cancel.is_cancelled());
        assert!(connections.hang_up("ns/a", &claim.connection_id));
        assert!(claim.cancel.is_cancelled());
    }

    #[test]
    fn only_media_counts_as_activity() {
        let connections = connections();
        let claim = connections
            .claim("ns/a", "u", "", Transport::WebSocket)
            .unwrap_or_else(|e| panic!("{e}"));
        let window = Duration::from_secs(10);
        assert!(
            !connections.had_media_within("ns/a", window),
            "open is not active"
        );
        claim.touch_media();
        assert!(connections.had_media_within("ns/a", window));
        let later = Instant::now() + Duration::from_secs(11);
        assert!(!claim.media.within(window, later), "activity expires");
        assert!(!connections.had_media_within("ns/b", window));
        drop(claim);
        assert!(!connections.had_media_within("ns/a", window));
    }

    #[test]
    fn random_ids_use_the_ice_alphabet() {
        let id = random_id(32);
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(id, random_id(32));
    }
}
