//! Serving one HTTP/1 client connection, parking it while it is idle.
//!
//! Called by `http::serve_client` once the protocol is HTTP/1, and for a connection the idle
//! lot gives back (`resume`). A keep-alive connection spends most of its life waiting for the
//! next request, and a hyper connection holds about 16 KB of buffers all along. So when a
//! response is flushed and nothing more has arrived for a moment, the connection is parked
//! (see `io`): hyper's connection ends without closing the socket. A plain connection then
//! leaves its task for the idle lot (`idle_lot`), as its socket and a `Waiting` handle: about
//! 110 bytes; a TLS one waits here, in its task, holding its socket, its settings
//! (`client_conn`) and its keep-alive deadline (about 850 bytes with tokio's registration of
//! the socket, plus the TLS session). The next request gets a new hyper connection on the same
//! socket. Bytes hyper had read but not used (the start of a pipelined request) are replayed
//! to it at once, so a connection with some never goes to the lot.
//!
//! While parked the connection obeys the same rules as inside hyper: the keep-alive timeout
//! closes it, and a graceful shutdown closes it at once (it is idle), so the drain timeout
//! that follows a shutdown finds nothing left to kill. Parked connections, wherever they wait,
//! are counted in `rproxy_idle_parked_connections{listener}`.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::{Request, header};
use metrics::Gauge;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::either::Either;
use tokio_util::sync::WaitForCancellationFuture;
use tokio_util::task::TaskTracker;

use crate::header_text::has_token;
use crate::upstream::Present;

use super::activity::ConnActivity;
use super::client_conn::{ClientConn, ConnSettings, OpenConn, Socket};
use super::drive::{Driven, drive};
use super::http::ListenerCtx;
use super::idle_lot::{IdleLot, ResumeHandle};
use super::io::{ClientStream, Protocol, poll_read_ready};

/// Serves requests on `socket` until the client closes, a timeout expires or rproxy shuts
/// down, or the connection goes to wait in the idle lot. `open` goes with the connection.
///
/// An `async` block rather than an `async fn`: an `async fn` keeps a second copy of its
/// arguments for its whole life, and a TLS connection waits in this future while idle.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments (above)"
)]
pub(super) fn serve_http1(
    conn: ClientConn,
    mut socket: Socket,
    open: OpenConn,
) -> impl Future<Output = ()> + Send {
    async move {
        loop {
            // Boxed, so that parking frees it: a hyper connection and its driver are most of
            // what a connection costs.
            let Some((stream, unread)) = Box::pin(until_parked(&conn, socket)).await else {
                return;
            };
            // Bytes left over are the start of a pipelined request that hyper had read: they
            // are served at once.
            if !unread.is_empty() {
                socket = (stream, unread);
                continue;
            }
            // Otherwise the connection waits for the client: a plain one in the idle lot, a
            // TLS one here.
            let stream = match (stream, &conn.ctx.lot) {
                (Either::Left(tcp), Some(lot)) => return park(lot, &conn, tcp, open),
                (stream, _) => stream,
            };
            let counted = Counted::new(&conn.ctx.metrics.idle_parked);
            let next = wait_for_request(&conn, &stream).await;
            drop(counted);
            match next {
                Ok(true) => socket = (stream, unread),
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(client = %conn.peer, error = %e, "idle client connection failed");
                    return;
                }
            }
        }
    }
}

/// The idle lot that plain connections wait in, as `http1` fills it.
pub(super) type Lot = IdleLot<Waiting>;

/// Starts the idle lot: a connection it gives back is served again on a new task of `tasks`.
/// Must be called on the runtime that is to serve the connections.
pub(super) fn start_idle_lot(tasks: TaskTracker) -> std::io::Result<Arc<Lot>> {
    let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let (lot, run) = IdleLot::start(move |stream, waiting| {
        tasks.spawn(resume(stream, waiting));
    })?;
    runtime.spawn(async move {
        if let Err(e) = run.await {
            tracing::error!(error = %e, "waiting on idle connections failed; they were closed, and idle connections now close instead of waiting");
        }
    });
    Ok(lot)
}

/// What a plain connection waiting in the idle lot keeps to be served again: the lot's handle
/// for it (88 bytes). It counts in its listener's parked gauge from when it is made until it
/// is dropped, as the connection leaves the lot either way.
#[derive(Debug)]
pub(super) struct Waiting {
    ctx: Arc<ListenerCtx>,
    peer: SocketAddr,
    settings: ConnSettings,
    /// Taken out when the connection is served again (an `Option` of it takes no more room).
    open: Option<OpenConn>,
}

impl Waiting {
    fn new(conn: &ClientConn, open: OpenConn) -> Self {
        conn.ctx.metrics.idle_parked.increment(1.0);
        Waiting {
            ctx: Arc::clone(&conn.ctx),
            peer: conn.peer,
            settings: conn.settings,
            open: Some(open),
        }
    }
}

impl ResumeHandle for Waiting {
    fn drained(&self) -> bool {
        self.ctx.shutdown.is_cancelled()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.ctx.metrics.idle_parked.decrement(1.0);
    }
}

