//! One UDP port for every WebRTC peer connection of the worker.
//!
//! `webrtc` 0.21 binds a socket per peer connection and has no UDP mux (the `rtc`
//! setting for one is still a `todo`). Its runtime abstraction does let us hand each
//! connection's driver a socket of our own, so the mux owns the one real socket and
//! gives every connection a [`MuxSocket`]: a queue of datagrams routed to it, and a
//! send path through the shared socket.
//!
//! Routing follows pion's UDPMux and str0m: a datagram from a known remote address goes
//! to the connection that address belongs to; otherwise it must be a STUN binding request
//! whose USERNAME starts with a connection's local ICE ufrag (`local:remote`, RFC 8445
//! §7.2.2), which binds that remote address to the connection. Anything else is dropped
//! and counted. The ICE agent behind each socket still checks every request's
//! MESSAGE-INTEGRITY, so a forged USERNAME can route a packet but never complete a check.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Transmit};

use crate::metrics::MediaMetrics;

/// Datagrams queued per connection before the mux drops (and counts) new ones: about a
/// second of audio plus RTCP, far more than a healthy driver ever lags.
const QUEUE_DATAGRAMS: usize = 256;

/// Largest datagram read; WebRTC keeps packets under the path MTU.
const MAX_DATAGRAM: usize = 2_048;

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// STUN USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;

/// STUN Binding request message type.
const BINDING_REQUEST: u16 = 0x0001;

struct Route {
    tx: mpsc::Sender<(SocketAddr, Bytes)>,
    id: u64,
}

#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, Arc<Route>>,
    by_addr: HashMap<SocketAddr, Arc<Route>>,
    /// The address whose binding request last claimed each route: the peer's address.
    confirmed: HashMap<u64, SocketAddr>,
    next_id: u64,
}

/// The worker's shared WebRTC socket and its routing table.
pub struct UdpMux {
    socket: Arc<UdpSocket>,
    routes: Mutex<Routes>,
    metrics: MediaMetrics,
}

