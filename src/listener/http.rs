//! The HTTP listener: accept loop and one task per client connection.
//!
//! Each connection is sniffed (HTTP/1 or HTTP/2 prior knowledge) under the header timeout,
//! served by hyper, and watched for the header and keep-alive timeouts. On shutdown every
//! connection is asked to finish gracefully: HTTP/1 closes once its request in progress is
//! done (at once if idle), HTTP/2 sends GOAWAY and finishes open streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ProxyError;
use crate::router;
use crate::state::SharedState;
use crate::upstream::{Peer, ProxyBody, forward};

use super::activity::{ConnActivity, Expiry};
use super::io::{ClientIo, Protocol, sniff};

/// What every connection of one listener shares.
#[derive(Debug, Clone)]
struct ListenerCtx {
    name: Arc<str>,
    state: SharedState,
    shutdown: CancellationToken,
}

/// Accepts connections on `listener` until `shutdown` is cancelled; connections are spawned on
/// `tracker` so the caller can wait for them to drain.
pub async fn serve_listener(
    listener: TcpListener,
    name: Arc<str>,
    state: SharedState,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let ctx = ListenerCtx {
        name,
        state,
        shutdown,
    };
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
                }
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                tracker.spawn(serve_connection(stream, peer, ctx.clone()));
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

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, ctx: ListenerCtx) {
    let (header_timeout, keepalive) = {
        let snapshot = ctx.state.load();
        let Some(l) = router::route(&snapshot, &ctx.name) else {
            return;
        };
        (l.header_timeout, l.keepalive_timeout)
    };
    let sniffed = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        sniffed = tokio::time::timeout(header_timeout, sniff(&mut stream)) => sniffed,
    };
    let (proto, prefix) = match sniffed {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "client connection failed before a request");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "client sent nothing within the header timeout");
            return;
        }
    };
    let activity = ConnActivity::new();
    let io = TokioIo::new(ClientIo::new(stream, prefix, Arc::clone(&activity)));
    let service = {
        let ctx = ctx.clone();
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let ctx = ctx.clone();
            let activity = Arc::clone(&activity);
            async move { Ok::<_, Infallible>(handle(&ctx, &activity, peer, req).await) }
        })
    };
    let watchdog = activity.watch(header_timeout, keepalive, proto == Protocol::Http1);
    match proto {
        Protocol::Http1 => {
            let conn = http1::Builder::new()
                .keep_alive(true)
                // rproxy's watchdog enforces the header timeout (see `activity`).
                .header_read_timeout(None)
                .serve_connection(io, service);
            drive(conn, watchdog, &ctx.shutdown, peer).await;
        }
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
            drive(conn, watchdog, &ctx.shutdown, peer).await;
        }
    }
}

async fn handle(
    ctx: &ListenerCtx,
    activity: &Arc<ConnActivity>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let active = activity.begin();
    let snapshot = ctx.state.load_full();
    let Some(listener) = router::route(&snapshot, &ctx.name) else {
        let resp = ProxyError::NoBackend.response();
        let (head, body) = resp.into_parts();
        return Response::from_parts(head, body.finish_with(None, active));
    };
    let peer = Peer {
        addr: peer,
        proto: "http",
    };
    forward(listener, &snapshot.trusted_proxies, peer, req, active).await
}

/// Runs a connection to its end, closing it gracefully on shutdown or keep-alive expiry and at
/// once when a request head times out.
async fn drive<C>(
    conn: C,
    watchdog: impl Future<Output = Expiry>,
    shutdown: &CancellationToken,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::pin!(watchdog);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            expiry = &mut watchdog, if !closing => match expiry {
                Expiry::Idle => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Expiry::HeaderTimeout => {
                    tracing::debug!(client = %peer, "request head not received within the header timeout; closing");
                    return;
                }
            },
        }
    }
}
