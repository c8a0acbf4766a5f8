//! Why rproxy answers a request itself rather than with a backend's answer, and the one status
//! each reason maps to, so clients and monitoring can tell "no backend could be reached" (502)
//! from "no backend to try" (503) and "the backend was too slow" (504). Ground floor: the
//! response itself is built by `upstream::error_response`, with the body type of every answer.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Every backend the request was sent to failed before answering.
    #[error("every backend failed")]
    AllBackendsFailed,
    /// The pool had no backend that could be tried (all down).
    #[error("no backend available")]
    NoBackend,
    /// Every backend the request could go to was at its `max_conns`, and the queue was full,
    /// waited out, or not configured.
    #[error("every backend is at its max_conns")]
    BackendsBusy,
    /// A backend did not send response headers within the response timeout.
    #[error("backend response timed out")]
    UpstreamTimeout,
    /// The client's request body was malformed or cut off.
    #[error("malformed or incomplete request body")]
    ClientBodyBroken,
    /// The client stopped sending its request body.
    #[error("request body timed out")]
    ClientBodyTimeout,
    /// The client's chunked body grew past the listener's `max_body_size`.
    #[error("request body too large")]
    ClientBodyTooLarge,
    /// A backend answered in a way that cannot be passed on (an unrequested protocol switch).
    #[error("invalid response from backend")]
    InvalidUpstreamResponse,
    /// No route of the listener matches the request, and it has no default upstream.
    #[error("no route for this host and path")]
    NoRoute,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::AllBackendsFailed => StatusCode::BAD_GATEWAY,
            ProxyError::NoBackend | ProxyError::BackendsBusy => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBodyBroken => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::InvalidUpstreamResponse => StatusCode::BAD_GATEWAY,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
        }
    }
}

/// An error with its whole `source()` chain, for log lines ("client error (Connect): tcp
/// connect error: Connection refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
