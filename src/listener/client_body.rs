//! The response body as the client gets it: what upstream hands back ([`ProxyBody`]: a
//! backend's streamed body or a message of rproxy's own), wrapped with the listener's own
//! end-of-request work. When it is dropped (the body was sent, or the client went away) the
//! request is over: the listener's request metrics are recorded, the connection's activity
//! guard is released and the access log line is written, with the bytes really sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::AccessRecord;
use crate::limit::Admitted;
use crate::upstream::ProxyBody;

use super::activity::RequestEnd;

#[derive(Debug)]
pub(super) struct ClientBody {
    inner: ProxyBody,
    status: u16,
    log: Option<Box<AccessRecord>>,
    end: Option<RequestEnd>,
    /// The request's slots under its limits' `conns`, given back with the body.
    _limits: Option<Admitted>,
}

impl ClientBody {
    /// `resp` as the client gets it, ending with `end` and the access log line `log`, and
    /// holding `admitted` (the request's slots under its limits' `conns`) until it ends. One
    /// call takes all of them, so no way out of the listener can forget the slots.
    pub(super) fn wrap(
        resp: Response<ProxyBody>,
        log: Option<Box<AccessRecord>>,
        end: RequestEnd,
        admitted: Option<Admitted>,
    ) -> Response<ClientBody> {
        let status = resp.status().as_u16();
        resp.map(|inner| ClientBody {
            inner,
            status,
            log: log.map(|mut log| {
                log.status = status;
                log
            }),
            end: Some(end),
            _limits: admitted,
        })
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.emit(self.inner.bytes_sent(), self.inner.complete());
        }
        if let Some(end) = self.end.take() {
            end.finish(self.status);
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
