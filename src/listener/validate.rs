//! The edge check: what a client request must be before rproxy forwards it.
//!
//! hyper's parser already refuses broken framing (conflicting `Content-Length`, bad chunk
//! sizes, obs-fold, HTTP/0.9); this adds what a proxy in front of trusting app servers must
//! refuse on top, as strictly as HAProxy: a missing, doubled or invalid `Host`, a request target
//! that is not origin or absolute form, `CONNECT`, and any `Transfer-Encoding` other than a
//! single `chunked` (or next to `Content-Length`), which is how requests get smuggled past one
//! parser and into another. It also strips from the request what must never reach a backend.
//! Pure: runs on the parsed request head, no I/O. Next in the flow: the router.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};

use crate::config::RequestLimits;
use crate::header_text::items;

use super::head_scan::{CONTENT_LENGTH, FRAGMENT, TRANSFER_ENCODING};

/// Why a request is answered by rproxy itself instead of being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
    /// Framing can no longer be trusted: close the connection after answering.
    pub(crate) close: bool,
}

/// What to do with a request after the edge check.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Forward,
    /// `OPTIONS *` asks about the server, not a resource: rproxy answers it.
    ServerOptions,
    Reject(Rejection),
}

const fn reject(status: StatusCode, reason: &'static str, close: bool) -> Verdict {
    Verdict::Reject(Rejection {
        status,
        reason,
        close,
    })
}

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Checks a request head and removes from it what must not be forwarded. `raw` holds what
/// `head_scan` saw in the raw head that the parsed request no longer shows.
pub(crate) fn check(parts: &mut Parts, limits: &RequestLimits, raw: u8) -> Verdict {
    if parts.method == Method::CONNECT {
        return reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not proxied",
            true,
        );
    }
    if raw & FRAGMENT != 0 {
        return reject(
            StatusCode::BAD_REQUEST,
            "request target contains a fragment",
            false,
        );
    }
    if raw & (CONTENT_LENGTH | TRANSFER_ENCODING) == CONTENT_LENGTH | TRANSFER_ENCODING {
        return reject(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding",
            true,
        );
    }
    if target_len(&parts.uri) > limits.max_uri_length {
        return reject(StatusCode::URI_TOO_LONG, "request target too long", false);
    }
    if let Some(verdict) = target_form(parts) {
        return verdict;
    }
    if let Some(rejection) = check_host(parts) {
        return rejection;
    }
    if let Some(rejection) = check_framing(parts, limits) {
        return rejection;
    }
    strip_dangerous_headers(&mut parts.headers, limits.allow_underscores_in_headers);
    Verdict::Forward
}

/// The request target's length as written on the request line, as `head_scan` counts it:
/// path and query, after the scheme and authority in absolute form.
fn target_len(uri: &http::Uri) -> usize {
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            scheme.len() + "://".len() + authority.as_str().len() + path
        }
        _ => path,
    }
}

/// Origin form (`/path`) and absolute form (`http://host/path`) are forwarded; `OPTIONS *` is
/// answered; anything else (`GET admin`, `GET *`, authority form) is refused.
fn target_form(parts: &Parts) -> Option<Verdict> {
    let uri = &parts.uri;
    if uri.scheme().is_some() {
        let scheme = uri.scheme_str().unwrap_or("");
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
            return Some(reject(
                StatusCode::BAD_REQUEST,
                "unsupported scheme in request target",
                false,
            ));
        }
        return None;
    }
    if uri.authority().is_some() {
        return Some(reject(
            StatusCode::BAD_REQUEST,
            "request target is not a path",
            false,
        ));
    }
    let path = uri.path();
    if path == "*" {
        return Some(if parts.method == Method::OPTIONS {
            Verdict::ServerOptions
        } else {
            reject(
                StatusCode::BAD_REQUEST,
                "`*` is a target only for OPTIONS",
                false,
            )
        });
    }
    (!path.starts_with('/')).then(|| {
        reject(
            StatusCode::BAD_REQUEST,
            "request target is not a path",
            false,
        )
    })
}

/// RFC 9112 3.2: an HTTP/1.1 request has exactly one valid `Host`; HTTP/1.0 at most one;
/// HTTP/2 carries `:authority` and may add a `Host`, which must then be valid too.
fn check_host(parts: &Parts) -> Option<Verdict> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some(reject(
            StatusCode::BAD_REQUEST,
            "more than one Host header",
            true,
        ));
    }
    match first {
        Some(host) if !valid_host(host.as_bytes()) => {
            Some(reject(StatusCode::BAD_REQUEST, "invalid Host header", true))
        }
        None if parts.version == Version::HTTP_11 => Some(reject(
            StatusCode::BAD_REQUEST,
            "HTTP/1.1 request without Host",
            true,
        )),
        None if parts.version == Version::HTTP_2 && parts.uri.authority().is_none() => {
            Some(reject(
                StatusCode::BAD_REQUEST,
                "HTTP/2 request without :authority",
                true,
            ))
        }
        _ => None,
    }
}

