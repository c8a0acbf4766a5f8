//! The answer on its way back to the client: a backend's body streamed frame by frame
//! (hyper's back-pressure, nothing buffered whole), cut when no bytes move for the body
//! timeout, or a short message of rproxy's own. The body carries what upstream must release
//! when the answer ends: the backend's in-flight count and its connection, given back to the
//! keep-alive cache. The listener wraps it with its own end-of-request work (metrics, access
//! log), reading how many bytes went out here. The request body on its way out is in
//! `client::request_body`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::idle_timer::IdleTimer;

use crate::upstream::client::{BodyError, BodyTimeout, Reuse};
use crate::upstream::pool::InFlightGuard;

/// The body of every response rproxy sends to a client: a backend's streamed body or a short
/// message of rproxy's own. Dropping it (end of body, or client gone) releases the backend.
///
/// Small (56 bytes): the response it rides in is moved several times on its way to hyper's
/// writer, and one of 256 bytes or less is copied with about half the instructions that a
/// larger one takes (callgrind, glibc's `memcpy`). What a backend's body needs lives behind
/// one pointer instead; the client's response, with the listener's wrapper, is 240 bytes
/// where it was 352.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    bytes: u64,
    complete: bool,
}

#[derive(Debug)]
enum Inner {
    Upstream(Box<Upstream>),
    Local(Option<Bytes>),
}

#[derive(Debug)]
struct Upstream {
    body: Incoming,
    idle: IdleTimer,
    /// A backend body error held back for one poll (see `poll_frame`).
    deferred_error: Option<BodyError>,
    _in_flight: InFlightGuard,
    /// The backend connection, given back when the body was read to its end.
    reuse: Option<Reuse>,
}

impl ProxyBody {
    pub(crate) fn upstream(
        body: Incoming,
        idle_timeout: Duration,
        in_flight: InFlightGuard,
        reuse: Option<Reuse>,
    ) -> Self {
        ProxyBody {
            inner: Inner::Upstream(Box::new(Upstream {
                body,
                idle: IdleTimer::new(idle_timeout),
                deferred_error: None,
                _in_flight: in_flight,
                reuse,
            })),
            bytes: 0,
            complete: false,
        }
    }

    pub fn local(text: impl Into<Bytes>) -> Self {
        ProxyBody {
            inner: Inner::Local(Some(text.into())),
            bytes: 0,
            complete: false,
        }
    }

    /// The body bytes passed on so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes
    }

    /// Whether hyper read the body to its end.
    pub fn complete(&self) -> bool {
        self.complete
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start (a 204, or a HEAD's), so its
        // end is read from the body itself too.
        if let Inner::Upstream(upstream) = &mut self.inner
            && let Some(reuse) = upstream.reuse.take()
            && (self.complete || upstream.body.is_end_stream())
        {
            reuse.release();
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
        let upstream = match &mut this.inner {
            Inner::Local(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Upstream(upstream) => upstream,
        };
        if let Some(e) = upstream.deferred_error.take() {
            tracing::warn!(error = %e, "response body from backend failed; cutting the client's response");
            return Poll::Ready(Some(Err(e)));
        }
        let frame = match Pin::new(&mut upstream.body).poll_frame(cx) {
            Poll::Pending if upstream.idle.expired(cx) => {
                Some(Err(BodyTimeout(upstream.idle.timeout()).into()))
            }
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => {
                upstream.idle.progressed();
                frame.map(|f| f.map_err(BodyError::from))
            }
        };
        match frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes += data.len() as u64;
                }
                // hyper stops polling once the body says it has ended.
                this.complete = upstream.body.is_end_stream();
                Poll::Ready(Some(Ok(f)))
            }
            Some(Err(e)) => {
                // hyper ends the client connection at once on a body error, dropping what it
                // has buffered, the response head included when the backend failed right
                // after it. Holding the error back one poll (and asking to be polled again)
                // lets hyper flush first, so the client sees a response that is visibly cut
                // short rather than none at all.
                upstream.deferred_error = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => {
                this.complete = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(upstream) => upstream.body.is_end_stream(),
            Inner::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(upstream) => upstream.body.size_hint(),
            Inner::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// The client's answer when rproxy cannot pass a backend's on: the status `error` maps to,
/// `Connection: close` after a broken request body (where the next request would start is
/// unknown), and `Retry-After` when no backend could take it now.
pub fn error_response(error: ProxyError) -> Response<ProxyBody> {
    let close = matches!(
        error,
        ProxyError::ClientBodyBroken
            | ProxyError::ClientBodyTimeout
            | ProxyError::ClientBodyTooLarge
    );
    let mut resp = local_response(error.status(), close);
    if matches!(error, ProxyError::NoBackend | ProxyError::BackendsBusy) {
        // Nothing could take it now; a backend may be back by the next health check, or have
        // a free slot.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// A response of rproxy's own: the status line repeated as a short plain-text body, and
/// `Connection: close` when the connection must not carry another request.
pub fn local_response(status: StatusCode, close: bool) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut resp = Response::new(ProxyBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
