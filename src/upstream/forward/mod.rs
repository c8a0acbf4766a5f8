//! Forwarding one request: pick a backend, send, fail over, and hand the answer back.
//!
//! Called by the listener for every request, after the router chose the pool. After a failed
//! attempt the request goes to the next backend in balancing order when `retry` says that is
//! safe and allowed; it never goes to the same backend twice. When no attempt succeeded the
//! client gets 502, or 504 when the last backend was too slow to answer; when there was nothing
//! to try, 503. When every backend it may go to is at its `max_conns`, the request waits in the
//! pool's queue (boxed, off the common path) or gets 503 at once. A route's header rules
//! (`header_rules`) act on the head sent to the backend and on the answer, whichever it is.
//!
//! Imports `pool` and `client` below it, and the ground floor; never `listener`: it returns the
//! response and what became of the request ([`Forwarded`]), and the listener does the rest.

use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;

use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::balancer::{PickContext, Tried};
use crate::config::ListenerConfig;
use crate::error::{ProxyError, error_chain};
use crate::header_text::has_token;
use crate::metrics::{ErrorKind, RetryRefusal};

use super::client::{
    ClientBodyFailure, RequestBodySlot, Reuse, UpstreamError, UpstreamRequestBody,
};
use super::pool::{Attempts, Backend, InFlightGuard, NoSlot, Pool, Slot};

mod body;
mod hash_key;
mod header_rules;
mod headers;
mod proxy_header;
mod request_id;
mod resend;
#[cfg(target_os = "linux")]
mod splice;
mod stream;
mod tunnel;
mod ws_frames;

pub use body::{ProxyBody, error_response, local_response};
pub use header_rules::HeaderPlan;
/// Public for the header-rewriting benchmark (`benches/balancer.rs`).
pub use headers::{Present, remove_hop_by_hop, set_forwarding};
pub use proxy_header::{V2_SIGNATURE as PROXY_V2_SIGNATURE, header as proxy_header};
pub use request_id::X_REQUEST_ID;
pub use stream::{StreamTotals, forward_stream};
// For the rate limits, decided before a request is forwarded.
pub(crate) use hash_key::build as request_key;
pub use headers::client_address;
pub use tunnel::{Tunnels, tunnels};

use headers::join_cookies;
use resend::HeadCopy;

/// Everything about the client connection a request needs.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// How the client reached rproxy, for `X-Forwarded-Proto` and secure cookies.
    pub scheme: ClientScheme,
    /// The port the client connected to (`$server_port`).
    pub server_port: u16,
}

/// Plain HTTP or HTTPS, as the client connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientScheme {
    Http,
    Https,
}

impl ClientScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientScheme::Http => "http",
            ClientScheme::Https => "https",
        }
    }
}

/// Where the router sent a request.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The listener's settings (request body limits and timeouts).
    pub listener: &'a ListenerConfig,
    pub pool: &'a Pool,
    /// The route's path prefix, to remove from the path sent upstream.
    pub strip_prefix: Option<&'a str>,
    /// The header rules merged for this route; `None` when it has none.
    pub headers: Option<&'a HeaderPlan>,
}

/// What became of a forwarded request, for the listener's access log.
#[derive(Debug, Clone, Default)]
pub struct Forwarded<'a> {
    /// Set by the caller when it wants `request_id` (the access log does).
    pub want_request_id: bool,
    /// The request's `X-Request-Id`, when wanted: the head itself goes to the backend.
    pub request_id: Option<http::HeaderValue>,
    /// The client's address: the peer's, or the one a trusted proxy forwarded (`None` until
    /// the request head was read for it).
    pub client_ip: Option<IpAddr>,
    /// The backend that answered, or the last one tried when none did (nginx's
    /// `$upstream_addr` names the failed ones too: an operator reading a 502 in the log wants
    /// to know which backend gave it).
    pub backend: Option<&'a Backend>,
    /// The time to the answering backend's response head.
    pub upstream_time: Option<std::time::Duration>,
}