/// `host[:port]`: a registered name (letters, digits, `-`, `.`, `_`), an IPv4 address, or an
/// IPv6 address in brackets; the port, if any, is 1 to 5 digits.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|b| *b == b']') else {
            return false;
        };
        let inside = std::str::from_utf8(&value[1..end]).unwrap_or("");
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (&value[..=end], &value[end + 1..])
    } else {
        match value.iter().rposition(|b| *b == b':') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, &value[value.len()..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    let host_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    port_ok && host_ok
}

/// Body framing a backend could read differently from rproxy is refused, and the connection
/// closed, since where the next request starts is no longer certain.
fn check_framing(parts: &mut Parts, limits: &RequestLimits) -> Option<Verdict> {
    let headers = &mut parts.headers;
    // One pass over the names rather than two lookups: most requests carry neither.
    let (mut has_te, mut has_cl) = (false, false);
    for name in headers.keys() {
        has_te |= name == header::TRANSFER_ENCODING;
        has_cl |= name == header::CONTENT_LENGTH;
    }
    if has_te {
        if parts.version != Version::HTTP_11 {
            return Some(reject(
                StatusCode::BAD_REQUEST,
                "Transfer-Encoding outside HTTP/1.1",
                true,
            ));
        }
        if has_cl {
            return Some(reject(
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding",
                true,
            ));
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(items);
        let only_chunked = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Some(reject(
                StatusCode::BAD_REQUEST,
                "Transfer-Encoding other than a single chunked",
                true,
            ));
        }
    }
    if has_cl {
        // hyper has refused differing or malformed values; identical repeats are folded into
        // one so the backend cannot pick a different one.
        let first = headers.get(header::CONTENT_LENGTH).cloned();
        let length = first
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (Some(first), Some(length)) = (first, length) else {
            return Some(reject(
                StatusCode::BAD_REQUEST,
                "invalid Content-Length",
                true,
            ));
        };
        headers.insert(header::CONTENT_LENGTH, first);
        if limits.max_body_size.is_some_and(|max| length > max) {
            return Some(reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                true,
            ));
        }
    }
    None
}

/// Removes headers a backend could misread: names with `_` (unless allowed), which many
/// frameworks fold into the dashed name, and the HTTP/2 upgrade settings.
fn strip_dangerous_headers(headers: &mut HeaderMap, allow_underscores: bool) {
    // One pass over the names finds both kinds; a lookup of `HTTP2-Settings` alone (hashing
    // its name) cost more, on every request, and almost none carries either.
    let dangerous =
        |k: &HeaderName| *k == HTTP2_SETTINGS || (!allow_underscores && k.as_str().contains('_'));
    if headers.keys().any(dangerous) {
        let names: Vec<HeaderName> = headers.keys().filter(|k| dangerous(k)).cloned().collect();
        for name in names {
            headers.remove(&name);
        }
    }
}

