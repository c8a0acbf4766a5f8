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

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use hyper::body::Incoming;
use hyper::{Response, StatusCode, header};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessRecord;
use crate::error::ProxyError;
use crate::limit::Admitted;
use crate::metrics::ListenerMetrics;
use crate::state::{ConnectionLimit, SharedState};
use crate::upstream::{
    ClientScheme, Forwarded, Peer, Present, Route, client_address, error_response, forward,
    local_response,
};

use super::activity::{ActiveRequest, ConnActivity, RequestEnd};
use super::bind::accept_queue_len;
use super::client_body::ClientBody;
use super::client_conn::{ClientConn, ConnSettings, OpenConn, Socket};
use super::drive::drive;
use super::http1::{Lot, serve_http1};
use super::io::Protocol;
use super::open::open;
use super::tcp::serve_tcp;
use super::validate::{self, Verdict};

/// What every connection of one listener shares.
#[derive(Debug)]
pub(super) struct ListenerCtx {
    pub(super) name: Arc<str>,
    /// The port this accept loop's socket is bound to (`$server_port` in header rules).
    pub(super) port: u16,
    pub(super) state: SharedState,
    /// Cancelled when the connections are to finish gracefully (shutdown, listener removed).
    pub(super) shutdown: CancellationToken,
    /// Cancelled when the connections still open after the drain timeout are to be closed.
    pub(super) kill: CancellationToken,
    pub(super) metrics: Arc<ListenerMetrics>,
    /// Where idle plain-TCP HTTP/1 connections wait; `None` if it could not be started (they
    /// then wait in their tasks, as TLS ones do).
    pub(super) lot: Option<Arc<Lot>>,
}

impl ListenerCtx {
    /// A request head answered `status` before it was read whole (hyper's 400 and 431,
    /// rproxy's early 414; `bytes` of body): counted as a 4xx, and logged as nginx logs
    /// them, with `-` for the request.
    pub(super) fn head_refused(&self, peer: SocketAddr, status: u16, bytes: u64) {
        self.metrics.head_refused();
        if let Some(record) = AccessRecord::refused(&self.name, peer.ip(), status) {
            record.emit(bytes, true);
        }
    }
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

/// What holds a listener's connections: a task each while they are served (tracked, so that
/// shutdown can wait for them), the idle lot while they wait between requests.
#[derive(Debug, Clone)]
pub(super) struct ConnHolders {
    pub(super) tasks: TaskTracker,
    pub(super) idle_lot: Option<Arc<Lot>>,
}

/// Accepts connections on `listener` until `shutdown` is cancelled; connections are spawned on
/// `holders`' tracker so the caller can wait for them to drain.
pub(super) async fn serve_listener(
    listener: TcpListener,
    name: Arc<str>,
    state: SharedState,
    limit: ConnectionLimit,
    stops: ListenerStops,
    holders: ConnHolders,
) {
    let ctx = Arc::new(ListenerCtx {
        metrics: Arc::new(ListenerMetrics::new(&name)),
        port: listener.local_addr().map_or(0, |a| a.port()),
        name,
        state,
        shutdown: stops.drain,
        kill: stops.kill,
        lot: holders.idle_lot,
    });
    let accept_stop = stops.accept;
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = accept_stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // The slot is taken once there is a connection to hold it: several accept
                // loops share one budget (a listener's sockets, each on every worker), and a
                // loop that took a slot before a connection came would keep it from the loop
                // whose socket has one waiting.
                let Some(slot) = connection_slot(&limit, local, &ctx.name, &accept_stop).await
                else {
                    break;
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
                }
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                let open = OpenConn::new(slot, &ctx.metrics);
                let accepted = Box::new(Accepted { stream, peer, open });
                holders
                    .tasks
                    .spawn(serve_client(accepted, Arc::clone(&ctx)));
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

/// Waits for a free connection slot for a connection just accepted. While the listener is at
/// `max_connections`, its accept loop holds that one connection and accepts no more (new
/// connections wait in the kernel's accept queue), and says so in the log, with how many are
/// waiting there, every few seconds. `None` on shutdown.
async fn connection_slot(
    limit: &ConnectionLimit,
    addr: Option<SocketAddr>,
    name: &str,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Some(slot) = limit.try_slot() {
        return Some(slot);
    }
    let since = tokio::time::Instant::now();
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
            slot = limit.slot() => {
                tracing::info!(listener = %name, waited = ?since.elapsed(), "below the connection limit again; accepting");
                return slot;
            }
            _ = tokio::time::sleep(LIMIT_LOG_INTERVAL) => {}
        }
    }
}