/// Forwards a request (`parts`, its head, whose header names `present` has read, and `body`)
/// through the routed pool and returns the response for the client; what became of the
/// request is written to `forwarded`. The head is rewritten here for the backend and its
/// headers go there (the caller finds them empty afterwards; see `resend`). It is borrowed: it
/// stays in the caller's future rather than being copied into this one, which every request
/// allocates and moves. (`forwarded` is an out-parameter rather than half of a returned pair
/// for the same reason: returning the pair cost the response one more copy, measured with
/// callgrind.)
pub async fn forward<'a>(
    route: Route<'a>,
    trusted_proxies: &[ipnet::IpNet],
    peer: Peer,
    present: Present,
    parts: &mut Parts,
    body: Incoming,
    forwarded: &mut Forwarded<'a>,
) -> Response<ProxyBody> {
    let Route { listener, pool, .. } = route;
    // What the header rules read of the head as the client sent it, before it is rewritten.
    let mut rules = route.headers.map(|plan| plan.begin(parts, peer));
    // A WebSocket keeps its upgrade headers, and the client side of the switch for later.
    let mut client_upgrade = if !pool.h2 && tunnel::requested(parts, present) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    // gRPC needs `te: trailers` to reach an HTTP/2 backend; it is hop-by-hop, so it is
    // removed with the others and put back for such a pool.
    let te_trailers =
        pool.h2 && present.has(Present::TE) && has_token(&parts.headers, &header::TE, "trailers");
    let client_ip = rewrite_request_head(parts, present, peer, trusted_proxies, listener);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    if client_upgrade.is_some() {
        tunnel::restore_upgrade_headers(&mut parts.headers);
    }
    // Without `request_id`, a client's id passes as sent and is the one logged.
    let id = if listener.request_id {
        Some(request_id::ensure(&mut parts.headers))
    } else {
        parts.headers.get(&X_REQUEST_ID)
    };
    if forwarded.want_request_id {
        forwarded.request_id = id.cloned();
    }
    if let Some(rules) = &mut rules {
        rules.request(parts, client_ip);
    }
    forwarded.client_ip = Some(client_ip);

    let path = upstream_path(parts, route.strip_prefix);
    let mut attempts = pool.retry.start(&parts.method);
    let slot = RequestBodySlot::new(body, listener, pool.retry.body_to_keep(&parts.method));
    let key = pool
        .hash_key
        .as_ref()
        .map(|template| hash_key::build(template, parts, client_ip))
        .unwrap_or_default();
    let ctx = PickContext {
        client_ip,
        key: &key,
    };
    let mut tried = Tried::default();
    // A sticky cookie naming one of this pool's backends pins the first attempt to it.
    let pinned = pool.sticky.as_ref().and_then(|sticky| {
        hash_key::cookie(parts, sticky.cookie_name()).and_then(|v| sticky.pinned(v))
    });
    let mut pin = pinned.filter(|&i| pool.available(i));
    // What the client gets if the backends run out: the last attempt's failure.
    let mut last_failure = None;
    // Set for the one attempt that follows a stale kept-alive connection: a new connection to
    // the same backend.
    let mut fresh = false;
    // One such retry per request: a second stale connection is the backend failing.
    let mut stale_retried = false;
    // The head's headers go to the first attempt itself; any later one gets them from this
    // copy, which is cheaper to keep than a second map (see `resend`). Under `tries = 1`
    // there is no later one.
    let resend = attempts.may_follow().then(|| HeadCopy::of(&parts.headers));
    let mut first_headers = Some(std::mem::take(&mut parts.headers));

    let outcome = loop {
        let (index, in_flight) = match pool.take_slot(pin.take(), &ctx, &tried) {
            Slot::Taken(index, in_flight) => (index, in_flight),
            Slot::Nothing => break Err(nothing_left(pool, last_failure)),
            Slot::Busy(want) => match Box::pin(pool.wait_for_slot(&ctx, &tried, want)).await {
                Ok(taken) => taken,
                Err(NoSlot::Nothing) => break Err(nothing_left(pool, last_failure)),
                Err(NoSlot::Busy) => break Err(all_busy(pool, last_failure)),
            },
        };
        tried.insert(index);
        let backend = &pool.backends()[index];

        let sent = Instant::now();
        let timeout = attempts.begin(pool.timeouts.response);
        // The attempt is built inside the call that bounds it, not in a variable first: the
        // compiler then writes its 904 bytes straight into place, where the variable cost a
        // copy of them (callgrind). The deadline is from `sent`, not a second reading of the
        // clock. (Durations in the config are at most ten years, so this cannot overflow.)
        let bounded = pool.response_timers.bound(
            sent + timeout,
            pool.client.send(
                &backend.addr,
                &backend.keepalive,
                upstream_request(
                    parts,
                    // Never the default: without a copy no attempt follows the first.
                    first_headers
                        .take()
                        .or_else(|| resend.as_ref().map(HeadCopy::headers))
                        .unwrap_or_default(),
                    &path,
                    pool,
                    backend,
                    rules.as_deref(),
                    slot.attempt(),
                ),
                std::mem::take(&mut fresh),
            ),
        );
        match bounded.await {
            Ok(Ok((resp, _)))
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() =>
            {
                break Err(unasked_switch(pool, backend));
            }
            Ok(Ok((mut resp, reuse))) => {
                // One reading of the clock for the time to the head and the latency window.
                let answered = Instant::now();
                let time_to_head = answered.saturating_duration_since(sent);
                let status = resp.status().as_u16();
                if pool.passive.fail_on_status.contains(&status) {
                    pool.passive_failure(backend, &format!("status {status}"));
                } else {
                    backend.health.passive_success();
                }
                backend
                    .metrics
                    .response(resp.status().as_u16(), time_to_head);
                backend
                    .live
                    .latency
                    .record(time_to_head, answered.into_std());
                forwarded.backend = Some(backend);
                forwarded.upstream_time = Some(time_to_head);
                let mut resp = match client_upgrade.take() {
                    Some(client_side) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let backend_side = hyper::upgrade::on(&mut resp);
                        tunnel::spawn(
                            client_side,
                            backend_side,
                            pool.timeouts.websocket_idle,
                            in_flight,
                            backend.label.clone(),
                        );
                        switched_for_client(resp)
                    }
                    _ => response_for_client(resp, pool.timeouts.body, in_flight, reuse),
                };
                if let Some(sticky) = &pool.sticky
                    && pinned != Some(index)
                    && let Some(cookie) =
                        sticky.set_cookie(index, peer.scheme == ClientScheme::Https)
                {
                    // New client, or its backend could not take it: pin it to this one.
                    resp.headers_mut()
                        .append(header::SET_COOKIE, cookie.clone());
                }
                break Ok(resp);
            }
            Ok(Err(e)) => {
                forwarded.backend = Some(backend);
                if let Some(why) = slot.failure() {
                    break Err(client_body_failed(why, client_ip, backend));
                }
                if e.stale_connection()
                    && !stale_retried
                    && stale_retry(pool, backend, &attempts, slot.resendable(), &e)
                {
                    // The backend is not at fault: the same one again, on a new connection.
                    stale_retried = true;
                    pin = Some(index);
                    fresh = true;
                    continue;
                }
                match attempt_lost(pool, backend, &attempts, slot.resendable(), &e) {
                    ControlFlow::Break(answer) => break Err(answer),
                    ControlFlow::Continue(failure) => last_failure = Some(failure),
                }
            }
            Err(_) => {
                forwarded.backend = Some(backend);
                let e = UpstreamError::timed_out(timeout);
                match attempt_lost(pool, backend, &attempts, slot.resendable(), &e) {
                    ControlFlow::Break(answer) => break Err(answer),
                    ControlFlow::Continue(failure) => last_failure = Some(failure),
                }
            }
        }
    };

    let mut resp = outcome.unwrap_or_else(error_response);
    if let Some(rules) = &rules {
        let status = resp.status();
        let upstream = forwarded.backend.map(|b| &*b.addr_text);
        rules.response(resp.headers_mut(), status, &parts.uri, upstream);
    }
    resp
}

