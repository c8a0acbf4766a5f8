//! Running one hyper connection (HTTP/1 or HTTP/2) to its end, beside the three signals that
//! can end it early: a graceful shutdown, the drain timeout of a removed listener, and the
//! connection's watchdog (keep-alive expiry, request-head timeout).
//!
//! Called by `http` (HTTP/2) and `http1` for every connection. The connection's task wakes
//! a few times per request, nearly always for the connection itself. A `select!` would poll
//! the two shutdown signals and the watchdog on each of those wakes; here they are polled only
//! when one of them woke the task, which a waker of their own records.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use super::activity::Expiry;
use super::http::ListenerCtx;

/// How long a connection closed for keep-alive expiry may take to finish closing. hyper's
/// HTTP/2 close waits for the client to answer a ping, and a client that never does would
/// otherwise keep the connection (nothing is in flight when it expires, so nothing is lost).
const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// How `drive` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Driven {
    /// hyper finished the connection by itself (the client closed, or it was parked: see
    /// `http1`).
    Finished,
    /// rproxy ended or is ending it: shutdown or keep-alive expiry (graceful), a request head
    /// that timed out, or the drain timeout.
    Closed,
}

/// The waker the signals are polled with: it notes that a signal fired and wakes the task.
#[derive(Debug)]
struct SignalWake {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SignalWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The status hyper answered a request head it could not parse with (`Server::on_error` in
/// hyper's `proto/h1/role.rs`), with no body; `None` for an error it answers nothing to.
fn answered_parse_error(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        return None;
    }
    // hyper answers a target over 65,534 bytes 414, but rproxy's own 414 comes first:
    // `max_uri_length` is at most that, and the head scan sees the target as it arrives,
    // before hyper has the whole head.
    Some(if e.is_parse_too_large() { 431 } else { 400 })
}

/// Runs a connection to its end, closing it gracefully on shutdown or keep-alive expiry and at
/// once when a request head times out. hyper's errors are logged here, and a head hyper
/// answered itself because it could not parse it (400, 431) is counted.
pub(super) async fn drive<C, W>(
    mut conn: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    mut watchdog: Pin<&mut W>,
    ctx: &ListenerCtx,
    peer: SocketAddr,
) -> Driven
where
    C: Future<Output = Result<(), hyper::Error>>,
    W: Future<Output = Expiry>,
{
    let shutdown = ctx.shutdown.cancelled();
    let kill = ctx.kill.cancelled();
    tokio::pin!(shutdown, kill);
    // Fired at first, so that the first poll registers every signal.
    let signals = Arc::new(SignalWake {
        fired: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let signal_waker = Waker::from(Arc::clone(&signals));
    let mut closing = false;
    // Armed when the watchdog closes the connection for keep-alive expiry.
    let mut cut: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(e) = result {
                    // A parse error of a request head: hyper has answered it (an HTTP/2
                    // connection's errors are never of this kind).
                    if let Some(status) = answered_parse_error(&e) {
                        ctx.head_refused(peer, status, 0);
                    }
                    tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
                }
                return Poll::Ready(if closing {
                    Driven::Closed
                } else {
                    Driven::Finished
                });
            }
            // Registered before the flag is read: a signal firing in between still wakes us.
            signals.task.register(cx.waker());
            if !signals.fired.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut signal_cx = Context::from_waker(&signal_waker);
            if kill.as_mut().poll(&mut signal_cx).is_ready() {
                tracing::debug!(client = %peer, "drain timeout of a removed listener; closing");
                return Poll::Ready(Driven::Closed);
            }
            if closing {
                // Shutdown and the watchdog have done their part.
                if cut.as_mut().is_some_and(|c| c.as_mut().poll(&mut signal_cx).is_ready()) {
                    tracing::debug!(client = %peer, "client did not finish closing an expired connection; cutting it");
                    return Poll::Ready(Driven::Closed);
                }
                return Poll::Pending;
            }
            // Shutdown: hyper finishes what is in flight and closes (the drain timeout bounds
            // it); the connection is polled again at once to let it.
            if shutdown.as_mut().poll(&mut signal_cx).is_ready() {
                graceful(conn.as_mut());
                closing = true;
                continue;
            }
            match watchdog.as_mut().poll(&mut signal_cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Expiry::HeaderTimeout) => {
                    tracing::debug!(client = %peer, "request head not received within the header timeout; closing");
                    return Poll::Ready(Driven::Closed);
                }
                // Keep-alive expiry: nothing is in flight, so the close is bounded here.
                Poll::Ready(Expiry::Idle) => {
                    graceful(conn.as_mut());
                    closing = true;
                    let mut limit = Box::pin(tokio::time::sleep(IDLE_CLOSE_LIMIT));
                    // Polled once so that its firing wakes the task through the signals.
                    let _ = limit.as_mut().poll(&mut signal_cx);
                    cut = Some(limit);
                }
            }
        }
    })
    .await
}
