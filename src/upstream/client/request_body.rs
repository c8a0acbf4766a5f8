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

/// Holds the client's request body until one upstream connection takes it, and the copy kept
/// for a retry.
#[derive(Debug)]
pub(crate) struct RequestBodySlot {
    body: Mutex<Option<Incoming>>,
    taken: AtomicBool,
    failure: AtomicU8,
    idle_timeout: Duration,
    max_size: Option<u64>,
    end_stream: bool,
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
    pub(crate) fn new(body: Incoming, listener: &ListenerConfig, replay_limit: usize) -> Arc<Self> {
        Arc::new(RequestBodySlot {
            idle_timeout: listener.body_timeout,
            max_size: listener.limits.max_body_size,
            end_stream: body.is_end_stream(),
            size_hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            taken: AtomicBool::new(false),
            failure: AtomicU8::new(0),
            replay_limit,
            replay: Mutex::new(Replay {
                chunks: (replay_limit > 0).then(Vec::new),
                ..Replay::default()
            }),
        })
    }

    /// Whether the request could be sent again whole: none of the body has left rproxy, or all
    /// of it was read and kept.
    pub(crate) fn resendable(&self) -> bool {
        !self.taken.load(Ordering::Acquire) || self.kept().is_some()
    }

    pub(crate) fn failure(&self) -> Option<ClientBodyFailure> {
        match self.failure.load(Ordering::Acquire) {
            1 => Some(ClientBodyFailure::Broken),
            2 => Some(ClientBodyFailure::TimedOut),
            3 => Some(ClientBodyFailure::TooLarge),
            _ => None,
        }
    }

    /// A body for one attempt: the client's stream for the first attempt that reads it, the
    /// kept copy for a retry after that.
    pub(crate) fn attempt(self: &Arc<Self>) -> UpstreamRequestBody {
        if self.taken.load(Ordering::Acquire)
            && let Some(chunks) = self.kept()
        {
            let size = chunks.iter().map(|c| c.len() as u64).sum();
            return UpstreamRequestBody {
                state: BodyState::Replay(chunks.into()),
                end_stream: size == 0,
                size_hint: SizeHint::with_exact(size),
            };
        }
        UpstreamRequestBody {
            state: BodyState::Waiting(Arc::clone(self)),
            end_stream: self.end_stream,
            size_hint: self.size_hint,
        }
    }

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
#[derive(Debug)]
pub(crate) struct UpstreamRequestBody {
    state: BodyState,
    end_stream: bool,
    size_hint: SizeHint,
}

#[derive(Debug)]
enum BodyState {
    Waiting(Arc<RequestBodySlot>),
    /// Boxed: only a request with a body gets here, and the body rides in every request sent
    /// upstream, which is moved into hyper's queue and out again; inline, this state made each
    /// such request 360 bytes where it is now 288.
    Streaming(Box<Streaming>),
    Replay(VecDeque<Bytes>),
    Done,
}

#[derive(Debug)]
struct Streaming {
    body: Incoming,
    idle: IdleTimer,
    slot: Arc<RequestBodySlot>,
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
        let this = &mut *self;
        if let BodyState::Replay(chunks) = &mut this.state {
            return Poll::Ready(chunks.pop_front().map(|c| Ok(Frame::data(c))));
        }
        if let BodyState::Waiting(slot) = &this.state {
            let slot = Arc::clone(slot);
            this.state = match slot.take() {
                Some(body) => BodyState::Streaming(Box::new(Streaming {
                    body,
                    idle: IdleTimer::new(slot.idle_timeout),
                    keeping: slot.replay_limit > 0,
                    slot,
                    sent: 0,
                })),
                None => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err("request body already sent elsewhere".into())));
                }
            };
        }
        let BodyState::Streaming(streaming) = &mut this.state else {
            return Poll::Ready(None);
        };
        let Streaming {
            body,
            idle,
            slot,
            sent,
            keeping,
        } = &mut **streaming;
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                idle.progressed();
                *sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                if slot.max_size.is_some_and(|max| *sent > max) {
                    // A chunked body has no length to check up front: cut it where it crosses
                    // the limit, before the excess reaches the backend.
                    slot.fail(ClientBodyFailure::TooLarge);
                    this.state = BodyState::Done;
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
                this.state = BodyState::Done;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if *keeping {
                    slot.finished();
                }
                this.state = BodyState::Done;
                Poll::Ready(None)
            }
            Poll::Pending if idle.expired(cx) => {
                let timeout = slot.idle_timeout;
                slot.fail(ClientBodyFailure::TimedOut);
                this.state = BodyState::Done;
                Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Waiting(_) => self.end_stream,
            BodyState::Streaming(s) => s.body.is_end_stream(),
            BodyState::Replay(chunks) => chunks.is_empty(),
            BodyState::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Waiting(_) => self.size_hint,
            BodyState::Streaming(s) => s.body.size_hint(),
            BodyState::Replay(chunks) => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
            BodyState::Done => SizeHint::with_exact(0),
        }
    }
}
