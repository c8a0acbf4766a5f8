//! The socket to a backend: TCP, or a Unix stream socket for a `unix:` server. The upstream
//! client, the layer-4 forwarder and the health checks all connect through here, so a Unix
//! backend behaves as a TCP one does: a socket file that is missing or has no listener is
//! refused like a closed port, and counts against the backend in the same way.
//!
//! Ground floor beside `tls`: imports only `config`. Tuning a TCP socket (no delay, keep-alive
//! probes) stays with each caller; a Unix socket has none of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::BackendAddr;

/// A connected socket to a backend.
#[derive(Debug)]
pub enum BackendSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl BackendSocket {
    /// Connects to `addr`, without a timeout of its own (the caller bounds it).
    pub async fn connect(addr: &BackendAddr) -> io::Result<BackendSocket> {
        match addr {
            BackendAddr::Tcp(addr) => TcpStream::connect(addr).await.map(BackendSocket::Tcp),
            BackendAddr::Unix(path) => UnixStream::connect(path).await.map(BackendSocket::Unix),
        }
    }

    /// The TCP socket, for the settings only TCP has.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            BackendSocket::Tcp(tcp) => Some(tcp),
            BackendSocket::Unix(_) => None,
        }
    }
}

impl AsyncRead for BackendSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendSocket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendSocket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendSocket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendSocket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendSocket::Tcp(s) => s.is_write_vectored(),
            BackendSocket::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendSocket::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendSocket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendSocket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
