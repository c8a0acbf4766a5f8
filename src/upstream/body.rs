//! Bodies in flight: the client's request body on its way to a backend, and the answer on its
//! way back. Both stream frame by frame (hyper's back-pressure, nothing buffered whole) and
//! both end the exchange when no bytes move for the configured body timeout.
//!
//! The request body sits in a shared slot until the upstream connection first asks for it, so
//! the forwarder can tell whether any of it left rproxy: if not, the request may still go to
//! another backend. The response body carries the guards whose drop marks the end of a
//! request: the backend's in-flight count, the connection's activity, and the access log line.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::config::ListenerConfig;
use crate::idle_timer::IdleTimer;
use crate::listener::RequestEnd;

use super::pool::InFlightGuard;

pub(super) type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?}")]
pub(super) struct BodyTimeout(pub Duration);

/// Why the client's request body stopped, if it did not end normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientBodyFailure {
    /// The client's body was malformed or the client went away.
    Broken,
    /// The client sent nothing for the listener's body timeout.
    TimedOut,
    /// The body grew past the listener's `max_body_size`.
    TooLarge,
}

/// Holds the client's request body until one upstream connection takes it.
#[derive(Debug)]
pub(super) struct RequestBodySlot {
    body: Mutex<Option<Incoming>>,
    taken: AtomicBool,
    failure: AtomicU8,
    idle_timeout: Duration,
    max_size: Option<u64>,
    end_stream: bool,
    size_hint: SizeHint,
}

impl RequestBodySlot {
    pub(super) fn new(body: Incoming, listener: &ListenerConfig) -> Arc<Self> {
        Arc::new(RequestBodySlot {
            idle_timeout: listener.body_timeout,
            max_size: listener.limits.max_body_size,
            end_stream: body.is_end_stream(),
            size_hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            taken: AtomicBool::new(false),
            failure: AtomicU8::new(0),
        })
    }

    /// Whether any upstream connection has started reading the body. Until then the request
    /// has not left rproxy and may be sent to another backend.
    pub(super) fn taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }

    pub(super) fn failure(&self) -> Option<ClientBodyFailure> {
        match self.failure.load(Ordering::Acquire) {
            1 => Some(ClientBodyFailure::Broken),
            2 => Some(ClientBodyFailure::TimedOut),
            3 => Some(ClientBodyFailure::TooLarge),
            _ => None,
        }
    }

    /// A body for one attempt. Only the first attempt that polls it gets the bytes.
    pub(super) fn attempt(self: &Arc<Self>) -> UpstreamRequestBody {
        UpstreamRequestBody {
            state: BodyState::Waiting(Arc::clone(self)),
            end_stream: self.end_stream,
            size_hint: self.size_hint,
        }
    }

    fn take(&self) -> Option<Incoming> {
        self.taken.store(true, Ordering::Release);
        self.body.lock().unwrap_or_else(|e| e.into_inner()).take()
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
    Streaming {
        body: Incoming,
        idle: IdleTimer,
        slot: Arc<RequestBodySlot>,
        sent: u64,
    },
    Done,
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let BodyState::Waiting(slot) = &this.state {
            let slot = Arc::clone(slot);
            this.state = match slot.take() {
                Some(body) => BodyState::Streaming {
                    body,
                    idle: IdleTimer::new(slot.idle_timeout),
                    slot,
                    sent: 0,
                },
                None => {
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err("request body already sent elsewhere".into())));
                }
            };
        }
        let BodyState::Streaming {
            body,
            idle,
            slot,
            sent,
        } = &mut this.state
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
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err("request body exceeds max_body_size".into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                slot.fail(ClientBodyFailure::Broken);
                this.state = BodyState::Done;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
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
            BodyState::Streaming { body, .. } => body.is_end_stream(),
            BodyState::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Waiting(_) => self.size_hint,
            BodyState::Streaming { body, .. } => body.size_hint(),
            BodyState::Done => SizeHint::with_exact(0),
        }
    }
}

/// The body of every response rproxy sends to a client: a backend's streamed body or a short
/// message of rproxy's own. Dropping it (end of body, or client gone) ends the request.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    bytes: u64,
    complete: bool,
    /// A backend body error held back for one poll (see `poll_frame`).
    deferred_error: Option<BodyError>,
    log: Option<AccessRecord>,
    _in_flight: Option<InFlightGuard>,
    end: Option<(RequestEnd, u16)>,
}

#[derive(Debug)]
enum Inner {
    Upstream { body: Incoming, idle: IdleTimer },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: Incoming, idle_timeout: Duration, in_flight: InFlightGuard) -> Self {
        ProxyBody {
            inner: Inner::Upstream {
                body,
                idle: IdleTimer::new(idle_timeout),
            },
            bytes: 0,
            complete: false,
            deferred_error: None,
            log: None,
            _in_flight: Some(in_flight),
            end: None,
        }
    }

    pub fn local(text: impl Into<Bytes>) -> Self {
        ProxyBody {
            inner: Inner::Local(Some(text.into())),
            bytes: 0,
            complete: false,
            deferred_error: None,
            log: None,
            _in_flight: None,
            end: None,
        }
    }

    /// Attaches what must be finished when the response is: the access log line, the
    /// listener's request metrics and the connection's activity guard.
    pub fn finish_with(mut self, log: Option<AccessRecord>, end: RequestEnd, status: u16) -> Self {
        self.log = log.map(|mut log| {
            log.status = status;
            log
        });
        self.end = Some((end, status));
        self
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.emit(self.bytes, self.complete);
        }
        if let Some((end, status)) = self.end.take() {
            end.finish(status);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(e) = this.deferred_error.take() {
            tracing::warn!(error = %e, "response body from backend failed; cutting the client's response");
            return Poll::Ready(Some(Err(e)));
        }
        let polled = match &mut this.inner {
            Inner::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Upstream { body, idle } => match Pin::new(body).poll_frame(cx) {
                Poll::Pending if idle.expired(cx) => {
                    Poll::Ready(Some(Err(BodyTimeout(idle.timeout()).into())))
                }
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => {
                    idle.progressed();
                    Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
                }
            },
        };
        let frame = ready!(polled);
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes += data.len() as u64;
                }
                // hyper stops polling once the body says it has ended.
                this.complete = this.is_end_stream();
            }
            Some(Err(_)) => {
                // hyper ends the client connection at once on a body error, dropping what it
                // has buffered, the response head included when the backend failed right
                // after it. Holding the error back one poll (and asking to be polled again)
                // lets hyper flush first, so the client sees a response that is visibly cut
                // short rather than none at all.
                if let Some(Err(e)) = frame {
                    this.deferred_error = Some(e);
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None => this.complete = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body, .. } => body.is_end_stream(),
            Inner::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body, .. } => body.size_hint(),
            Inner::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
