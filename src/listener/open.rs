//! Opening a client connection: the TLS handshake on an https listener, or the sniff of the
//! first bytes on a plain one, to learn the protocol before hyper takes over.
//!
//! Called by `http::open_client` for each accepted connection; bounded by the
//! listener's header timeout and ended early by a shutdown, though not at once: a client that
//! has just connected is about to send its request (it was accepted before the listener
//! stopped, or by the old process of a binary upgrade just before it handed over), and a
//! close now would fail that request. It gets [`FIRST_REQUEST_GRACE`] to send it; the request
//! is then served with `Connection: close`, as on any connection busy at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::http::ListenerCtx;
use super::io::ClientStream;
use super::io::{Protocol, sniff};

/// How long a connection that has sent nothing yet may still start its first request once a
/// shutdown began.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The protocol: from ALPN over TLS (the handshake bounded by the header timeout), else from
/// the first bytes. `None` when the client left, failed or was too slow, or on shutdown.
pub(super) async fn open(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    header_timeout: Duration,
    ctx: &ListenerCtx,
    peer: SocketAddr,
) -> Option<(ClientStream, Protocol, BytesMut)> {
    let opened = async {
        match tls {
            Some(config) => {
                let tls = tokio_rustls::TlsAcceptor::from(config)
                    .accept(stream)
                    .await?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let proto = if h2 { Protocol::Http2 } else { Protocol::Http1 };
                Ok(Some((Either::Right(Box::new(tls)), proto, BytesMut::new())))
            }
            None => {
                let mut stream = stream;
                Ok(sniff(&mut stream)
                    .await?
                    .map(|(proto, prefix)| (Either::Left(stream), proto, prefix)))
            }
        }
    };
    let shutdown_grace = async {
        ctx.shutdown.cancelled().await;
        tokio::time::sleep(FIRST_REQUEST_GRACE).await;
    };
    let opened: std::io::Result<_> = tokio::select! {
        () = shutdown_grace => return None,
        opened = tokio::time::timeout(header_timeout, opened) => match opened {
            Ok(opened) => opened,
            Err(_) => {
                tracing::debug!(client = %peer, "no TLS handshake or request within the header timeout");
                return None;
            }
        },
    };
    opened.unwrap_or_else(|e| {
        tracing::debug!(client = %peer, error = %e, "client connection failed before a request");
        None
    })
}
