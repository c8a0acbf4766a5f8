//! A `protocol = "tcp"` listener's connection: read a PROXY header first when told to, then
//! hand the connection to the upstream side (`upstream::forward_stream`) and count it.
//!
//! TCP connections have no requests to finish: on shutdown or when a reload removes the
//! listener they go on until they end or the drain timeout closes them. A reload that keeps
//! the listener never touches them.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::config::{TcpSettings, defaults};
use crate::metrics::{TCP_BYTES_TOTAL, TCP_CONNECTIONS_OPEN};
use crate::upstream::forward_stream;

use super::http::ListenerCtx;
use super::proxy_protocol::read_header;

pub(super) async fn serve_tcp(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: &ListenerCtx,
    settings: TcpSettings,
) {
    let snapshot = ctx.state.load_full();
    let Some(pool) = snapshot
        .listener(&ctx.name)
        .and_then(|l| l.routes.lookup(None, "/"))
        .map(|target| &target.to.pool)
    else {
        return;
    };
    let local = stream.local_addr().unwrap_or(peer);
    let mut client = peer;
    if settings.accept_proxy_protocol {
        match read_header(&mut stream, defaults::HEADER_TIMEOUT).await {
            Ok(Some(addr)) => client = addr,
            Ok(None) => {}
            Err(e) => {
                tracing::info!(listener = %ctx.name, peer = %peer, error = %e, "bad or missing PROXY header; closing");
                return;
            }
        }
    }
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
    }
    let open = metrics::gauge!(TCP_CONNECTIONS_OPEN, "listener" => ctx.name.to_string());
    // Taken now, not when the connection ends: one that outlives a reload removing its
    // listener then counts into series already gone from /metrics instead of bringing them back.
    let [up, down] = ["up", "down"].map(|direction| {
        metrics::counter!(TCP_BYTES_TOTAL, "listener" => ctx.name.to_string(), "direction" => direction)
    });
    open.increment(1.0);
    tokio::select! {
        totals = forward_stream(pool, &settings, &ctx.name, stream, client, local) => {
            up.increment(totals.up);
            down.increment(totals.down);
        }
        () = ctx.kill.cancelled() => {
            tracing::debug!(listener = %ctx.name, client = %client, "drain timeout of a removed listener; closing");
        }
    }
    open.decrement(1.0);
}