impl std::fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpMux")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl UdpMux {
    /// Binds the shared socket at `addr`.
    pub async fn bind(addr: SocketAddr, metrics: MediaMetrics) -> io::Result<Arc<Self>> {
        let socket = UdpSocket::bind(addr).await?;
        Ok(Arc::new(Self {
            socket: Arc::new(socket),
            routes: Mutex::new(Routes::default()),
            metrics,
        }))
    }

    /// The address the shared socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Reads the shared socket and routes every datagram until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                received = self.socket.recv_from(&mut buf) => received,
            };
            match received {
                Ok((len, from)) => self.route(&buf[..len], from),
                // ICMP port-unreachable from a peer that went away surfaces here on
                // Linux as ECONNREFUSED; it concerns one peer, not the socket.
                Err(e) => tracing::debug!(error = %e, "UDP mux receive error"),
            }
        }
    }

    /// Registers a connection whose local ICE ufrag is `ufrag`; its socket reports
    /// `local_addr` (the address its ICE agent believes it is bound to).
    pub fn register(self: &Arc<Self>, ufrag: &str, local_addr: SocketAddr) -> MuxSocket {
        let (tx, rx) = mpsc::channel(QUEUE_DATAGRAMS);
        let mut routes = self.lock();
        routes.next_id += 1;
        let route = Arc::new(Route {
            tx,
            id: routes.next_id,
        });
        routes.by_ufrag.insert(ufrag.to_owned(), route.clone());
        MuxSocket {
            mux: self.clone(),
            rx: Mutex::new(rx),
            route_id: route.id,
            ufrag: ufrag.to_owned(),
            local_addr,
        }
    }

    /// The remote address that connectivity checks for `ufrag` came from, once one has.
    pub fn peer_of(&self, ufrag: &str) -> Option<SocketAddr> {
        let routes = self.lock();
        let id = routes.by_ufrag.get(ufrag)?.id;
        routes.confirmed.get(&id).copied()
    }

    /// Connections registered (for tests and stats).
    pub fn connections(&self) -> usize {
        self.lock().by_ufrag.len()
    }

    fn route(&self, datagram: &[u8], from: SocketAddr) {
        let route = {
            let mut routes = self.lock();
            let claimed = binding_request_ufrag(datagram)
                .and_then(|ufrag| routes.by_ufrag.get(ufrag).cloned());
            if let Some(route) = claimed {
                // A connectivity check names the peer's address for sure, even when our
                // own check already taught us the address.
                routes.by_addr.insert(from, route.clone());
                routes.confirmed.insert(route.id, from);
            }
            routes.by_addr.get(&from).cloned()
        };
        let Some(route) = route else {
            self.metrics.count_dropped("udp_unknown_sender");
            return;
        };
        match route.tx.try_send((from, Bytes::copy_from_slice(datagram))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.count_dropped("udp_queue_full"),
            // The connection is closing; its routes go when its socket is dropped.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Remembers that `to` belongs to the connection `route_id` once it sends there, so
    /// the peer's answers (STUN responses carry no USERNAME) find their way back. An
    /// address already bound keeps its owner: only a binding request can claim it.
    fn learn(&self, route_id: u64, ufrag: &str, to: SocketAddr) {
        let mut routes = self.lock();
        if routes.by_addr.contains_key(&to) {
            return;
        }
        if let Some(route) = routes
            .by_ufrag
            .get(ufrag)
            .filter(|r| r.id == route_id)
            .cloned()
        {
            routes.by_addr.insert(to, route);
        }
    }

    fn unregister(&self, route_id: u64, ufrag: &str) {
        let mut routes = self.lock();
        if routes.by_ufrag.get(ufrag).is_some_and(|r| r.id == route_id) {
            routes.by_ufrag.remove(ufrag);
        }
        routes.by_addr.retain(|_, route| route.id != route_id);
        routes.confirmed.remove(&route_id);
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The local ufrag of a STUN binding request (`USERNAME` = `local:remote`), if `datagram`
/// is one.
pub fn binding_request_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < 20 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    if u16::from_be_bytes([datagram[0], datagram[1]]) != BINDING_REQUEST {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(20..20 + body_len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Attributes are padded to 4 bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// One connection's view of the shared socket, handed to its `webrtc` driver.
pub struct MuxSocket {
    mux: Arc<UdpMux>,
    rx: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    route_id: u64,
    ufrag: String,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxSocket")
            .field("ufrag", &self.ufrag)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MuxSocket {
    fn drop(&mut self) {
        self.mux.unregister(self.route_id, &self.ufrag);
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.mux
            .learn(self.route_id, &self.ufrag, transmit.destination);
        // Never park a driver on a shared socket (tokio wakes only the last waiter):
        // a full send buffer drops the datagram, as the network would.
        match self
            .mux
            .socket
            .try_send_to(transmit.contents, transmit.destination)
        {
            Ok(sent) => Poll::Ready(Ok(sent)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.mux.metrics.count_dropped("udp_send_buffer_full");
                Poll::Ready(Ok(transmit.contents.len()))
            }
            // A mux bound to loopback (tests, the local cluster) reaches this host's own
            // addresses, where a browser on the same machine sends from, but no other host:
            // the kernel refuses those (EINVAL), and a candidate the client listed elsewhere
            // is just unreachable, not a fault of the socket.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                self.mux.metrics.count_dropped("udp_unroutable");
                Poll::Ready(Ok(transmit.contents.len()))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        match rx.poll_recv(cx) {
            Poll::Ready(Some((from, datagram))) => {
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                let mut filled = RecvMeta::default();
                filled.addr = from;
                filled.len = len;
                filled.stride = len;
                filled.dst_ip = Some(self.local_addr.ip());
                *slot = filled;
                Poll::Ready(Ok(1))
            }
            Poll::Ready(None) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the UDP mux stopped",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with USERNAME `user` (no integrity: the mux does not check it).
    fn binding_request(user: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&u16::try_from(user.len()).unwrap_or(0).to_be_bytes());
        attr.extend_from_slice(user.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        msg.extend_from_slice(&u16::try_from(attr.len()).unwrap_or(0).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn reads_the_local_ufrag_of_a_binding_request() {
        assert_eq!(
            binding_request_ufrag(&binding_request("abcd:wxyz")),
            Some("abcd")
        );
        assert_eq!(binding_request_ufrag(b"not stun at all, just bytes"), None);
        let mut response = binding_request("abcd:wxyz");
        response[1] = 0x01; // 0x0101: binding success response
        response[0] = 0x01;
        assert_eq!(binding_request_ufrag(&response), None);
        let mut truncated = binding_request("abcd:wxyz");
        truncated.truncate(26);
        assert_eq!(binding_request_ufrag(&truncated), None);
    }

    #[test]
    fn no_datagram_makes_the_parser_panic() {
        for len in 0..64 {
            for fill in [0u8, 0x21, 0xff] {
                let mut d = vec![fill; len];
                if len >= 8 {
                    d[4..8].copy_from_slice(&MAGIC_COOKIE);
                    d[1] = 1;
                    d[0] = 0;
                }
                let _ = binding_request_ufrag(&d);
            }
        }
    }

    async fn recv(socket: &MuxSocket) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        let mut meta = [RecvMeta::default()];
        let polled = futures::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), polled)
            .await
            .unwrap_or_else(|_| panic!("nothing routed"))
            .unwrap_or_else(|e| panic!("{e}"));
        buf.truncate(meta[0].len);
        buf
    }

    #[tokio::test]
    async fn routes_by_ufrag_then_by_address_and_forgets_a_dropped_connection() {
        let metrics = crate::metrics::Metrics::new()
            .unwrap_or_else(|e| panic!("{e}"))
            .media()
            .clone();
        let mux = UdpMux::bind(
            "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            metrics,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let addr = mux.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stop = CancellationToken::new();
        tokio::spawn(mux.clone().run(stop.clone()));
        let fake_local = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let a = mux.register("ufrag-a", fake_local);
        let b = mux.register("ufrag-b", fake_local);
        let peer = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));

        // Unknown sender, not STUN: dropped. Then a binding request for b binds the peer to b.
        peer.send_to(b"hello", addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        peer.send_to(&binding_request("ufrag-b:peer"), addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        peer.send_to(b"dtls after stun", addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&recv(&b).await[..2], &BINDING_REQUEST.to_be_bytes());
        assert_eq!(recv(&b).await, b"dtls after stun");
        let nothing = futures::future::poll_fn(|cx| {
            let mut buf = [0u8; 8];
            let mut bufs = [IoSliceMut::new(&mut buf)];
            let mut meta = [RecvMeta::default()];
            Poll::Ready(a.poll_recv(cx, &mut bufs, &mut meta).is_pending())
        })
        .await;
        assert!(nothing, "a got nothing");

        assert_eq!(mux.connections(), 2);
        drop(b);
        assert_eq!(mux.connections(), 1);
        stop.cancel();
    }
}
