//! The client's request body on its way to a backend, streamed frame by frame, and kept for a
//! retry when it is small.
//!
//! The body sits in a shared slot until an upstream connection first asks for it, so the
//! forwarder can tell whether any of it left rproxy: if not, the request may still go to
//! another backend. While it streams, a body within the pool's `retry_buffer` is also kept
//! (the chunks are reference-counted, so keeping them copies nothing); once it has been read to
//! its end, a retry sends the kept copy. A larger body is streamed only, and a request whose
//! body started leaving is then never sent again.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;

use crate::config::ListenerConfig;
use crate::idle_timer::IdleTimer;

pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// No bytes moved, either way, for the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?}")]
pub(crate) struct BodyTimeout(pub Duration);

/// Why the client's request body stopped, if it did not end normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientBodyFailure {
    /// The client's body was malformed or the client went away.
    Broken,
    /// The client sent nothing for the listener's body timeout.
    TimedOut,
    /// The body grew past the listener's `max_body_size`.
    TooLarge,
}

/// The client's request body for every attempt at sending the request: handed to the first
/// attempt that reads it, and kept for a retry when it is small.
#[derive(Debug)]
pub(crate) struct RequestBodySlot {
    /// `None` for an empty body, as most requests have: there is nothing to hand over, keep or
    /// fail, so nothing is allocated for it.
    shared: Option<Arc<Shared>>,
}

/// What every attempt's body shares with the slot.
#[derive(Debug)]
struct Shared {
    body: Mutex<Option<Incoming>>,
    taken: AtomicBool,
    failure: AtomicU8,
    idle_timeout: Duration,
    max_size: Option<u64>,
    size_hint: SizeHint,
    replay_limit: usize,
    replay: Mutex<Replay>,
}

/// The kept copy: `None` once the body turned out too large (or carried trailers).
#[derive(Debug, Default)]
struct Replay {
    chunks: Option<Vec<Bytes>>,
    size: usize,
    complete: bool,
}

impl RequestBodySlot {
    /// `replay_limit`: the largest body kept for a retry (0 keeps none).
    pub(crate) fn new(body: Incoming, listener: &ListenerConfig, replay_limit: usize) -> Self {
        if body.is_end_stream() {
            return RequestBodySlot { shared: None };
        }
        RequestBodySlot {
            shared: Some(Arc::new(Shared {
                idle_timeout: listener.body_timeout,
                max_size: listener.limits.max_body_size,
                size_hint: body.size_hint(),
                body: Mutex::new(Some(body)),
                taken: AtomicBool::new(false),
                failure: AtomicU8::new(0),
                replay_limit,
                replay: Mutex::new(Replay {
                    chunks: (replay_limit > 0).then(Vec::new),
                    ..Replay::default()
                }),
            })),
        }
    }

    /// Whether the request could be sent again whole: none of the body has left rproxy, or all
    /// of it was read and kept.
    pub(crate) fn resendable(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| !shared.taken.load(Ordering::Acquire) || shared.kept().is_some())
    }

    pub(crate) fn failure(&self) -> Option<ClientBodyFailure> {
        match self.shared.as_ref()?.failure.load(Ordering::Acquire) {
            1 => Some(ClientBodyFailure::Broken),
            2 => Some(ClientBodyFailure::TimedOut),
            3 => Some(ClientBodyFailure::TooLarge),
            _ => None,
        }
    }

    /// A body for one attempt: the client's stream for the first attempt that reads it, the
    /// kept copy for a retry after that.
    pub(crate) fn attempt(&self) -> UpstreamRequestBody {
        let Some(shared) = &self.shared else {
            return UpstreamRequestBody(None);
        };
        if shared.taken.load(Ordering::Acquire)
            && let Some(chunks) = shared.kept()
        {
            return UpstreamRequestBody(Some(Box::new(BodyState::Replay(chunks.into()))));
        }
        UpstreamRequestBody(Some(Box::new(BodyState::Waiting(Arc::clone(shared)))))
    }
}

impl Shared {
    /// The whole body, if it was read to its end and kept.
    fn kept(&self) -> Option<Vec<Bytes>> {
        let replay = self.replay.lock();
        if replay.complete {
            replay.chunks.clone()
        } else {
            None
        }
    }

    fn take(&self) -> Option<Incoming> {
        self.taken.store(true, Ordering::Release);
        self.body.lock().take()
    }

