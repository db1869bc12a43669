//! The `webrtc` runtime of one peer connection: tokio for everything, except that the
//! UDP socket its driver binds is swapped for the connection's [`MuxSocket`].
//!
//! The driver binds a throwaway socket on `pod_ip:0` (it has no way to take a socket
//! from us) and asks the runtime to wrap it; we note its address, close it, and return
//! the mux's socket under that address. The ICE agent then gathers a host candidate
//! for the throwaway address, which the answer rewrites to the mux's advertised
//! address ([`super::sdp::rewrite_candidates`]). Nothing ever listens on the throwaway
//! port: every datagram goes through the one shared port.
//!
//! ICE-TCP works the same way when the worker runs a [`TcpMux`]: the driver's throwaway
//! listener is swapped for the connection's [`super::tcp_mux::MuxTcpListener`]. The worker
//! only accepts TCP (passive candidates): it never connects out to an address a client
//! names, so `connect_tcp` refuses.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

use super::tcp_mux::TcpMux;
use super::udp_mux::UdpMux;

/// Runtime of one peer connection whose local ICE ufrag is `ufrag`.
#[derive(Debug)]
pub struct MuxRuntime {
    tokio: TokioRuntime,
    mux: Arc<UdpMux>,
    tcp: Option<Arc<TcpMux>>,
    ufrag: String,
    /// The throwaway address the driver bound, once it has.
    bound: Mutex<Option<SocketAddr>>,
}

impl MuxRuntime {
    /// A runtime that routes the connection with local ufrag `ufrag` through `mux`, and
    /// its ICE-TCP streams through `tcp` when the worker listens for them.
    pub fn new(mux: Arc<UdpMux>, tcp: Option<Arc<TcpMux>>, ufrag: String) -> Self {
        Self {
            tokio: TokioRuntime,
            mux,
            tcp,
            ufrag,
            bound: Mutex::new(None),
        }
    }

    /// The address the connection's ICE agent believes it is bound to.
    pub fn bound_addr(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Runtime for MuxRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.tokio.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let local_addr = socket.local_addr()?;
        drop(socket);
        *self.bound.lock().unwrap_or_else(PoisonError::into_inner) = Some(local_addr);
        Ok(Arc::new(self.mux.register(&self.ufrag, local_addr)))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        let local_addr = listener.local_addr()?;
        drop(listener);
        match &self.tcp {
            Some(tcp) => Ok(Arc::new(tcp.register(&self.ufrag, local_addr))),
            // Only asked for when the connection was given TCP addresses, which it is only
            // when the worker runs a TCP mux.
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "ICE-TCP is off (TCP_MEDIA_PORT is unset)",
            )),
        }
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        tracing::debug!(%remote_addr, "not connecting to a client's passive TCP candidate");
        Box::pin(std::future::ready(Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the worker accepts ICE-TCP but never connects out",
        ))))
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.tokio.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.tokio.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.tokio.block_on(future);
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio-udp-mux"
    }
}