// The failure paths below are out of line and `#[cold]`, so the request loop in `forward`
// reads in one screen and the compiler keeps its rarely run code apart. (Measured with
// callgrind, this changed neither the instructions per request nor the simulated
// instruction-cache misses by more than 2%.)

/// No backend is left to try: the last attempt's failure, or 503 when there was none.
#[cold]
#[inline(never)]
fn nothing_left(pool: &Pool, last_failure: Option<ProxyError>) -> ProxyError {
    match last_failure {
        None => {
            tracing::error!(upstream = %pool.name, "no backend available (all down)");
            ProxyError::NoBackend
        }
        Some(failure) => {
            tracing::error!(upstream = %pool.name, "every backend failed");
            failure
        }
    }
}

/// Every backend the request may go to stayed at its `max_conns`: the last attempt's failure,
/// or 503 with `Retry-After`. Counted by the queue, and logged per request only at debug: under
/// overload a line each would flood the log.
#[cold]
#[inline(never)]
fn all_busy(pool: &Pool, last_failure: Option<ProxyError>) -> ProxyError {
    tracing::debug!(upstream = %pool.name, "every backend is at its max_conns");
    last_failure.unwrap_or(ProxyError::BackendsBusy)
}

/// The backend answered `101` to a request that did not ask to switch: only a WebSocket's
/// Upgrade is forwarded, so this switch was never asked for.
#[cold]
#[inline(never)]
fn unasked_switch(pool: &Pool, backend: &Backend) -> ProxyError {
    backend.live.record_failure();
    backend.metrics.error(ErrorKind::Protocol);
    tracing::warn!(upstream = %pool.name, backend = %backend.addr, "backend switched protocols unasked; answering 502");
    ProxyError::InvalidUpstreamResponse
}