/// The `Allow` header for rproxy's own answer to `OPTIONS *`.
pub(crate) const SERVER_ALLOW: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH");

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_header_size: 32 * 1024,
            max_headers: 100,
            max_uri_length: 64,
            max_body_size: Some(1000),
            allow_underscores_in_headers: false,
        }
    }

    fn verdict(req: http::request::Builder) -> (Verdict, Parts) {
        let (mut parts, ()) = req.body(()).expect("request").into_parts();
        (check(&mut parts, &limits(), 0), parts)
    }

    fn status(v: &Verdict) -> Option<u16> {
        match v {
            Verdict::Reject(r) => Some(r.status.as_u16()),
            _ => None,
        }
    }

    #[test]
    fn host_rules() {
        let ok = verdict(Request::get("/").header("host", "a.example:8080")).0;
        assert_eq!(ok, Verdict::Forward);
        let none = verdict(Request::get("/")).0;
        assert_eq!(status(&none), Some(400));
        let two = verdict(Request::get("/").header("host", "a").header("host", "b")).0;
        assert_eq!(status(&two), Some(400));
        let http10 = verdict(Request::get("/").version(Version::HTTP_10)).0;
        assert_eq!(http10, Verdict::Forward);
        for bad in ["a b", "a@b", "a:", "a:x", "[::1", "[zz]:1", "a:123456", ""] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        for good in [
            "a",
            "a.b-c_d",
            "1.2.3.4:80",
            "[::1]",
            "[::1]:8080",
            "localhost:1",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
    }

    #[test]
    fn target_forms() {
        let h = |r: http::request::Builder| r.header("host", "a");
        assert_eq!(status(&verdict(h(Request::get("admin"))).0), Some(400));
        assert_eq!(status(&verdict(h(Request::get("*"))).0), Some(400));
        assert_eq!(verdict(h(Request::options("*"))).0, Verdict::ServerOptions);
        assert_eq!(status(&verdict(h(Request::connect("a:443"))).0), Some(405));
        assert_eq!(status(&verdict(h(Request::get("ftp://a/b"))).0), Some(400));
        assert_eq!(verdict(h(Request::get("http://a/b"))).0, Verdict::Forward);
        let long = format!("/{}", "a".repeat(100));
        assert_eq!(
            status(&verdict(h(Request::get(long.as_str()))).0),
            Some(414)
        );
    }

    #[test]
    fn framing_rules() {
        let post = || Request::post("/").header("host", "a");
        let te = |v: &str| post().header("transfer-encoding", v);
        assert_eq!(verdict(te("chunked")).0, Verdict::Forward);
        assert_eq!(verdict(te("Chunked")).0, Verdict::Forward);
        for bad in ["chunked, chunked", "gzip, chunked", "gzip", "chunked, gzip"] {
            assert_eq!(status(&verdict(te(bad)).0), Some(400), "{bad}");
        }
        let split = te("chunked").header("transfer-encoding", "chunked");
        assert_eq!(status(&verdict(split).0), Some(400));
        let both = te("chunked").header("content-length", "5");
        assert_eq!(status(&verdict(both).0), Some(400));
        let old = te("chunked").version(Version::HTTP_10);
        assert_eq!(status(&verdict(old).0), Some(400));
        let big = post().header("content-length", "1001");
        assert_eq!(status(&verdict(big).0), Some(413));
        let (v, parts) = verdict(
            post()
                .header("content-length", "5")
                .header("content-length", "5"),
        );
        assert_eq!(v, Verdict::Forward);
        assert_eq!(parts.headers.get_all("content-length").iter().count(), 1);
    }

    #[test]
    fn underscore_and_h2c_headers_are_dropped() {
        let (v, parts) = verdict(
            Request::get("/")
                .header("host", "a")
                .header("content_length", "5")
                .header("x_forwarded_for", "1.2.3.4")
                .header("http2-settings", "AAA")
                .header("x-ok", "1"),
        );
        assert_eq!(v, Verdict::Forward);
        let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["host", "x-ok"]);

        // With underscores allowed, `HTTP2-Settings` still goes and they stay.
        let (mut parts, ()) = Request::get("/")
            .header("host", "a")
            .header("x_app", "1")
            .header("http2-settings", "AAA")
            .body(())
            .expect("request")
            .into_parts();
        let allowing = RequestLimits {
            allow_underscores_in_headers: true,
            ..limits()
        };
        assert_eq!(check(&mut parts, &allowing, 0), Verdict::Forward);
        let names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["host", "x_app"]);
    }

    /// `verdict` for a request whose raw head showed `raw` (`head_scan`'s flags).
    fn verdict_raw(req: http::request::Builder, raw: u8) -> Verdict {
        let (mut parts, ()) = req.body(()).expect("request").into_parts();
        check(&mut parts, &limits(), raw)
    }

    #[test]
    fn what_only_the_raw_head_showed_is_refused() {
        use super::super::head_scan::{CONTENT_LENGTH, FRAGMENT, TRANSFER_ENCODING};
        // hyper keeps `Transfer-Encoding` and drops `Content-Length`: the parsed head of a
        // request that had both looks like a plain chunked one.
        let chunked = || {
            Request::post("/")
                .header("host", "a")
                .header("transfer-encoding", "chunked")
        };
        assert_eq!(verdict_raw(chunked(), 0), Verdict::Forward);
        assert_eq!(verdict_raw(chunked(), TRANSFER_ENCODING), Verdict::Forward);
        assert_eq!(
            verdict_raw(chunked(), CONTENT_LENGTH | TRANSFER_ENCODING),
            reject(
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding",
                true
            ),
            "the framing is in doubt: refused, and the connection closed"
        );
        let sized = Request::post("/")
            .header("host", "a")
            .header("content-length", "5");
        assert_eq!(verdict_raw(sized, CONTENT_LENGTH), Verdict::Forward);
        // A `#` fragment (which `http::Uri` drops) is refused; the framing is sound, so the
        // connection stays open.
        let get = || Request::get("/a").header("host", "a");
        assert_eq!(
            verdict_raw(get(), FRAGMENT),
            reject(
                StatusCode::BAD_REQUEST,
                "request target contains a fragment",
                false
            )
        );
        assert_eq!(
            status(&verdict_raw(
                get(),
                FRAGMENT | CONTENT_LENGTH | TRANSFER_ENCODING
            )),
            Some(400)
        );
    }
}
