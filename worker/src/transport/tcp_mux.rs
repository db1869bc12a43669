//! One TCP port for every WebRTC peer connection's ICE-TCP (RFC 6544 passive candidates,
//! RFC 4571 framing), the TCP twin of [`super::udp_mux`].
//!
//! `webrtc` 0.21 binds one TCP listener per peer connection and has no shared TCP mux; its
//! runtime lets us hand each connection's driver a listener of our own, as for UDP. The mux
//! owns the one real `TcpListener`. Each accepted stream must send its first RFC 4571 frame
//! within [`FIRST_FRAME_TIMEOUT`] and that frame must be a STUN binding request of at most
//! [`MAX_FIRST_FRAME`] bytes whose USERNAME starts with a connection's local ufrag; the
//! stream then goes to that connection's [`MuxTcpListener`] with the frame replayed ahead
//! of it ([`super::tcp_stream`]). Until then a stream holds one of [`MAX_HANDSHAKES`]
//! handshake permits and nothing else: no session slot, no peer connection, no task past
//! the timeout. The ICE agent behind the listener checks MESSAGE-INTEGRITY as for UDP, so a
//! forged USERNAME can route a stream but never complete a check.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{AsyncTcpListener, AsyncTcpStream};

use super::tcp_stream::ReplayStream;
use super::udp_mux::binding_request_ufrag;
use crate::metrics::MediaMetrics;

/// How long an accepted stream has to deliver its first frame (a browser sends its binding
/// request at once; a slower client is cut).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest first frame accepted: a binding request fits a UDP datagram, so one MTU is ample;
/// a larger RFC 4571 length prefix is cut before its body is read.
pub const MAX_FIRST_FRAME: usize = 1_500;

/// Streams waiting for their first frame at once; past it new ones are closed at accept.
pub const MAX_HANDSHAKES: usize = 256;

/// Streams routed to one peer connection over its life (a browser opens one per candidate
/// pair it checks over TCP): enough for every pair, too few to pile up sockets in a driver.
pub const MAX_STREAMS_PER_CONNECTION: usize = 8;

/// An accepted stream whose first frame named a connection.
struct Routed {
    stream: TcpStream,
    peer: SocketAddr,
    first_frame: Vec<u8>,
}

struct Route {
    id: u64,
    tx: mpsc::Sender<Routed>,
    routed: usize,
    peer: Option<SocketAddr>,
}

#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, Route>,
    next_id: u64,
}

/// The worker's shared ICE-TCP listener and its routing table.
pub struct TcpMux {
    listener: TcpListener,
    routes: Mutex<Routes>,
    handshakes: Arc<Semaphore>,
    metrics: MediaMetrics,
}

impl std::fmt::Debug for TcpMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpMux")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// Closes a stream before routing (by dropping it) and counts why.
fn refuse(metrics: &MediaMetrics, reason: &'static str, peer: SocketAddr) {
    tracing::debug!(%peer, reason, "ICE-TCP stream closed before routing");
    metrics.count_ice_tcp_stream(reason);
}

