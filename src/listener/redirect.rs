//! `redirect_https = true`: a plain listener that only sends clients to https (nginx's
//! `return 308 https://$host$request_uri`). Answered by the listener before routing; 308 keeps
//! the method and body, unlike 301.

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};

use crate::state::Snapshot;
use crate::upstream::ProxyBody;
use crate::upstream::local_response;

/// The redirect for one request. The https port is that of the configuration's first https
/// listener (left out when it is 443).
pub(super) fn to_https(parts: &Parts, snapshot: &Snapshot) -> Response<ProxyBody> {
    let host = parts
        .uri
        .host()
        .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
        .map(strip_port);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return local_response(StatusCode::BAD_REQUEST, true);
    };
    // The bound port, which differs from the configured one for port 0.
    let port = snapshot
        .config
        .listeners
        .iter()
        .find(|(_, l)| l.tls.is_some())
        .and_then(|(name, _)| snapshot.listener(name))
        .and_then(|l| l.addresses.first())
        .map(|a| a.port())
        .filter(|&p| p != 443)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    match HeaderValue::try_from(location) {
        Ok(location) => {
            let mut resp = local_response(StatusCode::PERMANENT_REDIRECT, false);
            resp.headers_mut().insert(header::LOCATION, location);
            resp
        }
        Err(_) => local_response(StatusCode::BAD_REQUEST, true),
    }
}

/// `example.com:80` is `example.com`; `[::1]:80` is `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[..i].contains(':') || host[..i].ends_with(']') => &host[..i],
        _ => host,
    }
}
