//! The client connection's byte stream: what the protocol sniff already read, then the socket.
//!
//! rproxy reads the first bytes itself (with a timeout) to choose HTTP/1 or HTTP/2, then gives
//! hyper this stream, which replays those bytes first. Reads also tell the connection's
//! activity tracker that a request head is arriving.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::activity::ConnActivity;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// Reads until the protocol is known. `Ok(None)`: the client closed without sending anything.
pub(super) async fn sniff(stream: &mut TcpStream) -> io::Result<Option<(Protocol, BytesMut)>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        if buf.len() >= H2_PREFACE.len() {
            let proto = if buf.starts_with(H2_PREFACE) {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            return Ok(Some((proto, buf)));
        }
        if !H2_PREFACE.starts_with(&buf) {
            return Ok(Some((Protocol::Http1, buf)));
        }
    }
}

#[derive(Debug)]
pub(super) struct ClientIo {
    prefix: BytesMut,
    inner: TcpStream,
    activity: Arc<ConnActivity>,
}

impl ClientIo {
    pub(super) fn new(inner: TcpStream, prefix: BytesMut, activity: Arc<ConnActivity>) -> Self {
        ClientIo {
            prefix,
            inner,
            activity,
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.activity.bytes_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
