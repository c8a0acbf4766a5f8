//! The answer on its way back to the client: a backend's body streamed frame by frame
//! (hyper's back-pressure, nothing buffered whole), cut when no bytes move for the body
//! timeout, or a short message of rproxy's own. The body carries the guards whose drop marks
//! the end of a request: the backend's in-flight count, the connection's activity, and the
//! access log line. The request body on its way out is in `request_body`.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::idle_timer::IdleTimer;
use crate::listener::RequestEnd;

use super::backend::InFlightGuard;
use super::keepalive::Reuse;

pub(super) type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?}")]
pub(super) struct BodyTimeout(pub Duration);

/// The body of every response rproxy sends to a client: a backend's streamed body or a short
/// message of rproxy's own. Dropping it (end of body, or client gone) ends the request.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    bytes: u64,
    complete: bool,
    /// A backend body error held back for one poll (see `poll_frame`).
    deferred_error: Option<BodyError>,
    log: Option<Box<AccessRecord>>,
    _in_flight: Option<InFlightGuard>,
    end: Option<(RequestEnd, u16)>,
    /// The backend connection, given back when the body was read to its end.
    reuse: Option<Reuse>,
}

#[derive(Debug)]
enum Inner {
    Upstream { body: Incoming, idle: IdleTimer },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(
        body: Incoming,
        idle_timeout: Duration,
        in_flight: InFlightGuard,
        reuse: Option<Reuse>,
    ) -> Self {
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
            reuse,
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
            reuse: None,
        }
    }

    /// Attaches to `resp`'s body what must be finished when the response is: the access log
    /// line, the listener's request metrics and the connection's activity guard. In place:
    /// the response is a few hundred bytes, and taking it apart and rebuilding it copies them.
    pub fn finish(resp: &mut Response<ProxyBody>, log: Option<Box<AccessRecord>>, end: RequestEnd) {
        let status = resp.status().as_u16();
        let body = resp.body_mut();
        body.log = log.map(|mut log| {
            log.status = status;
            log
        });
        body.end = Some((end, status));
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start (a 204, or a HEAD's), so its
        // end is read from the body itself too.
        if let Some(reuse) = self.reuse.take()
            && (self.complete || self.is_end_stream())
        {
            reuse.release();
        }
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