const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A connection just accepted, with its slot in the listener's connection budget.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    open: OpenConn,
}

/// One client connection's task. `accepted` comes boxed, and an `async` block is returned
/// rather than written as an `async fn` (which would keep a second copy of its arguments): a
/// task is as large as everything its future may hold at once, for its whole life, and idle
/// HTTP/1 connections are many.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments (above)"
)]
fn serve_client(accepted: Box<Accepted>, ctx: Arc<ListenerCtx>) -> impl Future<Output = ()> + Send {
    async move {
        let Accepted { stream, peer, open } = *accepted;
        // The protocol is read per connection: a reload may change it.
        let tcp = ctx
            .state
            .load()
            .listener(&ctx.name)
            .and_then(|l| l.settings.tcp);
        match tcp {
            // Boxed, as below: raw TCP and HTTP/2 need more than parked HTTP/1 does.
            Some(settings) => Box::pin(serve_tcp(stream, peer, &ctx, settings)).await,
            None => 'http: {
                // `let else`, not `if let`: the value `if let` matches would be kept all along.
                let Some((conn, socket)) = Box::pin(open_client(stream, peer, &ctx)).await else {
                    break 'http;
                };
                match conn.protocol {
                    Protocol::Http1 => serve_http1(conn, socket, open).await,
                    Protocol::Http2 => Box::pin(serve_http2(&conn, socket)).await,
                }
            }
        }
    }
}

/// Opens a client connection (see `open`) with the settings its listener has now: only what
/// it needs of them is kept, since it may stay open for long. `None` when it ended before a
/// request could be read.
async fn open_client(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
) -> Option<(ClientConn, Socket)> {
    let (tls, settings) = {
        let snapshot = ctx.state.load();
        let l = snapshot.listener(&ctx.name)?;
        (l.tls.clone(), ConnSettings::of(&l.settings))
    };
    let (stream, protocol, prefix) =
        open(stream, tls, settings.header_timeout(), ctx, peer).await?;
    let conn = ClientConn {
        over_tls: matches!(stream, Either::Right(_)),
        ctx: Arc::clone(ctx),
        peer,
        protocol,
        activity: ConnActivity::new(),
        settings,
    };
    Some((conn, (stream, prefix)))
}

async fn serve_http2(conn: &ClientConn, (stream, prefix): Socket) {
    let watchdog = pin!(conn.watchdog());
    let hyper_conn = conn
        .settings
        .http2()
        .serve_connection(conn.io(stream, prefix), conn.service());
    drive(
        pin!(hyper_conn),
        |c| c.graceful_shutdown(),
        watchdog,
        &conn.ctx,
        conn.peer,
    )
    .await;
}

/// The host a request is for: the target's authority, else `Host`.
fn request_host(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .host()
        .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
}

/// What was learned of a request's head before it was taken apart: the raw scan's flags
/// (`head_scan`) and which of the headers rproxy acts on it carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadFacts {
    pub(super) flags: u8,
    pub(super) present: Present,
}

