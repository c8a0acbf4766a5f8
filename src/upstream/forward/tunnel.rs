//! WebSockets: an HTTP/1.1 `Upgrade: websocket` request is forwarded with its upgrade headers,
//! balanced (and pinned by a sticky cookie) like any request; once the backend answers `101`,
//! rproxy answers the client `101` and copies bytes both ways until either side closes or the
//! tunnel is idle for the upstream's `websocket_idle_timeout`.
//!
//! The tunnel runs in its own task, holding the backend's in-flight count while it is open
//! (so `least_conn` sees long-lived sockets). It belongs to no snapshot: a reload never closes
//! it. At shutdown (SIGTERM, or a binary upgrade's old process) tunnels run on until the drain
//! timeout, then each side gets a close frame (1001, going away) between two frames
//! (`ws_frames.rs`), as a WebSocket server going down sends one, not a bare reset.

use std::sync::LazyLock;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::header_text::has_token;
use crate::upstream::pool::InFlightGuard;

use super::headers::Present;
use super::ws_frames::{CLOSE_TO_CLIENT, Frames, close_to_backend};

const BUFFER: usize = 16 * 1024;

/// How long a tunnel told to close may take to reach a frame boundary each way and see its
/// peers answer the close frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The open tunnels of the process. One set for the process, not per listener or snapshot: a
/// tunnel outlives the connection that opened it (hyper hands its socket over) and every
/// reload, and only the shutdown drain asks for them.
pub struct Tunnels {
    tasks: TaskTracker,
    close: CancellationToken,
}

static TUNNELS: LazyLock<Tunnels> = LazyLock::new(|| Tunnels {
    tasks: TaskTracker::new(),
    close: CancellationToken::new(),
});

/// The process's open WebSocket tunnels.
pub fn tunnels() -> &'static Tunnels {
    &TUNNELS
}

impl Tunnels {
    /// How many are open.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Resolves once every tunnel has ended; tunnels opened meanwhile count too.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Ends every tunnel with a close frame each way (see the module's doc); `wait` then
    /// resolves within about [`CLOSE_GRACE`].
    pub fn close_all(&self) {
        self.close.cancel();
    }
}

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
    let close = TUNNELS.close.clone();
    TUNNELS.tasks.spawn(async move {
        let (client, backend) = match tokio::join!(client, backend) {
            (Ok(c), Ok(b)) => (TokioIo::new(c), TokioIo::new(b)),
            (c, b) => {
                tracing::debug!(backend = %label, client_ok = c.is_ok(), backend_ok = b.is_ok(), "upgrade did not complete");
                return;
            }
        };
        match pump(client, backend, idle, close).await {
            End::Closed => tracing::debug!(backend = %label, "websocket closed"),
            End::Idle => {
                tracing::info!(backend = %label, ?idle, "websocket idle for websocket_idle_timeout; closed");
            }
            End::Shutdown => {
                tracing::info!(backend = %label, "websocket closed at shutdown (drain timeout)");
            }
        }
        drop(in_flight);
    });
}

enum End {
    Closed,
    Idle,
    /// Closed by rproxy at shutdown.
    Shutdown,
}

