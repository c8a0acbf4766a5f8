//! Upstream connections that yield: a backend that streams without pause cannot hold a
//! worker thread.
//!
//! hyper's HTTP/1 client reads and parses in a loop for as long as bytes are ready, and
//! tokio only forces a yield after 128 reads, each of which may fill a large buffer. A backend
//! that floods `100 Continue` heads (which hyper parses and drops) kept one poll of its
//! connection busy for seconds: the response timeout fired seconds late, and the connection
//! went on spinning after the request was gone. Yielding after every 64 KiB read within one
//! poll bounds that: timers fire on time, and hyper, polled afresh, sees that the request was
//! dropped and closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::either::Either;

use crate::tls::BackendStream;

const READ_BUDGET: usize = 64 * 1024;

/// An upstream connection as the client uses it.
#[derive(Debug)]
pub(crate) struct UpstreamIo {
    io: TokioIo<Fair>,
}

impl UpstreamIo {
    /// Wraps a connection to a backend, plain or TLS.
    pub(crate) fn new(stream: BackendStream) -> Self {
        UpstreamIo {
            io: TokioIo::new(Fair {
                inner: stream,
                read_this_poll: 0,
            }),
        }
    }
}

/// The socket, counting what one poll of its task has read.
#[derive(Debug)]
struct Fair {
    inner: BackendStream,
    read_this_poll: usize,
}

impl AsyncRead for Fair {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read_this_poll >= READ_BUDGET {
            self.read_this_poll = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        // Matched here rather than through `Either`'s own `poll_read`, which the compiler
        // stopped inlining: that call cost about 70 instructions a request (callgrind).
        let polled = match &mut self.inner {
            Either::Left(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Either::Right(tls) => Pin::new(tls).poll_read(cx, buf),
        };
        match &polled {
            Poll::Ready(Ok(())) => self.read_this_poll += buf.filled().len() - before,
            // The task is about to yield anyway: a new poll starts a new budget.
            Poll::Pending => self.read_this_poll = 0,
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl AsyncWrite for Fair {
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

impl Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
