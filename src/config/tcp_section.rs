//! `protocol = "tcp"` listeners (layer 4): their own keys, the HTTP keys they refuse, and the
//! upstream settings that mean nothing without HTTP.

use super::key_template::KeyPart;
use super::model::{BalancePolicy, Origin, TcpSettings, UpstreamConfig, defaults};
use super::reader::{Reader, Table, duration_or, flag, flag_or, get, join};

/// Keys only an HTTP listener understands.
pub(super) const HTTP_ONLY: &[&str] = &[
    "routes",
    "tls",
    "redirect_https",
    "header_timeout",
    "keepalive_timeout",
    "body_timeout",
    "send_timeout",
    "max_header_size",
    "max_headers",
    "max_uri_length",
    "max_body_size",
    "allow_underscores_in_headers",
    "http2_max_concurrent_streams",
    "limits",
    "headers",
    "forwarded_headers",
    "request_id",
];

/// Keys only a TCP listener understands.
pub(super) const TCP_ONLY: &[&str] = &[
    "proxy_protocol",
    "accept_proxy_protocol",
    "idle_timeout",
    "splice",
];

/// `protocol = "http" | "tcp"`: the TCP settings for a TCP listener, `None` for HTTP.
pub(super) fn protocol(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
) -> Option<Option<TcpSettings>> {
    let tcp = match get(t, "protocol") {
        None => false,
        Some(v) => match r.string(v, &join(path, "protocol"))? {
            "http" => false,
            "tcp" => true,
            other => {
                r.error(
                    &join(path, "protocol"),
                    v.span(),
                    format!("`{other}` is not \"http\" or \"tcp\""),
                );
                return None;
            }
        },
    };
    let (wrong, why) = if tcp {
        (
            HTTP_ONLY,
            "applies to HTTP listeners only (protocol = \"tcp\" here)",
        )
    } else {
        (TCP_ONLY, "applies to protocol = \"tcp\" listeners only")
    };
    for key in wrong {
        if let Some(v) = get(t, key) {
            r.error(&join(path, key), v.span(), why);
        }
    }
    if !tcp {
        return Some(None);
    }
    let send_proxy_protocol = match get(t, "proxy_protocol") {
        None => Some(None),
        Some(v) => match r.string(v, &join(path, "proxy_protocol"))? {
            "v1" => Some(Some(1)),
            "v2" => Some(Some(2)),
            other => {
                r.error(
                    &join(path, "proxy_protocol"),
                    v.span(),
                    format!("`{other}` is not \"v1\" or \"v2\""),
                );
                None
            }
        },
    };
    let accept_proxy_protocol = flag(r, t, path, "accept_proxy_protocol");
    let idle_timeout = duration_or(r, t, path, "idle_timeout", defaults::TCP_IDLE_TIMEOUT);
    let splice = flag_or(r, t, path, "splice", true);
    Some(Some(TcpSettings {
        send_proxy_protocol: send_proxy_protocol?,
        accept_proxy_protocol: accept_proxy_protocol?,
        idle_timeout,
        splice: splice?,
    }))
}

/// An upstream a TCP listener sends to may not rely on HTTP: no sticky cookies, no hash keys
/// other than `$remote_addr`, no HTTP/2, no HTTP health checks, no TLS to backends. Errors
/// point at the listener's `upstream` key (`origin`).
pub(super) fn check_tcp_upstream(r: &mut Reader<'_>, origin: &Origin, upstream: &UpstreamConfig) {
    let mut refuse = |what: &str| {
        r.error_at(
            origin,
            format!(
                "upstream `{}` {what}, which needs HTTP; a protocol = \"tcp\" listener cannot use it",
                upstream.name
            ),
        );
    };
    if upstream.sticky.is_some() {
        refuse("has sticky cookies");
    }
    if let BalancePolicy::Hash { key, .. } = &upstream.balance
        && key
            .parts
            .iter()
            .any(|p| !matches!(p, KeyPart::RemoteAddr | KeyPart::Literal(_)))
    {
        refuse("hashes on a key other than $remote_addr");
    }
    if upstream.h2 {
        refuse("has h2 = true");
    }
    if upstream
        .health_check
        .as_ref()
        .is_some_and(|h| h.http.is_some())
    {
        refuse("has an HTTP health check (use type = \"tcp\")");
    }
    if upstream.tls.is_some() {
        refuse("has tls (TLS to backends is for HTTP; pass TLS through as raw TCP)");
    }
    if !upstream.headers.is_empty() {
        refuse("has header rules");
    }
}
