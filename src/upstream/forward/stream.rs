//! Layer 4: one client TCP connection balanced to one backend connection, and bytes copied
//! both ways for the life of both (nginx's `stream`, HAProxy's `mode tcp`).
//!
//! Called by the listener for each connection of a `protocol = "tcp"` listener. A backend that
//! refuses or does not connect in time is skipped for the next one before any byte moves, so the
//! client does not notice; when none connects the client connection is closed. The copy
//! (`splice.rs` on Linux unless the listener has `splice = false`, tokio's `copy_bidirectional`
//! otherwise) has back-pressure, passes a half-close on (a client that shuts its write side still
//! gets the rest of the answer), turns a reset on one side into a reset on the other, and ends
//! after `idle_timeout` without a byte. The connection counts as in-flight on its backend all
//! along, from its connect on, so `least_conn` balances open connections and `max_conns` bounds
//! them; when every backend is at its limit the connection waits in the pool's queue like a request
//! (closed when that is full, waited out or not configured, and given up if the client closes
//! meanwhile).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backend_socket::BackendSocket;
use crate::balancer::{PickContext, Tried};
use crate::config::TcpSettings;
use crate::metrics::ErrorKind;

use crate::upstream::pool::{InFlightGuard, NoSlot, Pool, Slot};

/// Copy buffer per direction, and in `splice.rs` the chunk from which the next one is spliced:
/// tokio's default of 8 KiB costs a system call per 8 KiB; 64 KiB moved one stream about a
/// tenth faster here (`benches/tcp_throughput.sh`).
pub(super) const BUFFER: usize = 64 * 1024;

/// What a finished connection moved, for the listener's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamTotals {
    /// Client to backend.
    pub up: u64,
    /// Backend to client.
    pub down: u64,
}

/// Connects `client` to a backend of `pool` and copies until both sides are done.
/// `client_addr` is the client as known (from a PROXY header when one was accepted), `local`
/// the address it connected to.
pub async fn forward_stream(
    pool: &Pool,
    settings: &TcpSettings,
    listener: &str,
    mut client: TcpStream,
    client_addr: SocketAddr,
    local: SocketAddr,
) -> StreamTotals {
    let ctx = PickContext {
        client_ip: client_addr.ip(),
        key: b"",
    };
    let mut tried = Tried::default();
    let (index, mut backend_conn, _in_flight) = loop {
        let Some((index, in_flight)) = slot(pool, &ctx, &tried, &client).await else {
            tracing::warn!(listener, upstream = %pool.name, client = %client_addr, tried = !tried.is_empty(), "no backend accepted the connection; closing it");
            return StreamTotals::default();
        };
        tried.insert(index);
        let backend = &pool.backends()[index];
        match tokio::time::timeout(pool.timeouts.connect, BackendSocket::connect(&backend.addr))
            .await
        {
            Ok(Ok(conn)) => break (index, conn, in_flight),
            Ok(Err(e)) => {
                backend.live.record_failure();
                backend.metrics.error(ErrorKind::Connect);
                pool.passive_failure(backend, "connect failed");
                tracing::warn!(listener, upstream = %pool.name, backend = %backend.addr, error = %e, "backend connect failed; trying the next one");
            }
            Err(_) => {
                backend.live.record_failure();
                backend.metrics.error(ErrorKind::Connect);
                pool.passive_failure(backend, "connect timeout");
                tracing::warn!(listener, upstream = %pool.name, backend = %backend.addr, timeout = ?pool.timeouts.connect, "backend connect timed out; trying the next one");
            }
        }
    };
    let backend = &pool.backends()[index];
    metrics::counter!(crate::metrics::TCP_CONNECTIONS_TOTAL, "listener" => listener.to_string(), "upstream" => pool.name.to_string(), "backend" => backend.label.clone()).increment(1);
    if let Some(Err(e)) = backend_conn.tcp().map(|tcp| tcp.set_nodelay(true)) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a backend connection");
    }
    if let Some(version) = settings.send_proxy_protocol {
        let header = super::proxy_header::header(version, client_addr, local);
        if let Err(e) = backend_conn.write_all(&header).await {
            tracing::warn!(backend = %backend.addr, error = %e, "cannot send the PROXY header");
            return StreamTotals::default();
        }
    }
    let activity = Arc::new(Activity::new());
    let totals = pump(&mut client, &mut backend_conn, &activity, settings).await;
    backend.health.passive_success();
    totals
}

