//! The HTTP listener: accept loop and one task per client connection.
//!
//! Each connection is opened (`open`: sniffed for HTTP/1 or HTTP/2 prior knowledge, or on an
//! https listener its TLS handshake, the protocol then from ALPN, all under the header
//! timeout); then it is served by hyper (HTTP/1 through `http1`, which parks it while idle)
//! and watched for the header and keep-alive timeouts. Each request
//! is checked (`validate`), routed (`router`) and forwarded (`upstream`). On shutdown, or when
//! a reload removes the listener, every connection is asked to finish gracefully: HTTP/1
//! closes once its request in progress is done (at once if idle), HTTP/2 sends GOAWAY and
//! finishes open streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessRecord;
use crate::config::{ListenerConfig, defaults};
use crate::error::{ProxyError, local_response};
use crate::metrics::ListenerMetrics;
use crate::state::SharedState;
use crate::upstream::{Peer, ProxyBody, Route, forward};

use super::activity::{ActiveRequest, ConnActivity, RequestEnd};
use super::bind::accept_queue_len;
use super::drive::drive;
use super::http1::{ends_cleanly, has_close_token, serve_http1};
use super::io::{ClientIo, Protocol};
use super::open::open;
use super::sockets::Described;
use super::tcp::serve_tcp;
use super::validate::{self, Verdict};

/// What every connection of one listener shares.
#[derive(Debug, Clone)]
pub(super) struct ListenerCtx {
    pub(super) name: Arc<str>,
    pub(super) state: SharedState,
    /// Cancelled when the connections are to finish gracefully (shutdown, listener removed).
    pub(super) shutdown: CancellationToken,
    /// Cancelled when the connections still open after the drain timeout are to be closed.
    pub(super) kill: CancellationToken,
    /// Every listener's bound addresses (a redirect to https names the https port).
    described: Described,
    metrics: Arc<ListenerMetrics>,
}

/// How one accept loop and its connections are told to stop.
#[derive(Debug, Clone)]
pub struct ListenerStops {
    /// Stops accepting on this socket.
    pub accept: CancellationToken,
    /// Asks this listener's connections to finish gracefully.
    pub drain: CancellationToken,
    /// Closes this listener's remaining connections at once.
    pub kill: CancellationToken,
}

/// The connection budget of one listener, shared by all its listen sockets.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    limit: Arc<AtomicUsize>,
}

impl ConnectionLimit {
    pub fn new(limit: usize) -> Self {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(limit)),
            limit: Arc::new(AtomicUsize::new(limit)),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Client connections open on the listener now.
    pub fn open(&self) -> usize {
        self.limit().saturating_sub(self.slots.available_permits())
    }