/// A connection parked in its task, counted in its listener's parked gauge while this lives.
struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.increment(1.0);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Hands an idle connection to the idle lot; its task then ends.
fn park(lot: &Lot, conn: &ClientConn, tcp: TcpStream, open: OpenConn) {
    let deadline = conn.keepalive_deadline();
    let parked = tcp
        .into_std()
        .and_then(|stream| lot.park(stream, deadline, Waiting::new(conn, open)));
    if let Err(e) = parked {
        // Idle, so closing it is allowed (and on shutdown, asked for).
        tracing::debug!(client = %conn.peer, error = %e, "idle client connection closed instead of parked");
    }
}

/// Serves a connection the idle lot gave back (on a task of its own), as an HTTP/1
/// connection idle after a request, with its socket back in tokio.
async fn resume(stream: std::net::TcpStream, mut waiting: Waiting) {
    let Some(open) = waiting.open.take() else {
        return;
    };
    let conn = ClientConn {
        ctx: Arc::clone(&waiting.ctx),
        peer: waiting.peer,
        over_tls: false,
        protocol: Protocol::Http1,
        activity: ConnActivity::resumed(),
        settings: waiting.settings,
    };
    // Out of the parked gauge.
    drop(waiting);
    match TcpStream::from_std(stream) {
        Ok(stream) => serve_http1(conn, (Either::Left(stream), BytesMut::new()), open).await,
        Err(e) => {
            tracing::debug!(client = %conn.peer, error = %e, "idle client connection could not be served again");
        }
    }
}

/// Serves requests with one hyper connection until it is parked: then the socket and the
/// bytes hyper had read but not used. `None` when the connection ended (the client closed, a
/// timeout, shutdown) or was upgraded (a WebSocket's tunnel owns the socket now).
async fn until_parked(conn: &ClientConn, (stream, prefix): Socket) -> Option<Socket> {
    let mut hyper_conn = conn
        .settings
        .http1()
        .serve_connection(conn.io(stream, prefix), conn.service())
        .with_upgrades();
    let driven = drive(
        Pin::new(&mut hyper_conn),
        |c| c.graceful_shutdown(),
        pin!(conn.watchdog()),
        &conn.ctx,
        conn.peer,
    )
    .await;
    // `None` once upgraded: a WebSocket's tunnel has the socket.
    let parts = hyper_conn.into_parts()?;
    let io = parts.io.into_inner();
    if io.refused_target() {
        conn.ctx
            .head_refused(conn.peer, 414, super::io::URI_TOO_LONG_BODY);
    }
    if driven != Driven::Finished {
        return None;
    }
    io.into_parked(parts.read_buf)
}

pin_project_lite::pin_project! {
    /// Waits on a parked connection for the client's next bytes: true when they arrived,
    /// false when the connection is to close.
    /// While idle, a graceful shutdown closes it at once, as hyper would (and the drain
    /// timeout, which only follows a graceful shutdown, has nothing left to do), and so does
    /// keep-alive expiry. A future of its own rather than an `async fn` with `select!`, and a
    /// deadline rather than the watchdog's loop: this is what a parked connection holds while
    /// it waits, so it is kept small (192 bytes).
    struct NextRequest<'a> {
        #[pin]
        shutdown: WaitForCancellationFuture<'a>,
        #[pin]
        expiry: Sleep,
        stream: &'a ClientStream,
    }
}

fn wait_for_request<'a>(conn: &'a ClientConn, stream: &'a ClientStream) -> NextRequest<'a> {
    NextRequest {
        shutdown: conn.ctx.shutdown.cancelled(),
        expiry: tokio::time::sleep_until(conn.keepalive_deadline()),
        stream,
    }
}

impl Future for NextRequest<'_> {
    type Output = std::io::Result<bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.shutdown.poll(cx).is_ready() || this.expiry.poll(cx).is_ready() {
            return Poll::Ready(Ok(false));
        }
        poll_read_ready(this.stream, cx).map_ok(|()| true)
    }
}

/// Whether, once answered, `req` leaves its HTTP/1 connection at a known message boundary
/// with nothing of it left unread, and open: then the connection may be parked while idle.
/// A request with a body might not be read to its end (a refused upload), and hyper would
/// then drain or close; an upgrade hands the socket over.
/// `present` is what the head carries, so that most requests, without `Upgrade` or
/// `Connection`, need no lookup.
pub(super) fn ends_cleanly(req: &Request<Incoming>, present: Present) -> bool {
    use hyper::body::Body;
    req.version() == hyper::Version::HTTP_11
        && req.body().is_end_stream()
        && !present.has(Present::UPGRADE)
        && !(present.has(Present::CONNECTION) && has_close_token(req.headers()))
}

fn has_close_token(headers: &hyper::HeaderMap) -> bool {
    has_token(headers, &header::CONNECTION, "close")
}

/// Whether a response asks to close the connection after it. Most carry no `Connection` (a
/// backend's goes as hop-by-hop): a look along the names, where comparing a standard name is
/// one integer compare, costs less than the lookup, which hashes the name and probes (86
/// instructions a request less; callgrind).
pub(super) fn response_closes(headers: &hyper::HeaderMap) -> bool {
    headers.keys().any(|name| *name == header::CONNECTION) && has_close_token(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_in_the_idle_lot_stays_small() {
        // With its socket (4 bytes) and deadline (16), a slot of 112 bytes in the lot: what
        // the lot's docs and the idle-memory figures count on.
        assert_eq!(std::mem::size_of::<Waiting>(), 88);
    }
}