    /// Keeps one frame for a retry; false once the body is not kept any more.
    fn keep(&self, frame: &Frame<Bytes>) -> bool {
        let mut replay = self.replay.lock();
        let size = replay.size + frame.data_ref().map_or(0, Bytes::len);
        match (&mut replay.chunks, frame.data_ref()) {
            (Some(chunks), Some(data)) if size <= self.replay_limit => {
                chunks.push(data.clone());
                replay.size = size;
                true
            }
            _ => {
                replay.chunks = None;
                false
            }
        }
    }

    fn finished(&self) {
        self.replay.lock().complete = true;
    }

    fn fail(&self, why: ClientBodyFailure) {
        let code = match why {
            ClientBodyFailure::Broken => 1,
            ClientBodyFailure::TimedOut => 2,
            ClientBodyFailure::TooLarge => 3,
        };
        self.failure.store(code, Ordering::Release);
    }
}

/// The request body as sent to one backend.
///
/// One pointer, `None` once the body has ended (or for an empty one): the body rides in every
/// request sent upstream, which hyper moves into its queue and out again several times, and a
/// request of 232 bytes is copied with about half the instructions that one over 256 bytes
/// takes (callgrind, glibc's `memcpy`). Inline, these states made each request 288 bytes.
#[derive(Debug)]
pub(crate) struct UpstreamRequestBody(Option<Box<BodyState>>);

#[derive(Debug)]
enum BodyState {
    Waiting(Arc<Shared>),
    Streaming(Streaming),
    Replay(VecDeque<Bytes>),
}

#[derive(Debug)]
struct Streaming {
    body: Incoming,
    idle: IdleTimer,
    slot: Arc<Shared>,
    sent: u64,
    /// Still keeping a copy for a retry.
    keeping: bool,
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(state) = &mut self.0 else {
            return Poll::Ready(None);
        };
        let polled = poll_state(state, cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Ended, or failed: nothing more is sent, and what the body held goes now.
            self.0 = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self.0.as_deref() {
            None => true,
            // Only a body that has not ended is shared (`RequestBodySlot::new`).
            Some(BodyState::Waiting(_)) => false,
            Some(BodyState::Streaming(s)) => s.body.is_end_stream(),
            Some(BodyState::Replay(chunks)) => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_deref() {
            None => SizeHint::with_exact(0),
            Some(BodyState::Waiting(slot)) => slot.size_hint,
            Some(BodyState::Streaming(s)) => s.body.size_hint(),
            Some(BodyState::Replay(chunks)) => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
        }
    }
}

/// The next frame of a body that has not ended.
fn poll_state(
    state: &mut BodyState,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    if let BodyState::Replay(chunks) = state {
        return Poll::Ready(chunks.pop_front().map(|c| Ok(Frame::data(c))));
    }
    if let BodyState::Waiting(slot) = state {
        let slot = Arc::clone(slot);
        let Some(body) = slot.take() else {
            return Poll::Ready(Some(Err("request body already sent elsewhere".into())));
        };
        *state = BodyState::Streaming(Streaming {
            body,
            idle: IdleTimer::new(slot.idle_timeout),
            keeping: slot.replay_limit > 0,
            slot,
            sent: 0,
        });
    }
    let BodyState::Streaming(Streaming {
        body,
        idle,
        slot,
        sent,
        keeping,
    }) = state
    else {
        return Poll::Ready(None);
    };
    match Pin::new(&mut *body).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => {
            idle.progressed();
            *sent += frame.data_ref().map_or(0, |d| d.len() as u64);
            if slot.max_size.is_some_and(|max| *sent > max) {
                // A chunked body has no length to check up front: cut it where it crosses
                // the limit, before the excess reaches the backend.
                slot.fail(ClientBodyFailure::TooLarge);
                return Poll::Ready(Some(Err("request body exceeds max_body_size".into())));
            }
            if *keeping {
                *keeping = slot.keep(&frame);
                // hyper stops polling a body once its Content-Length is sent, so the end
                // is seen here, not only as a final `None`.
                if *keeping && body.is_end_stream() {
                    slot.finished();
                }
            }
            Poll::Ready(Some(Ok(frame)))
        }
        Poll::Ready(Some(Err(e))) => {
            slot.fail(ClientBodyFailure::Broken);
            Poll::Ready(Some(Err(e.into())))
        }
        Poll::Ready(None) => {
            if *keeping {
                slot.finished();
            }
            Poll::Ready(None)
        }
        Poll::Pending if idle.expired(cx) => {
            let timeout = slot.idle_timeout;
            slot.fail(ClientBodyFailure::TimedOut);
            Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
        }
        Poll::Pending => Poll::Pending,
    }
}