    /// A reload changed `max_connections`: open connections stay; a lower limit takes effect
    /// as they close.
    pub fn set_limit(&self, new: usize) {
        let old = self.limit.swap(new, Ordering::Relaxed);
        if new > old {
            self.slots.add_permits(new - old);
        } else if new < old {
            let owed = (old - new) - self.slots.forget_permits(old - new);
            if let Ok(owed) = u32::try_from(owed)
                && owed > 0
            {
                // The rest are held by open connections: take them as those close.
                let slots = Arc::clone(&self.slots);
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many_owned(owed).await {
                        permits.forget();
                    }
                });
            }
        }
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled; connections are spawned on
/// `tracker` so the caller can wait for them to drain.
pub async fn serve_listener(
    listener: TcpListener,
    name: Arc<str>,
    state: SharedState,
    limit: ConnectionLimit,
    stops: ListenerStops,
    tracker: TaskTracker,
    described: Described,
) {
    let ctx = Arc::new(ListenerCtx {
        described,
        metrics: Arc::new(ListenerMetrics::new(&name)),
        name,
        state,
        shutdown: stops.drain,
        kill: stops.kill,
    });
    let accept_stop = stops.accept;
    loop {
        let Some(slot) = connection_slot(&limit, &listener, &ctx.name, &accept_stop).await else {
            break;
        };
        let accepted = tokio::select! {
            _ = accept_stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
                }
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                let ctx = Arc::clone(&ctx);
                ctx.metrics.connections_total.increment(1);
                ctx.metrics.connections_open.increment(1.0);
                tracker.spawn(async move {
                    // The protocol is read per connection: a reload may change it.
                    let tcp = ctx
                        .state
                        .load()
                        .listener(&ctx.name)
                        .and_then(|l| l.settings.tcp);
                    match tcp {
                        // Boxed, as below: a connection's task is as large as the largest
                        // thing it ever awaits inline, for its whole life.
                        Some(settings) => Box::pin(serve_tcp(stream, peer, &ctx, settings)).await,
                        None => serve_connection(stream, peer, Arc::clone(&ctx)).await,
                    }
                    ctx.metrics.connections_open.decrement(1.0);
                    drop(slot);
                });
            }
            Err(e) => {
                // Usually EMFILE/ENFILE or a connection reset before accept: keep serving, but
                // give the system a moment rather than spinning on the error.
                tracing::error!(listener = %ctx.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!(listener = %ctx.name, "stopped accepting");
}

/// Waits for a free connection slot. While the listener is at `max_connections`, it stops
/// accepting (new connections wait in the kernel's accept queue) and says so in the log, with
/// how many are waiting, every few seconds. `None` on shutdown.
async fn connection_slot(
    limit: &ConnectionLimit,
    listener: &TcpListener,
    name: &str,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = Arc::clone(&limit.slots).try_acquire_owned() {
        return Some(slot);
    }
    let since = tokio::time::Instant::now();
    let addr = listener.local_addr().ok();
    loop {
        let waiting = addr.and_then(accept_queue_len);
        tracing::warn!(
            listener = %name,
            limit = limit.limit(),
            waiting = waiting.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
            "connection limit reached; new connections wait in the accept queue"
        );
        tokio::select! {
            _ = stop.cancelled() => return None,
            slot = Arc::clone(&limit.slots).acquire_owned() => {
                tracing::info!(listener = %name, waited = ?since.elapsed(), "below the connection limit again; accepting");
                return slot.ok();
            }
            _ = tokio::time::sleep(LIMIT_LOG_INTERVAL) => {}
        }
    }
}

const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<ListenerCtx>) {
    // Only what the connection needs of its listener's settings is kept: it may stay open for
    // long, and everything its task holds across an await is memory for all that time.
    let (tls, h1, h2, header_timeout, keepalive, send_timeout) = {
        let snapshot = ctx.state.load();
        let Some(l) = snapshot.listener(&ctx.name) else {
            return;
        };
        let s = &l.settings;
        (
            l.tls.clone(),
            http1_builder(s),
            http2_builder(s),
            s.header_timeout,
            s.keepalive_timeout,
            s.send_timeout,
        )
    };
    // Boxed: freed once the protocol is known (a TLS handshake's state is large).
    let Some((stream, proto, prefix)) =
        Box::pin(open(stream, tls, header_timeout, &ctx, peer)).await
    else {
        return;
    };
    let over_tls = matches!(stream, Either::Right(_));
    let activity = ConnActivity::new();
    let io = TokioIo::new(ClientIo::new(
        stream,
        prefix,
        Arc::clone(&activity),
        proto,
        send_timeout,
    ));
    let service = {
        let ctx = Arc::clone(&ctx);
        let activity = Arc::clone(&activity);
        service_fn(move |req: Request<Incoming>| {
            let ctx = Arc::clone(&ctx);
            // Begun when hyper hands the request over, not when its future first runs: a read
            // that could park the connection (see `http1`) must find it busy in between.
            let active = activity.begin();
            let head_flags = activity.take_head_flags();
            let parkable = ends_cleanly(&req);
            let activity = Arc::clone(&activity);
            async move {
                // Boxed: answering takes a future of about 5 KB, which hyper would otherwise
                // keep in every connection's state and move whole; a box is one allocation
                // per request, from memory the allocator just freed and the cache still holds.
                let resp = Box::pin(answer(&ctx, active, head_flags, peer, over_tls, req)).await;
                activity.set_parkable(parkable && !has_close_token(resp.headers()));
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let watchdog = activity.watch(header_timeout, keepalive, proto == Protocol::Http1);
    tokio::pin!(watchdog);
    match proto {
        Protocol::Http1 => {
            drop(h2);
            serve_http1(&h1, io, service, watchdog, &ctx, peer).await;
        }
        Protocol::Http2 => {
            let mut conn = Box::pin(h2.serve_connection(io, service));
            drive(
                conn.as_mut(),
                |c| c.graceful_shutdown(),
                watchdog,
                &ctx,
                peer,
            )
            .await;
        }
    }
}

fn http1_builder(settings: &ListenerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // rproxy's watchdog enforces the header timeout (see `activity`).
        .header_read_timeout(None)
        .max_header_size(settings.limits.max_header_size);
    if settings.limits.max_headers != defaults::MAX_HEADERS {
        // Only when changed: hyper then parses headers on the heap, a little slower.
        builder.max_headers(settings.limits.max_headers);
    }
    builder
}

/// HTTP/2 limits, chosen rather than inherited: a client gets at most
/// `http2_max_concurrent_streams` requests in flight per connection, flow-control windows
/// large enough for a fast download without letting one connection buffer much, a header
/// list no larger than an HTTP/1 head may be, and a small budget of streams reset before they
/// were served or failed by rproxy (rapid-reset floods end with GOAWAY).
fn http2_builder(settings: &ListenerConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(settings.limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    builder
}

pub(crate) const H2_STREAM_WINDOW: u32 = 256 * 1024;
pub(crate) const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
pub(crate) const H2_MAX_PENDING_RESETS: usize = 20;
pub(crate) const H2_MAX_LOCAL_RESETS: usize = 256;

/// Validates, routes and forwards one request, or answers it locally.
async fn answer(
    ctx: &ListenerCtx,
    active: ActiveRequest,
    head_flags: u8,
    peer: SocketAddr,
    over_tls: bool,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let end = RequestEnd::new(active, Arc::clone(&ctx.metrics));
    let snapshot = ctx.state.load_full();
    let Some(listener) = snapshot.listener(&ctx.name) else {
        let (head, body) = ProxyError::NoBackend.response().into_parts();
        let status = head.status.as_u16();
        return Response::from_parts(head, body.finish_with(None, end, status));
    };
    let (mut parts, body) = req.into_parts();
    let answer = match validate::check(&mut parts, &listener.settings.limits, head_flags) {
        Verdict::Forward if listener.settings.redirect_https => {
            super::redirect::to_https(&parts, &snapshot, &ctx.described.load())
        }
        Verdict::Forward => {
            let host = parts
                .uri
                .host()
                .or_else(|| parts.headers.get(header::HOST)?.to_str().ok());
            match listener.routes.lookup(host, parts.uri.path()) {
                Some(target) => {
                    let peer = Peer {
                        addr: peer,
                        proto: if over_tls { "https" } else { "http" },
                    };
                    let req = Request::from_parts(parts, body);
                    let route = Route {
                        listener,
                        pool: target.to,
                        strip_prefix: target.strip,
                    };
                    return forward(route, &snapshot.trusted_proxies, peer, req, end).await;
                }
                None => {
                    tracing::debug!(client = %peer, host = ?host, path = parts.uri.path(), "no route");
                    ProxyError::NoRoute.response()
                }
            }
        }
        Verdict::ServerOptions => {
            let mut resp = local_response(StatusCode::OK, false);
            resp.headers_mut()
                .insert(header::ALLOW, validate::SERVER_ALLOW);
            resp
        }
        Verdict::Reject(r) => {
            tracing::info!(client = %peer, method = %parts.method, status = r.status.as_u16(), reason = r.reason, "request refused");
            local_response(r.status, r.close)
        }
    };
    let log = AccessRecord::start(&listener.name, peer.ip(), &parts);
    let (head, body) = answer.into_parts();
    let status = head.status.as_u16();
    Response::from_parts(head, body.finish_with(log, end, status))
}
