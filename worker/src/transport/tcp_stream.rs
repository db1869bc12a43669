//! An ICE-TCP stream as a peer connection's driver sees it: the first frame the
//! [`super::tcp_mux`] already read, replayed ahead of the socket, and the address of the
//! connection's own (virtual) listener as the local address, so the ICE agent matches the
//! stream to its passive candidate.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;
use webrtc::runtime::AsyncTcpStream;

/// How long one framed write may wait for the peer to read. The driver writes inline, so
/// a client that stops reading would otherwise stall its connection for good; past this
/// the stream is closed and the driver drops it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A routed stream with its first frame put back in front.
#[derive(Debug)]
pub struct ReplayStream {
    replay: Mutex<Vec<u8>>,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    closed: CancellationToken,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl ReplayStream {
    /// Wraps `stream`, whose bytes `replay` were already read; it reports `local_addr`.
    pub fn new(
        stream: TcpStream,
        replay: Vec<u8>,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> Self {
        let (read, write) = stream.into_split();
        Self {
            replay: Mutex::new(replay),
            read,
            write,
            closed: CancellationToken::new(),
            local_addr,
            peer_addr,
        }
    }

    /// Moves up to `buf.len()` replayed bytes into `buf`; how many.
    fn take_replay(&self, buf: &mut [u8]) -> usize {
        let mut replay = self.replay.lock().unwrap_or_else(PoisonError::into_inner);
        let n = replay.len().min(buf.len());
        buf[..n].copy_from_slice(&replay[..n]);
        replay.drain(..n);
        n
    }

    async fn read_socket(&self, buf: &mut [u8]) -> io::Result<usize> {
        // `&self` only: wait for readiness, then read without blocking (tokio's split halves
        // allow this), as the crate's own tokio stream does.
        loop {
            self.read.readable().await?;
            match self.read.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
    }

    async fn write_socket(&self, mut remaining: &[u8]) -> io::Result<()> {
        while !remaining.is_empty() {
            self.write.writable().await?;
            match self.write.try_write(remaining) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => remaining = &remaining[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsyncTcpStream for ReplayStream {
    fn read<'a, 'b>(
        &'a self,
        buf: &'b mut [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            let replayed = self.take_replay(buf);
            if replayed > 0 {
                return Ok(replayed);
            }
            tokio::select! {
                // End of stream: the driver forgets a stream that reads 0 bytes.
                () = self.closed.cancelled() => Ok(0),
                read = self.read_socket(buf) => read,
            }
        })
    }

    fn write_all<'a, 'b>(
        &'a self,
        buf: &'b [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            if self.closed.is_cancelled() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            match tokio::time::timeout(WRITE_TIMEOUT, self.write_socket(buf)).await {
                Ok(written) => written,
                Err(_) => {
                    // Part of a frame may be out: the stream's framing is lost, close it.
                    self.closed.cancel();
                    Err(io::ErrorKind::TimedOut.into())
                }
            }
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer_addr)
    }
}
