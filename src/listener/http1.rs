//! Serving one HTTP/1 client connection, parking it while it is idle.
//!
//! Called by `http::serve_connection` once the protocol is known. A keep-alive connection
//! spends most of its life waiting for the next request, and a hyper connection holds about
//! 16 KB of buffers all along. So when a response is flushed and nothing more has arrived for
//! a moment, the connection is parked (see `io`): hyper's connection ends without closing the
//! socket, and rproxy waits for the socket to become readable holding little more than the
//! socket and the watchdog. The next request gets a new hyper connection on the same socket.
//! Bytes hyper had read but not used (the start of a pipelined request) are replayed to it.
//!
//! While parked the connection obeys the same rules as inside hyper: the keep-alive timeout
//! closes it, a graceful shutdown closes it at once (it is idle), the drain timeout kills it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;

use crate::upstream::{ProxyBody, has_token};

use super::activity::Expiry;
use super::drive::{Driven, drive};
use super::http::ListenerCtx;
use super::io::ClientIo;

/// Serves requests on `io` until the client closes, a timeout expires or rproxy shuts down.
pub(super) async fn serve_http1<S, W>(
    builder: &http1::Builder,
    mut io: TokioIo<ClientIo>,
    service: S,
    mut watchdog: Pin<&mut W>,
    ctx: &ListenerCtx,
    peer: SocketAddr,
) where
    S: HttpService<Incoming, ResBody = ProxyBody> + Clone + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    W: Future<Output = Expiry>,
{
    loop {
        // The hyper connection and its driver are boxed together, so that parking frees them:
        // they are most of what a connection costs. With upgrades: a WebSocket's connection
        // leaves hyper for its tunnel.
        let served = Box::pin(async {
            let mut conn = builder
                .serve_connection(io, service.clone())
                .with_upgrades();
            let driven = drive(
                Pin::new(&mut conn),
                |c| c.graceful_shutdown(),
                watchdog.as_mut(),
                ctx,
                peer,
            )
            .await;
            // `None` after an upgrade: the tunnel owns the socket now.
            (driven == Driven::Finished)
                .then(|| conn.into_parts())
                .flatten()
        })
        .await;
        let Some(parts) = served else {
            return;
        };
        io = parts.io;
        if !io.inner().parked() {
            return; // the client closed
        }
        io.inner_mut().resume(parts.read_buf);
        if io.inner().has_unread() {
            continue;
        }
        // Polled by hand rather than with `select!`: this is what a parked connection holds
        // while it waits, so it is kept small.
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        let readable = std::future::poll_fn(|cx| {
            // Idle: a graceful shutdown closes it now, as hyper would (and the drain timeout,
            // which only follows a graceful shutdown, has nothing left to do). Either
            // watchdog expiry closes an idle connection.
            if shutdown.as_mut().poll(cx).is_ready() || watchdog.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(false));
            }
            io.inner().poll_read_ready(cx).map_ok(|()| true)
        })
        .await;
        match readable {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "idle client connection failed");
                return;
            }
        }
    }
}

/// Whether, once answered, `req` leaves its HTTP/1 connection at a known message boundary
/// with nothing of it left unread, and open: then the connection may be parked while idle.
/// A request with a body might not be read to its end (a refused upload), and hyper would
/// then drain or close; an upgrade hands the socket over.
pub(super) fn ends_cleanly(req: &Request<Incoming>) -> bool {
    use hyper::body::Body;
    req.version() == hyper::Version::HTTP_11
        && req.body().is_end_stream()
        && !req.headers().contains_key(header::UPGRADE)
        && !has_close_token(req.headers())
}

pub(super) fn has_close_token(headers: &hyper::HeaderMap) -> bool {
    has_token(headers, &header::CONNECTION, "close")
}
