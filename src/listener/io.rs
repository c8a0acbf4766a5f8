//! The client connection's byte stream: what the protocol sniff already read, then the socket.
//!
//! rproxy reads the first bytes itself (with a timeout) to choose HTTP/1 or HTTP/2, then gives
//! hyper this stream, which replays those bytes first. On the way it tells the connection's
//! activity tracker when a request head starts, notes a `#` in an HTTP/1 request target (which
//! `http::Uri` would silently drop), and ends a write that stays blocked longer than the send
//! timeout: a client that never reads its response cannot hold the connection forever.
//!
//! A request target that runs past `max_uri_length` is answered here, 414 and close, as soon
//! as it does, as nginx answers a request line too long for its buffer: hyper would otherwise
//! read on and answer 431 once the whole head outgrew `max_header_size`.
//!
//! It also lets an idle HTTP/1 connection be *parked* (see `http1`): once a response has been
//! flushed, no request is in progress and the socket has had nothing to read for
//! `PARK_AFTER`, a read ends hyper's connection as if the client had closed, without closing
//! the socket. hyper's buffers are then freed while the connection waits, and a new hyper
//! connection takes the socket when the next request arrives. nginx frees its buffers the
//! same way; rproxy waits a moment first because under load the next request is usually
//! microseconds away, and building a hyper connection for each request costs CPU.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::idle_timer::IdleTimer;

use super::activity::ConnActivity;
use super::client_conn::Socket;
use super::head_scan::{HeadScan, TARGET_TOO_LONG};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer to a request target longer than `max_uri_length`, with the same body as
/// rproxy's other answers of its own.
const URI_TOO_LONG: &[u8] =
    b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain; charset=utf-8\r\n\
    content-length: 17\r\nconnection: close\r\n\r\n414 URI Too Long\n";
/// The body's length in `URI_TOO_LONG`, for the access log.
pub(super) const URI_TOO_LONG_BODY: u64 = 17;
/// `ClientIo::refusing` once the 414 is written and the sending side closed.
const LINGERING: usize = usize::MAX;
/// Reads of up to 4 KiB dropped per poll while lingering, so that a client that keeps sending
/// does not hold a worker thread; the header timeout ends it.
const LINGER_READS: usize = 16;

/// How long an HTTP/1 connection stays idle before it is parked.
const PARK_AFTER: Duration = Duration::from_millis(100);

/// A client connection: plain TCP, or TLS over it.
pub(super) type ClientStream =
    tokio_util::either::Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// Ready when the client sent something (or closed) on a parked connection.
pub(super) fn poll_read_ready(stream: &ClientStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match stream {
        tokio_util::either::Either::Left(tcp) => tcp.poll_read_ready(cx),
        tokio_util::either::Either::Right(tls) => tls.get_ref().0.poll_read_ready(cx),
    }
}

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
    inner: ClientStream,
    activity: Arc<ConnActivity>,
    http1: bool,
    scan: HeadScan,
    /// The send timeout: a write blocked this long ends the connection.
    write_stall: IdleTimer,
    /// Whether everything hyper wrote has been flushed (hyper flushes only once its own
    /// buffer is empty): a connection is parked only then.
    written_all: bool,
    /// Runs while the connection is idle; parking waits for it.
    park_after: IdleTimer,
    /// Set when a read ended hyper's connection to park it.
    parked: bool,
    /// Set when a request target was too long: how much of `URI_TOO_LONG` has been written.
    refusing: Option<usize>,
}

impl ClientIo {
    pub(super) fn new(
        inner: ClientStream,
        prefix: BytesMut,
        activity: Arc<ConnActivity>,
        protocol: Protocol,
        send_timeout: Duration,
        max_uri_length: usize,
    ) -> Self {
        ClientIo {
            prefix,
            inner,
            activity,
            http1: protocol == Protocol::Http1,
            scan: HeadScan::new(max_uri_length),
            write_stall: IdleTimer::new(send_timeout),
            written_all: true,
            park_after: IdleTimer::new(PARK_AFTER),
            parked: false,
            refusing: None,
        }
    }

    /// After hyper's connection ended: the socket and what is left to replay, `unread` (what
    /// hyper had read but not used, the start of a pipelined request) first, if rproxy
    /// parked it; `None` if the client closed.
    pub(super) fn into_parked(self, unread: Bytes) -> Option<Socket> {
        if !self.parked {
            return None;
        }
        let mut prefix = self.prefix;
        if !unread.is_empty() {
            let rest = prefix;
            prefix = BytesMut::from(unread);
            prefix.extend_from_slice(&rest);
        }
        Some((self.inner, prefix))
    }

    /// Whether the connection answered a request target too long with 414 (and closed).
    pub(super) fn refused_target(&self) -> bool {
        self.refusing.is_some()
    }