/// A backend for the connection and a slot on it, waiting in the pool's queue when every
/// backend is at its `max_conns`; `None` when there is none, or the client closed while it
/// waited.
async fn slot(
    pool: &Pool,
    ctx: &PickContext<'_>,
    tried: &Tried,
    client: &TcpStream,
) -> Option<(usize, InFlightGuard)> {
    match pool.take_slot(None, ctx, tried) {
        Slot::Taken(index, in_flight) => Some((index, in_flight)),
        Slot::Nothing => None,
        Slot::Busy(want) => {
            let waited = tokio::select! {
                waited = pool.wait_for_slot(ctx, tried, want) => waited,
                () = closed(client) => {
                    tracing::debug!(upstream = %pool.name, "client closed while waiting for a backend under max_conns");
                    return None;
                }
            };
            match waited {
                Ok(taken) => Some(taken),
                Err(NoSlot::Busy) => {
                    tracing::debug!(upstream = %pool.name, "every backend is at its max_conns");
                    None
                }
                Err(NoSlot::Nothing) => None,
            }
        }
    }
}

/// Resolves when the client closes its side before sending anything. A client that speaks
/// first cannot be watched without reading its bytes, so then this never resolves.
async fn closed(client: &TcpStream) {
    let mut byte = [0u8; 1];
    if let Ok(1..) = client.peek(&mut byte).await {
        std::future::pending::<()>().await;
    }
}

/// Copies both ways until both sides have closed, one resets (the other is then reset too), or
/// nothing moves for the idle timeout.
async fn pump(
    client: &mut TcpStream,
    backend: &mut BackendSocket,
    activity: &Arc<Activity>,
    settings: &TcpSettings,
) -> StreamTotals {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let outcome = tokio::select! {
        copied = copy(client, backend, (&up, &down), activity, settings.splice) => copied,
        () = activity.idle_for(settings.idle_timeout) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "TCP connection ended by a reset, an error or the idle timeout");
        // An abortive close (RST) on both, so the side still open learns the other failed
        // rather than seeing a clean end of stream. A Unix socket has no reset: its peer sees
        // the close.
        for s in std::iter::once(&*client).chain(backend.tcp()) {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    StreamTotals {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
    }
}

/// Both ways until both sides are done or one fails, counting `(up, down)`: spliced when the
/// listener allows it (Linux), through tokio's copy otherwise.
async fn copy(
    client: &mut TcpStream,
    backend: &mut BackendSocket,
    (up, down): (&AtomicU64, &AtomicU64),
    activity: &Activity,
    splice: bool,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if splice {
        use super::splice::both_ways;
        return match backend {
            BackendSocket::Tcp(tcp) => both_ways(client, tcp, up, down, activity).await,
            BackendSocket::Unix(unix) => both_ways(client, unix, up, down, activity).await,
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = splice;
    let mut c = Counted {
        inner: client,
        read: up,
        activity,
    };
    let mut b = Counted {
        inner: backend,
        read: down,
        activity,
    };
    tokio::io::copy_bidirectional_with_sizes(&mut c, &mut b, BUFFER, BUFFER)
        .await
        .map(|_| ())
}

/// When bytes last moved, on the tokio clock.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// A socket that counts what is read from it and notes activity both ways.
struct Counted<'a, S> {
    inner: &'a mut S,
    read: &'a AtomicU64,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