/// The attempt failed because the client's side broke, not the backend: the client is
/// answered for that.
#[cold]
#[inline(never)]
fn client_body_failed(why: ClientBodyFailure, client_ip: IpAddr, backend: &Backend) -> ProxyError {
    tracing::info!(client = %client_ip, backend = %backend.addr, ?why, "client request body failed");
    match why {
        ClientBodyFailure::Broken => ProxyError::ClientBodyBroken,
        ClientBodyFailure::TimedOut => ProxyError::ClientBodyTimeout,
        ClientBodyFailure::TooLarge => ProxyError::ClientBodyTooLarge,
    }
}

/// Counts a lost attempt against `backend`: `Break` with the client's answer when the request
/// may not go elsewhere, `Continue` with the failure to answer if later attempts fail too.
#[cold]
#[inline(never)]
fn attempt_lost(
    pool: &Pool,
    backend: &Backend,
    attempts: &Attempts<'_>,
    resendable: bool,
    e: &UpstreamError,
) -> ControlFlow<ProxyError, ProxyError> {
    backend.live.record_failure();
    backend.metrics.error(e.kind());
    let timed_out = e.kind() == ErrorKind::Timeout;
    pool.passive_failure(
        backend,
        if timed_out {
            "response timeout"
        } else {
            "request failed"
        },
    );
    let retry = attempts.retry(e, resendable);
    let not_retried = retry.err().map(RetryRefusal::label);
    if timed_out {
        tracing::error!(
            upstream = %pool.name,
            backend = %backend.addr,
            error = %e,
            retry = retry.is_ok(),
            not_retried,
            "backend sent no response head in time"
        );
    } else {
        tracing::warn!(
            upstream = %pool.name,
            backend = %backend.addr,
            error = %error_chain(e),
            retry = retry.is_ok(),
            not_retried,
            "backend request failed"
        );
    }
    if let Err(why) = retry {
        pool.metrics.retry_refused(why);
        return ControlFlow::Break(e.answer());
    }
    pool.metrics.retries.increment(1);
    ControlFlow::Continue(e.answer())
}

/// A kept-alive connection the backend had closed failed the attempt (nginx retries such a
/// request too, on another try of the same server): whether it may go out again, to the same
/// backend on a new connection. Only when resending is safe and the retry rules allow it;
/// neither passive health nor the backend's error count is charged.
#[cold]
#[inline(never)]
fn stale_retry(
    pool: &Pool,
    backend: &Backend,
    attempts: &Attempts<'_>,
    resendable: bool,
    e: &UpstreamError,
) -> bool {
    if attempts.retry(e, resendable).is_err() {
        return false;
    }
    tracing::debug!(upstream = %pool.name, backend = %backend.addr, error = %e, "kept-alive connection closed by the backend; sending again on a new one");
    pool.metrics.retries.increment(1);
    true
}