/// Copies both ways; ends both sides when either closes, fails, or both are idle for `idle`.
/// Once `close` is cancelled, each direction is copied only to the end of its current frame,
/// then gets a close frame and no more; the peers' answers are read and dropped.
async fn pump<C, B>(client: C, backend: B, idle: Duration, close: CancellationToken) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let (mut up, mut down) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
    // Frames are counted all along: when a close comes, each direction must know where its
    // current frame ends (a few operations per frame, none per payload byte).
    let (mut up_frames, mut down_frames) = (Frames::default(), Frames::default());
    let (mut closing, mut up_closed, mut down_closed) = (false, false, false);
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    let end = loop {
        if closing {
            if !down_closed && down_frames.at_boundary() {
                down_closed = true;
                if client_write.write_all(&CLOSE_TO_CLIENT).await.is_err() {
                    break End::Shutdown;
                }
            }
            if !up_closed && up_frames.at_boundary() {
                up_closed = true;
                if backend_write.write_all(&close_to_backend()).await.is_err() {
                    break End::Shutdown;
                }
            }
            if up_closed && down_closed {
                let _ = tokio::join!(client_write.shutdown(), backend_write.shutdown());
                // Read (and drop) the answers to the close frames until both peers close, so
                // that nothing arrives at a closed socket (which answers with a reset).
                let (mut client_sink, mut backend_sink) = (tokio::io::sink(), tokio::io::sink());
                let drained = async {
                    let _ = tokio::join!(
                        tokio::io::copy(&mut client_read, &mut client_sink),
                        tokio::io::copy(&mut backend_read, &mut backend_sink)
                    );
                };
                let _ = tokio::time::timeout_at(deadline.deadline(), drained).await;
                return End::Shutdown;
            }
        }
        let up_room = if closing {
            up_frames.to_boundary(BUFFER)
        } else {
            BUFFER
        };
        let down_room = if closing {
            down_frames.to_boundary(BUFFER)
        } else {
            BUFFER
        };
        let moved = tokio::select! {
            n = client_read.read(&mut up[..up_room]), if !up_closed => match n {
                Ok(n) if n > 0 => {
                    up_frames.feed(&up[..n]);
                    backend_write.write_all(&up[..n]).await.is_ok()
                }
                _ => false,
            },
            n = backend_read.read(&mut down[..down_room]), if !down_closed => match n {
                Ok(n) if n > 0 => {
                    down_frames.feed(&down[..n]);
                    client_write.write_all(&down[..n]).await.is_ok()
                }
                _ => false,
            },
            () = &mut deadline => break if closing { End::Shutdown } else { End::Idle },
            () = close.cancelled(), if !closing => {
                closing = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                continue;
            }
        };
        if !moved {
            break End::Closed;
        }
        if !closing {
            deadline.as_mut().reset(tokio::time::Instant::now() + idle);
        }
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
        let tunnel = tokio::spawn(pump(
            client,
            backend,
            Duration::from_secs(60),
            CancellationToken::new(),
        ));
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
        let tunnel = tokio::spawn(pump(
            client,
            backend,
            Duration::from_secs(30),
            CancellationToken::new(),
        ));
        tokio::time::advance(Duration::from_secs(20)).await;
        client_peer.write_all(b"x").await.expect("write");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!tunnel.is_finished(), "activity 20s ago keeps it open");
        let end = tunnel.await.expect("join");
        assert!(matches!(end, End::Idle));
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.expect("closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_waits_for_the_frame_in_progress_then_sends_close_frames() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, mut backend_peer) = tokio::io::duplex(1024);
        let close = CancellationToken::new();
        let tunnel = tokio::spawn(pump(
            client,
            backend,
            Duration::from_secs(300),
            close.clone(),
        ));
        // Half a masked 4-byte frame from the client, then the close.
        let frame = [0x82, 0x84, 1, 2, 3, 4, 10, 20, 30, 40];
        client_peer.write_all(&frame[..7]).await.expect("write");
        let mut buf = [0u8; 7];
        backend_peer.read_exact(&mut buf).await.expect("read");
        close.cancel();
        // The server side is at a boundary: the client gets its close frame at once.
        let mut closing = [0u8; 4];
        client_peer
            .read_exact(&mut closing)
            .await
            .expect("close frame");
        assert_eq!(closing, CLOSE_TO_CLIENT);
        // The rest of the client's frame still goes through, then the backend's close frame.
        client_peer.write_all(&frame[7..]).await.expect("write");
        let mut rest = [0u8; 3 + 8];
        backend_peer
            .read_exact(&mut rest)
            .await
            .expect("rest and close");
        assert_eq!(&rest[..3], &frame[7..]);
        assert_eq!(&rest[3..5], &[0x88, 0x82]);
        drop((client_peer, backend_peer));
        assert!(matches!(tunnel.await.expect("join"), End::Shutdown));
    }
}
