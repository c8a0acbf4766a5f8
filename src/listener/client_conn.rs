//! What one client connection keeps for its whole life, and how a hyper connection is built
//! from it.
//!
//! Made by `http::open_client` once the protocol is known (and again by `http1::resume` for a
//! connection the idle lot gives back); used by `http1` (once per hyper connection, as an idle
//! connection is parked and resumed) and by HTTP/2. It is kept small: while a TLS HTTP/1
//! connection is parked in its task, this and the socket are nearly all it holds. A reload
//! changes only new connections, so the settings are copied in at accept time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::OwnedSemaphorePermit;

use super::client_body::ClientBody;
use crate::config::{ListenerConfig, defaults};
use crate::metrics::ListenerMetrics;
use crate::upstream::Present;

use super::activity::{ConnActivity, Expiry};
use super::http::{HeadFacts, ListenerCtx, answer};
use super::http1::{ends_cleanly, response_closes};
use super::io::ClientStream;
use super::io::{ClientIo, Protocol};

/// The listener settings a connection is served with. Compact, since every open connection
/// keeps a copy: times in milliseconds (at least 1; the config allows at most 49 days, which
/// fits) and limits as `u32` or `u16`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnSettings {
    header_timeout_ms: u32,
    keepalive_ms: u32,
    send_timeout_ms: u32,
    max_header_size: u32,
    // Both at most 65 534 by the config's bounds (10 000 and 65 534); `u16` keeps the
    // settings, and so a parked connection, as small as before `max_uri_length` came in.
    max_headers: u16,
    max_uri_length: u16,
    http2_max_concurrent_streams: u32,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

fn capped(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn capped_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl ConnSettings {
    pub(super) fn of(settings: &ListenerConfig) -> Self {
        ConnSettings {
            header_timeout_ms: millis(settings.header_timeout),
            keepalive_ms: millis(settings.keepalive_timeout),
            send_timeout_ms: millis(settings.send_timeout),
            max_header_size: capped(settings.limits.max_header_size),
            max_headers: capped_u16(settings.limits.max_headers),
            max_uri_length: capped_u16(settings.limits.max_uri_length),
            http2_max_concurrent_streams: settings.http2_max_concurrent_streams,
        }
    }

    pub(super) fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms.into())
    }

    fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms.into())
    }

    fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms.into())
    }

    pub(super) fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(true)
            // rproxy's watchdog enforces the header timeout (see `activity`).
            .header_read_timeout(None)
            .max_header_size(self.max_header_size as usize);
        if self.max_headers as usize != defaults::MAX_HEADERS {
            // Only when changed: hyper then parses headers on the heap, a little slower.
            builder.max_headers(self.max_headers as usize);
        }
        builder
    }

    /// HTTP/2 limits, chosen rather than inherited: a client gets at most
    /// `http2_max_concurrent_streams` requests in flight per connection, flow-control windows
    /// large enough for a fast download without letting one connection buffer much, a header
    /// list no larger than an HTTP/1 head may be, and a small budget of streams reset before
    /// they were served or failed by rproxy (rapid-reset floods end with GOAWAY).
    pub(super) fn http2(&self) -> http2::Builder<TokioExecutor> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_header_list_size(self.max_header_size)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
        builder
    }
}

const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_RESETS: usize = 256;

/// A client connection's place in its listener's `max_connections` budget and open-connections
/// gauge, both given back when it is dropped: with the connection, wherever it then is (its
/// task, or the idle lot).
#[derive(Debug)]
pub(super) struct OpenConn {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<ListenerMetrics>,
}

impl OpenConn {
    /// Counts a connection just accepted into `slot`.
    pub(super) fn new(slot: OwnedSemaphorePermit, metrics: &Arc<ListenerMetrics>) -> Self {
        metrics.connections_total.increment(1);
        metrics.connections_open.increment(1.0);
        crate::heap_trim::opened();
        OpenConn {
            _slot: slot,
            metrics: Arc::clone(metrics),
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.metrics.connections_open.decrement(1.0);
        crate::heap_trim::closed();
    }
}

/// A client connection's socket and the bytes read from it that hyper is to read first.
pub(super) type Socket = (ClientStream, BytesMut);

/// One client connection's lasting state.
#[derive(Debug)]
pub(super) struct ClientConn {
    pub(super) ctx: Arc<ListenerCtx>,
    pub(super) peer: SocketAddr,
    pub(super) over_tls: bool,
    pub(super) protocol: Protocol,
    pub(super) activity: Arc<ConnActivity>,
    pub(super) settings: ConnSettings,
}

impl ClientConn {
    /// The stream hyper reads: `prefix` (bytes read already) first, then the socket.
    pub(super) fn io(&self, stream: ClientStream, prefix: BytesMut) -> TokioIo<ClientIo> {
        TokioIo::new(ClientIo::new(
            stream,
            prefix,
            Arc::clone(&self.activity),
            self.protocol,
            self.settings.send_timeout(),
            self.settings.max_uri_length as usize,
        ))
    }

    /// Resolves when the connection should be closed for a timeout (see `activity`).
    pub(super) fn watchdog(&self) -> impl Future<Output = Expiry> + '_ {
        self.activity.watch(
            self.settings.header_timeout(),
            self.settings.keepalive(),
            self.protocol == Protocol::Http1,
        )
    }

    /// When this connection, parked, is closed for keep-alive expiry.
    pub(super) fn keepalive_deadline(&self) -> tokio::time::Instant {
        self.activity.keepalive_deadline(self.settings.keepalive())
    }

    /// What hyper calls for each request.
    pub(super) fn service(
        &self,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<ClientBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Unpin
    + 'static {
        let ctx = Arc::clone(&self.ctx);
        let activity = Arc::clone(&self.activity);
        let (peer, over_tls) = (self.peer, self.over_tls);
        service_fn(move |req: Request<Incoming>| {
            let ctx = Arc::clone(&ctx);
            // Begun when hyper hands the request over, not when its future first runs: a read
            // that could park the connection (see `http1`) must find it busy in between.
            let active = activity.begin();
            // One pass over the header names, read here and again by `forward`.
            let head = HeadFacts {
                flags: activity.take_head_flags(),
                present: Present::of(req.headers()),
            };
            let parkable = ends_cleanly(&req, head.present);
            let activity = Arc::clone(&activity);
            let (parts, body) = req.into_parts();
            async move {
                // Boxed: answering takes a future of about 2.9 KB, which hyper would otherwise
                // keep in every connection's state and move whole; a box is one allocation
                // per request. The box is allocated first and the future written into it:
                // built on the stack and then moved into a box, all 2.9 KB were copied into
                // memory the cache did not hold (cachegrind: 34 L1 write misses a request).
                let slot = Box::new_uninit();
                let answering = Box::write(
                    slot,
                    answer(&ctx, active, head, peer, over_tls, parts, body),
                );
                let resp = Box::into_pin(answering).await;
                activity.set_parkable(parkable && !response_closes(resp.headers()));
                Ok::<_, Infallible>(resp)
            }
        })
    }
}
