//! The client that carries requests to one pool's backends: HTTP/1.1, or HTTP/2 for an `h2`
//! pool, over plain TCP, TLS or a Unix socket, on connections kept in each backend's
//! `Keepalive`.
//!
//! Written on hyper's connection API rather than hyper-util's pooled client: that one found
//! each request's connection by hashing the URI's authority under a lock, boxed and moved
//! large futures, and spawned a task per request to give the connection back. Here the
//! backend already holds its own idle connections, and the response body gives its
//! connection back when it ends (see `Reuse`).
//!
//! One client per pool, so each pool's TLS settings apply to its own backends and connections
//! are never shared across trust settings. The idle timeout stays below the backend's own
//! keep-alive (Node.js: 5 s) so a pooled connection is normally closed by us first; when a
//! backend closes one anyway just before reuse, hyper gives the unsent request back and it
//! goes out on another connection.
//!
//! Imports `tls` and the ground floor; never `pool` or `forward`, which use it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::either::Either;

use crate::backend_socket::BackendSocket;
use crate::config::{BackendAddr, UpstreamConfig};

use crate::tls::BackendTls;

mod error;
mod fair_io;
mod keepalive;
mod request_body;
mod response_timer;

pub(crate) use error::UpstreamError;
use fair_io::UpstreamIo;
use keepalive::Sender;
pub(crate) use keepalive::{Keepalive, Reuse};
pub(crate) use request_body::{
    BodyError, BodyTimeout, ClientBodyFailure, RequestBodySlot, UpstreamRequestBody,
};
pub(crate) use response_timer::ResponseTimers;

/// What a pool's requests are sent with.
#[derive(Debug)]
pub(crate) struct UpstreamClient {
    h2: bool,
    connect_timeout: Duration,
    tls: Option<Arc<BackendTls>>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl UpstreamClient {
    pub(crate) fn new(config: &UpstreamConfig, tls: Option<Arc<BackendTls>>) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        UpstreamClient {
            h2: config.h2,
            connect_timeout: config.connect_timeout,
            tls,
            http1: http1::Builder::new(),
            http2,
        }
    }

    /// Sends `req` to the backend at `addr` on one of its kept-alive connections, or a new
    /// one. An HTTP/1 response comes with the connection, to give back once its body is read.
    ///
    /// One `async` block, not `async fn`s calling each other: each of those would keep its own
    /// copy of the request (360 bytes) in a future that every request allocates and moves.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would copy its arguments (above)"
    )]
    pub(crate) fn send<'a>(
        &'a self,
        addr: &'a BackendAddr,
        keepalive: &'a Arc<Keepalive>,
        mut req: Request<UpstreamRequestBody>,
        fresh: bool,
    ) -> impl Future<Output = Result<(Response<Incoming>, Option<Reuse>), UpstreamError>> + Send + 'a
    {
        async move {
            // Kept connections first. One the backend closed just now gives the request back
            // unsent, and the next one is tried. An HTTP/1 one leaves the cache when taken, so
            // that ends; a shared HTTP/2 one stays, and one that gave a request back without
            // yet reporting itself closed would be checked out again: after that, only a new
            // connection is tried.
            // `fresh`: a retry after a stale kept connection goes out on a new one.
            let mut use_kept = !fresh;
            loop {
                let kept = if use_kept { keepalive.checkout() } else { None };
                let (sender, new) = match kept {
                    Some(kept) => (kept, false),
                    // Boxed: connecting and the TLS handshake make a large future, and every
                    // request's future would carry (and move) that space if it were inline.
                    None => (Box::pin(self.open(addr, keepalive)).await?, true),
                };
                use_kept = matches!(sender, Sender::H1(_));
                let sent = match sender {
                    Sender::H1(mut sender) => match sender.ready().await {
                        Err(_) => Err(Unsent::Back(Box::new(req))),
                        Ok(()) => answered(sender.try_send_request(req).await)
                            .map(|resp| (resp, Some(Reuse::new(sender, keepalive)))),
                    },
                    Sender::H2(mut sender) => match sender.ready().await {
                        Err(_) => Err(Unsent::Back(Box::new(req))),
                        Ok(()) => answered(sender.try_send_request(req).await).map(|r| (r, None)),
                    },
                };
                match sent {
                    Ok(answer) => return Ok(answer),
                    Err(Unsent::Back(_)) if new => {
                        return Err(UpstreamError::connect(
                            addr,
                            io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "closed before the request",
                            ),
                        ));
                    }
                    Err(Unsent::Back(r)) => req = *r,
                    Err(Unsent::Failed(e)) if new => return Err(e.into()),
                    Err(Unsent::Failed(e)) => return Err(UpstreamError::on_kept_connection(e)),
                }
            }
        }
    }

    /// A new connection to `addr`, its hyper half running on a task of its own. An HTTP/2 one
    /// is kept at once, for other requests to share.
    async fn open(
        &self,
        addr: &BackendAddr,
        keepalive: &Arc<Keepalive>,
    ) -> Result<Sender, UpstreamError> {
        let io = self.connect(addr).await?;
        Ok(if self.h2 {
            let (sender, conn) = self.http2.handshake(io).await?;
            spawn_connection(conn);
            keepalive.put(Sender::H2(sender.clone()));
            Sender::H2(sender)
        } else {
            let (sender, conn) = self.http1.handshake(io).await?;
            // Upgrades: a WebSocket's 101 hands this connection over to the tunnel.
            spawn_connection(conn.with_upgrades());
            Sender::H1(sender)
        })
    }

    /// A new connection to `addr`: TCP (no delay, keep-alive probes), then TLS if the pool
    /// has it; or a Unix socket.
    async fn connect(&self, addr: &BackendAddr) -> Result<UpstreamIo, UpstreamError> {
        let failed = |source| UpstreamError::connect(addr, source);
        let socket = tokio::time::timeout(self.connect_timeout, BackendSocket::connect(addr))
            .await
            .map_err(|_| {
                failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                ))
            })?
            .map_err(failed)?;
        if let Some(tcp) = socket.tcp() {
            tcp.set_nodelay(true).map_err(failed)?;
            // Probes find a backend host that vanished while a connection sat idle.
            let probes = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            socket2::SockRef::from(tcp)
                .set_tcp_keepalive(&probes)
                .map_err(failed)?;
        }
        let stream = match &self.tls {
            Some(tls) => tls.connect(addr, socket).await.map_err(failed)?,
            None => Either::Left(socket),
        };
        Ok(UpstreamIo::new(stream))
    }
}

/// A request that did not get an answer: given back unsent, or failed.
enum Unsent {
    /// Boxed: the rare case, and a request head is large.
    Back(Box<Request<UpstreamRequestBody>>),
    Failed(hyper::Error),
}

/// hyper's answer to a sent request, either protocol: the response, or the request given back
/// unsent, or the failure.
fn answered(
    sent: Result<Response<Incoming>, TrySendError<Request<UpstreamRequestBody>>>,
) -> Result<Response<Incoming>, Unsent> {
    sent.map_err(|mut e| match e.take_message() {
        Some(req) => Unsent::Back(Box::new(req)),
        None => Unsent::Failed(e.into_error()),
    })
}

/// hyper's half of a connection, which reads and writes it, runs on its own task until the
/// connection closes.
fn spawn_connection<F>(conn: F)
where
    F: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
}