/// One attempt's request to `backend`: the rewritten head (`parts`, whose headers are
/// `headers`), the path (with the authority, for HTTP/2: the backend's, or the `Host` a header
/// rule set) and the body, or what the slot kept of it.
fn upstream_request(
    parts: &Parts,
    headers: http::HeaderMap,
    path: &PathAndQuery,
    pool: &Pool,
    backend: &Backend,
    rules: Option<&header_rules::Applying<'_>>,
    body: UpstreamRequestBody,
) -> Request<UpstreamRequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    if pool.h2 {
        *req.version_mut() = Version::HTTP_2;
        let authority = rules
            .and_then(header_rules::Applying::authority)
            .unwrap_or(&backend.authority);
        *req.uri_mut() = backend_uri(authority.clone(), path.clone());
    } else {
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = Uri::from(path.clone());
    }
    *req.headers_mut() = headers;
    // HTTP/1.0 may leave `Host` out; the HTTP/1.1 request made of it may not (RFC 9112 3.2:
    // a backend answers 400). The backend's address, as nginx's default `$proxy_host`.
    if parts.version == Version::HTTP_10
        && !pool.h2
        && !req.headers().contains_key(header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(backend.authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    req
}

/// Prepares the client's request head for a backend and returns the client address: `Host`
/// from the target where HTTP/2 or absolute form carry it, hop-by-hop headers out, forwarding
/// headers in.
fn rewrite_request_head(
    parts: &mut Parts,
    present: Present,
    peer: Peer,
    trusted_proxies: &[ipnet::IpNet],
    listener: &ListenerConfig,
) -> IpAddr {
    if let Some(authority) = parts.uri.authority()
        && (parts.version == Version::HTTP_2 || parts.uri.scheme().is_some())
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    remove_hop_by_hop(&mut parts.headers, present);
    if present.has(Present::EXPECT) {
        // hyper answers `Expect: 100-continue` to the client itself when the body is first
        // read; the backend receives the body without being asked to expect it.
        parts.headers.remove(header::EXPECT);
    }
    // Room for the forwarding headers and the request id at once, rather than a regrowth
    // of the map while they go in one by one.
    parts.headers.reserve(6);
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    set_forwarding(
        &mut parts.headers,
        present,
        peer.addr,
        trusted_proxies,
        peer.scheme.as_str(),
        listener.forwarded_headers,
    )
}

/// A backend's response as the client gets it: hop-by-hop headers out, framed by rproxy, the
/// body streamed under the body timeout, holding the backend's in-flight count and (HTTP/1)
/// its connection, which goes back to the backend's keep-alive cache at the body's end.
fn response_for_client(
    resp: Response<Incoming>,
    body_timeout: std::time::Duration,
    in_flight: InFlightGuard,
    reuse: Option<Reuse>,
) -> Response<ProxyBody> {
    let (mut head, body) = resp.into_parts();
    let present = Present::of(&head.headers);
    if present.has(Present::TRANSFER_ENCODING) {
        // hyper decoded the body by Transfer-Encoding (RFC 9112 6.3); a Content-Length beside
        // it describes nothing and would mis-frame the answer to the client.
        head.headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(&mut head.headers, present);
    Response::from_parts(
        head,
        ProxyBody::upstream(body, body_timeout, in_flight, reuse),
    )
}

/// The path and query sent upstream: the client's, less the route's prefix when it strips one.
fn upstream_path(parts: &Parts, strip_prefix: Option<&str>) -> PathAndQuery {
    let original = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match strip_prefix {
        // The stripped text is a suffix of a valid path and query, so it parses again.
        Some(prefix) => {
            PathAndQuery::try_from(strip_path(original.as_str(), prefix)).unwrap_or(original)
        }
        None => original,
    }
}

/// The path sent upstream once `prefix` is removed: `/v1/users?x` becomes `/users?x`, and
/// `/v1` becomes `/`.
fn strip_path(path_and_query: &str, prefix: &str) -> String {
    let rest = path_and_query
        .strip_prefix(prefix.trim_end_matches('/'))
        .unwrap_or(path_and_query);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

/// The backend's `101` as the client gets it: its headers (hop-by-hop ones replaced by the
/// upgrade's own) and no body; the bytes that follow go through the tunnel.
fn switched_for_client(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut head, _) = resp.into_parts();
    let present = Present::of(&head.headers);
    remove_hop_by_hop(&mut head.headers, present);
    tunnel::restore_upgrade_headers(&mut head.headers);
    Response::from_parts(head, ProxyBody::local(bytes::Bytes::new()))
}

/// `http://<backend>/<path and query>`: the client connects by the authority and sends the
/// path in origin form.
fn backend_uri(authority: http::uri::Authority, path: PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    // Scheme, authority and path are each already valid, and together they always form a URI.
    Uri::from_parts(parts).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_the_rest_of_the_path_and_the_query() {
        assert_eq!(strip_path("/v1/users?id=3", "/v1"), "/users?id=3");
        assert_eq!(strip_path("/v1", "/v1"), "/");
        assert_eq!(strip_path("/v1?x=1", "/v1"), "/?x=1");
        assert_eq!(strip_path("/static/a.js", "/static/"), "/a.js");
    }
}