/// Validates, routes and forwards one request (`parts`, its head, with what `head` says of
/// it, and `body`), or answers it locally; the answer ends the request when its body is done
/// (see `ClientBody`).
///
/// An `async` block rather than an `async fn`, which would keep a second copy of the request
/// head: every request allocates this future and it is moved on the way.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments (above)"
)]
pub(super) fn answer(
    ctx: &ListenerCtx,
    active: ActiveRequest,
    head: HeadFacts,
    peer: SocketAddr,
    over_tls: bool,
    mut parts: Parts,
    body: Incoming,
) -> impl Future<Output = Response<ClientBody>> + Send + '_ {
    async move {
        let end = RequestEnd::new(active, &ctx.metrics);
        let snapshot = ctx.state.load_full();
        let Some(listener) = snapshot.listener(&ctx.name) else {
            return ClientBody::wrap(error_response(ProxyError::NoBackend), None, end, None);
        };
        // Started before forwarding, for the request's whole time; it records the head as the
        // client sent it.
        let mut log = AccessRecord::start(&listener.name, peer.ip(), &parts);
        let peer = Peer {
            addr: peer,
            scheme: if over_tls {
                ClientScheme::Https
            } else {
                ClientScheme::Http
            },
            server_port: ctx.port,
        };
        // Slots held under the limits' `conns` until the response body ends.
        let mut admitted = None;
        let mut answer = match validate::check(&mut parts, &listener.settings.limits, head.flags) {
            Verdict::Forward if listener.settings.redirect_https => {
                super::redirect::to_https(&parts, &snapshot)
            }
            Verdict::Forward => {
                // The host is looked up (a hash of `Host`) only for a table that routes by it.
                let host = if listener.routes.is_trivial() {
                    None
                } else {
                    request_host(&parts)
                };
                let target = listener.routes.lookup(host, parts.uri.path());
                let limits = target
                    .as_ref()
                    .map_or(&[][..], |t| listener.limits_for(t.route));
                let refused = if limits.is_empty() {
                    None
                } else {
                    // Boxed: only requests under limits carry this future.
                    let client =
                        client_address(&parts.headers, peer.addr, &snapshot.trusted_proxies);
                    match Box::pin(crate::limit::admit(limits, &parts, client)).await {
                        Ok(a) => {
                            admitted = Some(a).filter(Admitted::holds);
                            None
                        }
                        Err(refusal) => Some((refusal, client)),
                    }
                };
                match (target, refused) {
                    (Some(_), Some((refusal, client))) => {
                        tracing::debug!(%client, status = refusal.status.as_u16(), "request refused by a limit");
                        if let Some(log) = &mut log {
                            log.client = client;
                        }
                        refusal.response()
                    }
                    (Some(target), None) => {
                        let route = Route {
                            listener: &listener.settings,
                            pool: &target.to.pool,
                            strip_prefix: target.strip,
                            headers: target.to.headers.as_ref(),
                        };
                        let trusted = &snapshot.trusted_proxies;
                        let mut forwarded = Forwarded {
                            want_request_id: log.is_some(),
                            ..Forwarded::default()
                        };
                        let resp = forward(
                            route,
                            trusted,
                            peer,
                            head.present,
                            &mut parts,
                            body,
                            &mut forwarded,
                        )
                        .await;
                        if let Some(log) = &mut log {
                            if let Some(client) = forwarded.client_ip {
                                log.client = client;
                            }
                            log.request_id = forwarded.request_id;
                            log.backend = forwarded.backend.map(|b| Arc::clone(&b.addr_text));
                            log.upstream_time = forwarded.upstream_time;
                        }
                        // Wrapped here rather than after the `match`: one copy of the
                        // response less on the path most requests take (callgrind). `forward`
                        // applied the route's header rules (the listener's among them): not
                        // again below.
                        return ClientBody::wrap(resp, log, end, admitted);
                    }
                    (None, _) => {
                        tracing::debug!(client = %peer.addr, host = ?request_host(&parts), path = parts.uri.path(), "no route");
                        error_response(ProxyError::NoRoute)
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
                tracing::info!(client = %peer.addr, method = %parts.method, status = r.status.as_u16(), reason = r.reason, "request refused");
                local_response(r.status, r.close)
            }
        };
        // rproxy's own answer: the listener's header rules, those that apply to it.
        if let Some(plan) = &listener.headers {
            let status = answer.status();
            plan.local_answer(answer.headers_mut(), status, &parts, peer);
        }
        ClientBody::wrap(answer, log, end, admitted)
    }
}
