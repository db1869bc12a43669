//! The HTTP accept loop, served by hand (not `axum::serve`) so that every connection
//! gets a header-read timeout: a slow-loris client that trickles its headers is cut off
//! instead of holding a connection, and signaling handlers bound the body read themselves.
//! Upgrades (WebSocket) stay enabled.
//!
//! A connection that sends nothing at all is closed after the same header timeout.
//! Connections are capped in total and per remote IP address ([`ConnectionLimits`]). The
//! count is held by the socket itself ([`Counted`]), so an upgraded WebSocket keeps its
//! place until it closes. A connection past a cap is answered `503 TooManyConnections`
//! and closed before any request is read.
//!
//! With TLS ([`HttpTls`]) the same caps and timeouts hold: a connection is counted before its
//! handshake, the handshake must finish within the header timeout and so must the first
//! request byte after it (a client that opens a TLS connection and goes silent holds nothing
//! longer than a plain one); hyper's header timeout then runs on the decrypted stream.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::http_tls::HttpTls;
use crate::metrics::MediaMetrics;

/// How long open connections get to finish once the server stops accepting.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// How long a refused connection gets to take its 503 before it is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The answer to a connection past a cap (no request is read).
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 94\r\n\r\n{\"code\":\"TooManyConnections\",\"message\":\"too many connections to this worker; try again later\"}";

/// Caps on open HTTP connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// In total.
    pub total: usize,
    /// From one remote IP address.
    pub per_address: usize,
}

/// Open connections, in total and by remote address.
#[derive(Debug)]
struct Ledger {
    limits: ConnectionLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    metrics: MediaMetrics,
}

impl Ledger {
    /// Counts a connection from `ip`, or names the cap that is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.0 >= self.limits.total {
            return Err("total");
        }
        let from_ip = open.1.entry(ip).or_default();
        if *from_ip >= self.limits.per_address {
            return Err("per_address");
        }
        *from_ip += 1;
        open.0 += 1;
        self.metrics.add_http_connection(1);
        Ok(Slot {
            ledger: self.clone(),
            ip,
        })
    }
}

/// One counted connection; dropping it frees the place.
#[derive(Debug)]
struct Slot {
    ledger: Arc<Ledger>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .ledger
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        self.ledger.metrics.add_http_connection(-1);
    }
}

/// A TCP stream that holds its connection's [`Slot`] for as long as it lives (through an
/// upgrade too).
#[derive(Debug)]
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Answers a connection past a cap with 503 and closes it, on its own task.
fn refuse(mut stream: TcpStream, remote: SocketAddr, cap: &'static str) {
    tracing::debug!(%remote, cap, "HTTP connection refused: cap reached");
    tokio::spawn(async move {
        let answer = async {
            stream.write_all(REFUSAL).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, answer).await;
    });
}

/// Serves `router` on `listener` until `shutdown` fires, then closes connections
/// gracefully; over TLS when `tls` is given. Handlers can read the client's address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    limits: ConnectionLimits,
    metrics: MediaMetrics,
    tls: Option<Arc<HttpTls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let builder = builder.http1_only();
    let graceful = GracefulShutdown::new();
    let ledger = Arc::new(Ledger {
        limits,
        open: Mutex::default(),
        metrics: metrics.clone(),
    });
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept:
                    // keep serving, but do not spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match ledger.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                metrics.count_http_refused(cap);
                refuse(stream, remote, cap);
                continue;
            }
        };
        let stream = Counted {
            stream,
            _slot: slot,
        };
        let service = router
            .clone()
            .layer(axum::Extension(ConnectInfo::<SocketAddr>(remote)));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
            // hyper's header timeout runs only once a first byte came: a connection that
            // never sends one (half-open TCP) is cut here after the same time.
            // (`peek`, not `readable()`: a fresh socket may report readiness with no data.)
            let mut first = [0u8; 1];
            if tokio::time::timeout(header_timeout, stream.stream.peek(&mut first))
                .await
                .is_err()
            {
                tracing::debug!(%remote, "HTTP connection sent nothing in time; closing");
                return;
            }
            let Some(acceptor) = acceptor else {
                return serve_connection(&builder, stream, service, watcher, remote).await;
            };
            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    // As for plain TCP above: hyper's timer would not cut a connection that
                    // completed its handshake and then sent nothing, so wait for the first
                    // request byte here (buffered, and handed on with the stream).
                    let mut stream = tokio::io::BufReader::new(stream);
                    match tokio::time::timeout(header_timeout, stream.fill_buf()).await {
                        Ok(Ok(first)) if !first.is_empty() => {
                            serve_connection(&builder, stream, service, watcher, remote).await;
                        }
                        _ => {
                            tracing::debug!(%remote, "HTTPS connection sent no request in time; closing");
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "HTTPS connection refused: TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(%remote, "HTTPS connection refused: TLS handshake timed out");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after {CLOSE_GRACE:?}; leaving them");
    }
    Ok(())
}

/// Serves one admitted connection (plain or TLS) with upgrades until it ends or the
/// server stops.
async fn serve_connection<S>(
    builder: &Builder<TokioExecutor>,
    stream: S,
    service: Router,
    watcher: hyper_util::server::graceful::Watcher,
    remote: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, %remote, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn ledger(total: usize, per_address: usize) -> Arc<Ledger> {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Ledger {
            limits: ConnectionLimits { total, per_address },
            open: Mutex::default(),
            metrics: metrics.media().clone(),
        })
    }

    #[test]
    fn caps_hold_per_address_and_in_total_and_free_on_drop() {
        let ledger = ledger(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = ledger.admit(a).unwrap_or_else(|e| panic!("{e}"));
        let _second = ledger.admit(a).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ledger.admit(a).map(|_| ()), Err("per_address"));
        let _third = ledger.admit(b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ledger.admit(b).map(|_| ()), Err("total"));
        drop(first);
        assert!(
            ledger.admit(a).is_ok(),
            "a dropped connection frees its place"
        );
    }

    #[test]
    fn the_refusal_is_well_formed_http() {
        let text = std::str::from_utf8(REFUSAL).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(json["code"], "TooManyConnections");
    }
}
