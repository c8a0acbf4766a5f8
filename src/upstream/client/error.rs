//! Why an attempt to a backend got no response head, in one type (pingora-error's shape): what
//! kind of failure it was (for metrics and the client's status), whether any of the request may
//! have reached the backend (which decides whether sending it again is safe), and the source,
//! for the log.

use std::io;
use std::time::Duration;

use crate::config::BackendAddr;
use crate::error::ProxyError;
use crate::metrics::ErrorKind;

#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub(crate) struct UpstreamError {
    kind: ErrorKind,
    /// Whether any of the request may have reached the backend.
    reached: bool,
    /// A kept-alive connection that the backend had closed: it ended before any of the answer,
    /// the keep-alive race every proxy meets (the backend closed it as it went out).
    stale: bool,
    #[source]
    cause: Cause,
}

#[derive(Debug, thiserror::Error)]
enum Cause {
    /// No connection: refused, unreachable, timed out, or a failed TLS handshake.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: BackendAddr,
        source: io::Error,
    },
    /// The connection failed after the request went out, or the answer was not HTTP.
    #[error(transparent)]
    Http(hyper::Error),
    /// No response head within the response timeout.
    #[error("no response head within {0:?}")]
    TimedOut(Duration),
}

impl UpstreamError {
    /// No connection to `addr`: nothing was sent, so another backend may always have it.
    pub(crate) fn connect(addr: &BackendAddr, source: io::Error) -> Self {
        UpstreamError {
            kind: ErrorKind::Connect,
            reached: false,
            stale: false,
            cause: Cause::Connect {
                addr: addr.clone(),
                source,
            },
        }
    }

    /// The backend sent no response head in time; the request may have reached it.
    pub(crate) fn timed_out(after: Duration) -> Self {
        UpstreamError {
            kind: ErrorKind::Timeout,
            reached: true,
            stale: false,
            cause: Cause::TimedOut(after),
        }
    }

    /// How it is counted in `rproxy_backend_errors_total`.
    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether any of the request may have reached the backend: then only an idempotent
    /// request may be sent again.
    pub(crate) fn reached_backend(&self) -> bool {
        self.reached
    }

    /// `e` met on a connection taken from the keep-alive cache: when it closed before any of
    /// the answer, it was stale rather than the backend failing.
    pub(crate) fn on_kept_connection(e: hyper::Error) -> Self {
        let stale = e.is_incomplete_message();
        UpstreamError {
            stale,
            ..UpstreamError::from(e)
        }
    }

    /// A kept-alive connection the backend had closed (see `on_kept_connection`): the request
    /// may go to the same backend again on a new connection, when resending it is safe.
    pub(crate) fn stale_connection(&self) -> bool {
        self.stale
    }

    /// What the client is answered when no later attempt succeeds: 504 after a timeout, 502
    /// otherwise.
    pub(crate) fn answer(&self) -> ProxyError {
        match self.cause {
            Cause::TimedOut(_) => ProxyError::UpstreamTimeout,
            _ => ProxyError::AllBackendsFailed,
        }
    }
}

/// hyper's failure on a connection that was open: the request went out (or may have), so it
/// was reached; an answer hyper could not parse is a protocol error, anything else a reset.
impl From<hyper::Error> for UpstreamError {
    fn from(e: hyper::Error) -> Self {
        UpstreamError {
            kind: if e.is_parse() {
                ErrorKind::Protocol
            } else {
                ErrorKind::Reset
            },
            reached: true,
            stale: false,
            cause: Cause::Http(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_says_whether_a_resend_is_safe_and_what_the_client_gets() {
        let refused = UpstreamError::connect(
            &"127.0.0.1:1".parse().expect("addr"),
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(
            (refused.kind(), refused.reached_backend(), refused.answer()),
            (ErrorKind::Connect, false, ProxyError::AllBackendsFailed)
        );
        let slow = UpstreamError::timed_out(Duration::from_secs(3));
        assert_eq!(
            (slow.kind(), slow.reached_backend(), slow.answer()),
            (ErrorKind::Timeout, true, ProxyError::UpstreamTimeout)
        );
        assert_eq!(slow.to_string(), "no response head within 3s");
    }
}