    /// Whether the connection may be parked now: the last response is flushed, no request is
    /// in progress and nothing of a new one has arrived. hyper polls in the order read, write,
    /// flush, so a response that ended since the last flush is flushed before the next read.
    fn may_park(&self) -> bool {
        self.http1 && self.written_all && self.prefix.is_empty() && self.activity.idle()
    }

    /// Notes bytes just read. Only a head that starts a read on an idle connection is scanned;
    /// pipelined requests are not (their fragment is then dropped by the URI parser, which is
    /// harmless: the backend sees the path rproxy routed on, and hyper closes a connection
    /// whose request had both framing headers).
    /// True when the bytes make the request target too long: they are then not passed on,
    /// and the connection is answered 414 and closed (`refuse`).
    fn saw(&mut self, bytes: &[u8]) -> bool {
        if self.activity.bytes_read() && self.http1 {
            self.scan.start();
        }
        let flags = self.scan.feed(bytes);
        if flags & TARGET_TOO_LONG != 0 {
            // Written only after everything hyper wrote went out, so it cannot land inside
            // an earlier response; otherwise the connection just closes.
            self.refusing = Some(if self.written_all {
                0
            } else {
                URI_TOO_LONG.len()
            });
            return true;
        }
        if flags != 0 {
            self.activity.add_head_flags(flags);
        }
        false
    }

    /// Writes the 414, closes the sending side, then reads and drops what the client still
    /// sends until it closes too (a lingering close, as nginx does: closing with its bytes
    /// unread would reset the connection, and the client could lose the answer). The header
    /// timeout bounds the wait. Then fails the read, which ends hyper's connection (it answers
    /// nothing to a read error).
    fn refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = || {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request target longer than max_uri_length: answered 414 and closed",
            )))
        };
        let mut written = self.refusing.unwrap_or(usize::MAX);
        while let Some(rest) = URI_TOO_LONG.get(written..).filter(|r| !r.is_empty()) {
            let polled = Pin::new(&mut self.inner).poll_write(cx, rest);
            match self.written(polled, cx) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    written += n;
                    self.refusing = Some(written);
                }
                Poll::Ready(Ok(_)) => return done(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if written == URI_TOO_LONG.len() {
            let flushed = Pin::new(&mut self.inner).poll_flush(cx);
            match self.written(flushed, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            match Pin::new(&mut self.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => self.refusing = Some(LINGERING),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut scratch = [0u8; 4096];
        for _ in 0..LINGER_READS {
            let mut sink = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut sink) {
                Poll::Ready(Ok(())) if !sink.filled().is_empty() => {}
                Poll::Ready(_) => return done(),
                Poll::Pending => return Poll::Pending,
            }
        }
        // More to drop: let other connections run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Passes a write's result on, failing a write that stayed pending for the send timeout.
    fn written<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending if self.write_stall.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not read its response within the send timeout",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.write_stall.progressed();
                ready
            }
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
        if this.refusing.is_some() {
            return this.refuse(cx);
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            let chunk = this.prefix.split_to(n);
            if this.saw(&chunk) {
                return this.refuse(cx);
            }
            buf.put_slice(&chunk);
            if this.prefix.is_empty() {
                // Free the sniff buffer rather than keep it for the life of the connection.
                this.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        // Matched here rather than through `Either`'s own `poll_read`, which the compiler
        // does not always inline (about 60 instructions a request when it did not; callgrind).
        let polled = match &mut this.inner {
            tokio_util::either::Either::Left(tcp) => Pin::new(tcp).poll_read(cx, buf),
            tokio_util::either::Either::Right(tls) => Pin::new(tls).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if this.saw(&buf.filled()[before..]) {
                    // Taken back: hyper never sees the head it would answer 431.
                    buf.set_filled(before);
                    return this.refuse(cx);
                }
                this.park_after.progressed();
            }
            Poll::Pending if this.may_park() && this.park_after.expired(cx) => {
                // Reads as end of stream: hyper ends the connection and gives the socket back.
                this.parked = true;
                return Poll::Ready(Ok(()));
            }
            _ => {}
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
        self.written_all = false;
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.written_all = false;
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        let polled = self.written(polled, cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            self.written_all = true;
            // Idle from here: start the park timer. hyper already tried a read during the
            // response and will not read again until the client sends more; the timer wakes
            // the connection's task, hyper's next read finds nothing and parks it.
            if self.may_park() && self.park_after.expired(cx) {
                cx.waker().wake_by_ref();
            }
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // hyper ends a parked connection as if the client had closed; the socket stays.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logged_length_of_the_414_is_its_body() {
        let head_end = URI_TOO_LONG
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let body = &URI_TOO_LONG[head_end + 4..];
        assert_eq!(body.len() as u64, URI_TOO_LONG_BODY);
        assert!(
            URI_TOO_LONG
                .ends_with(b"content-length: 17\r\nconnection: close\r\n\r\n414 URI Too Long\n")
        );
    }
}
