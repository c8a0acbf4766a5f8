//! WebSockets: an HTTP/1.1 `Upgrade: websocket` request is forwarded with its upgrade headers,
//! balanced (and pinned by a sticky cookie) like any request; once the backend answers `101`,
//! rproxy answers the client `101` and copies bytes both ways until either side closes or the
//! tunnel is idle for the upstream's `websocket_idle_timeout`.
//!
//! The tunnel runs in its own task, holding the backend's in-flight count while it is open
//! (so `least_conn` sees long-lived sockets). It belongs to no snapshot: a reload never closes
//! it.

use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::header_text::has_token;
use crate::upstream::pool::InFlightGuard;

use super::headers::Present;

const BUFFER: usize = 16 * 1024;

/// Whether the client asks for a WebSocket: an HTTP/1.1 GET with `Upgrade: websocket` and
/// `Connection: upgrade`. Other upgrades (h2c, TLS) are not tunnelled.
pub(super) fn requested(parts: &Parts, present: Present) -> bool {
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && present.has(Present::UPGRADE)
        && has_token(&parts.headers, &header::UPGRADE, "websocket")
        && has_token(&parts.headers, &header::CONNECTION, "upgrade")
}

/// Puts back the two hop-by-hop headers an upgrade needs, after the hop-by-hop cleanup.
pub(super) fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Once both sides have switched protocols, copies between them until one closes or nothing
/// moves for `idle`. `in_flight` is released when the tunnel ends.
pub(super) fn spawn(
    client: OnUpgrade,
    backend: OnUpgrade,
    idle: Duration,
    in_flight: InFlightGuard,
    label: String,
) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::join!(client, backend) {
            (Ok(c), Ok(b)) => (TokioIo::new(c), TokioIo::new(b)),
            (c, b) => {
                tracing::debug!(backend = %label, client_ok = c.is_ok(), backend_ok = b.is_ok(), "upgrade did not complete");
                return;
            }
        };
        match pump(client, backend, idle).await {
            End::Closed => tracing::debug!(backend = %label, "websocket closed"),
            End::Idle => {
                tracing::info!(backend = %label, ?idle, "websocket idle for websocket_idle_timeout; closed");
            }
        }
        drop(in_flight);
    });
}

enum End {
    Closed,
    Idle,
}

/// Copies both ways; ends both sides when either closes, fails, or both are idle for `idle`.
async fn pump<C, B>(client: C, backend: B, idle: Duration) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let (mut up, mut down) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    let end = loop {
        let moved = tokio::select! {
            n = client_read.read(&mut up) => match n {
                Ok(n) if n > 0 => backend_write.write_all(&up[..n]).await.is_ok(),
                _ => false,
            },
            n = backend_read.read(&mut down) => match n {
                Ok(n) if n > 0 => client_write.write_all(&down[..n]).await.is_ok(),
                _ => false,
            },
            () = &mut deadline => break End::Idle,
        };
        if !moved {
            break End::Closed;
        }
        deadline.as_mut().reset(tokio::time::Instant::now() + idle);
    };
    let _ = tokio::join!(client_write.shutdown(), backend_write.shutdown());
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_until_one_side_closes() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, mut backend_peer) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(pump(client, backend, Duration::from_secs(60)));
        client_peer.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        backend_peer.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        backend_peer.write_all(b"pong").await.expect("write");
        client_peer.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
        drop(client_peer);
        assert!(matches!(tunnel.await.expect("join"), End::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, _backend_peer) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(pump(client, backend, Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(20)).await;
        client_peer.write_all(b"x").await.expect("write");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!tunnel.is_finished(), "activity 20s ago keeps it open");
        let end = tunnel.await.expect("join");
        assert!(matches!(end, End::Idle));
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.expect("closed");
    }
}