impl TcpMux {
    /// Binds the shared listener at `addr`.
    pub async fn bind(addr: SocketAddr, metrics: MediaMetrics) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            listener: TcpListener::bind(addr).await?,
            routes: Mutex::new(Routes::default()),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            metrics,
        }))
    }

    /// The address the shared listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts streams and routes each by its first frame until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "ICE-TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                refuse(&self.metrics, "handshakes_full", peer);
                continue;
            };
            let mux = self.clone();
            let stop = stop.clone();
            self.metrics.add_ice_tcp_handshake(1);
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = mux.handshake(stream, peer) => {}
                }
                mux.metrics.add_ice_tcp_handshake(-1);
                drop(permit);
            });
        }
    }

    /// Reads the first frame of `stream` within the timeout and hands the stream on.
    async fn handshake(&self, mut stream: TcpStream, peer: SocketAddr) {
        let first_frame =
            match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_first_frame(&mut stream)).await {
                Err(_) => return refuse(&self.metrics, "first_frame_timeout", peer),
                Ok(Err(reason)) => return refuse(&self.metrics, reason, peer),
                Ok(Ok(frame)) => frame,
            };
        let Some(ufrag) = binding_request_ufrag(&first_frame[2..]) else {
            return refuse(&self.metrics, "not_binding_request", peer);
        };
        let tx = {
            let mut routes = self.lock();
            let Some(route) = routes.by_ufrag.get_mut(ufrag) else {
                drop(routes);
                return refuse(&self.metrics, "unknown_ufrag", peer);
            };
            if route.routed >= MAX_STREAMS_PER_CONNECTION {
                drop(routes);
                return refuse(&self.metrics, "streams_per_connection", peer);
            }
            route.routed += 1;
            route.peer = Some(peer);
            route.tx.clone()
        };
        let routed = Routed {
            stream,
            peer,
            first_frame,
        };
        match tx.try_send(routed) {
            Ok(()) => self.metrics.count_ice_tcp_stream("routed"),
            Err(_) => refuse(&self.metrics, "accept_queue_full", peer),
        }
    }

    /// Registers the connection whose local ICE ufrag is `ufrag`; its listener reports
    /// `local_addr` (the address its ICE agent believes it listens on).
    pub fn register(self: &Arc<Self>, ufrag: &str, local_addr: SocketAddr) -> MuxTcpListener {
        let (tx, rx) = mpsc::channel(MAX_STREAMS_PER_CONNECTION);
        let mut routes = self.lock();
        routes.next_id += 1;
        let id = routes.next_id;
        let route = Route {
            id,
            tx,
            routed: 0,
            peer: None,
        };
        routes.by_ufrag.insert(ufrag.to_owned(), route);
        MuxTcpListener {
            mux: self.clone(),
            rx: tokio::sync::Mutex::new(rx),
            id,
            ufrag: ufrag.to_owned(),
            local_addr,
        }
    }

    /// The remote address of the last stream routed to `ufrag`, once one has been.
    pub fn peer_of(&self, ufrag: &str) -> Option<SocketAddr> {
        self.lock().by_ufrag.get(ufrag)?.peer
    }

    /// Connections registered (for tests and stats).
    pub fn connections(&self) -> usize {
        self.lock().by_ufrag.len()
    }

    fn unregister(&self, id: u64, ufrag: &str) {
        let mut routes = self.lock();
        if routes.by_ufrag.get(ufrag).is_some_and(|r| r.id == id) {
            routes.by_ufrag.remove(ufrag);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads one RFC 4571 frame (2-byte length, then the body); the frame with its prefix, or
/// the drop reason.
async fn read_first_frame(stream: &mut TcpStream) -> Result<Vec<u8>, &'static str> {
    let mut prefix = [0u8; 2];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|_| "closed_before_frame")?;
    let len = usize::from(u16::from_be_bytes(prefix));
    // A STUN message is at least its 20-byte header.
    if len < 20 {
        return Err("not_binding_request");
    }
    if len > MAX_FIRST_FRAME {
        return Err("first_frame_too_large");
    }
    let mut frame = vec![0u8; 2 + len];
    frame[..2].copy_from_slice(&prefix);
    stream
        .read_exact(&mut frame[2..])
        .await
        .map_err(|_| "closed_before_frame")?;
    Ok(frame)
}

/// One connection's view of the shared listener, handed to its `webrtc` driver: the
/// streams routed to it, each with its first frame replayed.
pub struct MuxTcpListener {
    mux: Arc<TcpMux>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Routed>>,
    id: u64,
    ufrag: String,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for MuxTcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxTcpListener")
            .field("ufrag", &self.ufrag)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MuxTcpListener {
    fn drop(&mut self) {
        self.mux.unregister(self.id, &self.ufrag);
    }
}

impl AsyncTcpListener for MuxTcpListener {
    fn accept<'a>(
        &'a self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = io::Result<(Arc<dyn AsyncTcpStream>, SocketAddr)>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let routed = self.rx.lock().await.recv().await;
            let Some(routed) = routed else {
                // The sender lives in the mux's table as long as this listener, so this is
                // unreachable in practice; an error would make the driver re-accept at once
                // and spin, so wait instead.
                return std::future::pending().await;
            };
            let peer = routed.peer;
            let stream =
                ReplayStream::new(routed.stream, routed.first_frame, self.local_addr, peer);
            Ok((Arc::new(stream) as Arc<dyn AsyncTcpStream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}
