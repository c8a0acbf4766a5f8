//! The `[listeners.NAME]` sections: where clients connect, with their timeouts and limits.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use toml::de::DeValue;

use super::headers_section::headers;
use super::model::{ForwardedHeaders, ListenerConfig, Origin, RequestLimits, defaults};
use super::reader::{
    Reader, Table, Value, did_you_mean, duration_at_most_or, duration_or, flag, flag_or, get, join,
};
use super::route_section::routes;
use super::tcp_section::{HTTP_ONLY, TCP_ONLY, protocol};
use super::tls_section::tls;

/// Keys every listener takes; the HTTP-only and TCP-only ones are in `tcp_section`.
const COMMON_KEYS: &[&str] = &["listen", "upstream", "protocol", "max_connections"];

pub(super) fn listener(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
    whole: &Value<'_>,
    upstream_names: &[String],
) -> Option<ListenerDraft> {
    let known: Vec<&str> = [COMMON_KEYS, HTTP_ONLY, TCP_ONLY].concat();
    r.check_keys(t, path, &known);
    let listen_key = join(path, "listen");
    let listen = match get(t, "listen") {
        Some(v) => listen_addrs(r, &listen_key, v).map(|a| (a, r.origin(&listen_key, v.span()))),
        None => {
            r.error(path, whole.span(), "missing key `listen` (\"host:port\")");
            None
        }
    };
    let upstream_key = join(path, "upstream");
    let upstream = match get(t, "upstream") {
        Some(v) => r.string(v, &upstream_key).and_then(|name| {
            if upstream_names.iter().any(|n| n == name) {
                return Some(name.to_string());
            }
            let names: Vec<&str> = upstream_names.iter().map(String::as_str).collect();
            let hint = did_you_mean(name, &names)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            r.error(
                &upstream_key,
                v.span(),
                format!("no upstream named `{name}` is defined{hint}"),
            );
            None
        }),
        None => None,
    };
    let routes = match get(t, "routes") {
        Some(v) => routes(r, &join(path, "routes"), v, upstream_names),
        None => Some(Vec::new()),
    };
    if get(t, "upstream").is_none()
        && get(t, "routes").is_none()
        && get(t, "redirect_https").is_none()
    {
        r.error(
            path,
            whole.span(),
            "missing key `upstream` (the pool to send to) or `routes`",
        );
    }
    let mut connection_timeout = |key, default| {
        duration_at_most_or(r, t, path, key, defaults::CONNECTION_TIMEOUT_MAX, default)
    };
    let header_timeout = connection_timeout("header_timeout", defaults::HEADER_TIMEOUT);
    let keepalive_timeout = connection_timeout("keepalive_timeout", defaults::KEEPALIVE_TIMEOUT);
    let send_timeout = connection_timeout("send_timeout", defaults::SEND_TIMEOUT);
    let body_timeout = duration_or(r, t, path, "body_timeout", defaults::CLIENT_BODY_TIMEOUT);
    let mut number = |key: &str, min: u64, max: u64, default: u64, size: bool| match get(t, key) {
        Some(v) if size => r.size(v, &join(path, key), min, max),
        Some(v) => r.integer(v, &join(path, key), min, max),
        None => Some(default),
    };
    // hyper cannot buffer a head smaller than 8 KiB; 1 MiB is far beyond any real client.
    let max_header_size = number(
        "max_header_size",
        8192,
        1 << 20,
        defaults::MAX_HEADER_SIZE as u64,
        true,
    );
    let max_headers = number(
        "max_headers",
        1,
        10_000,
        defaults::MAX_HEADERS as u64,
        false,
    );
    let max_uri_length = number(
        "max_uri_length",
        16,
        65_534,
        defaults::MAX_URI_LENGTH as u64,
        true,
    );
    let max_connections = number(
        "max_connections",
        1,
        10_000_000,
        defaults::MAX_CONNECTIONS as u64,
        false,
    );
    let streams = number(
        "http2_max_concurrent_streams",
        1,
        10_000,
        u64::from(defaults::HTTP2_MAX_CONCURRENT_STREAMS),
        false,
    );
    let max_body_size = match get(t, "max_body_size") {
        Some(v) => r
            .size(v, &join(path, "max_body_size"), 0, u64::MAX)
            .map(Some),
        None => Some(None),
    };
    let allow_underscores = flag(r, t, path, "allow_underscores_in_headers");
    let tls = match get(t, "tls") {
        Some(v) => tls(r, &join(path, "tls"), v).map(Some),
        None => Some(None),
    };
    let redirect_https = flag(r, t, path, "redirect_https");
    let tcp = protocol(r, path, t);
    let headers = headers(r, path, t);
    let forwarded_headers = match get(t, "forwarded_headers") {
        Some(v) => forwarded_headers(r, &join(path, "forwarded_headers"), v),
        None => Some(ForwardedHeaders::ALL),
    };
    let request_id = flag_or(r, t, path, "request_id", true);
    if let (Some(v), Some(Some(_))) = (get(t, "redirect_https"), &tls) {
        r.error(
            &join(path, "redirect_https"),
            v.span(),
            "a listener with `tls` is already https; redirect_https belongs on a plain one",
        );
    }
    let upstream = match get(t, "upstream") {
        Some(_) => Some(upstream?),
        None => None,
    };
    let routes = routes?;
    let (listen, listen_origin) = listen?;
    Some(ListenerDraft {
        config: ListenerConfig {
            name: path.trim_start_matches("listeners.").to_string(),
            listen,
            upstream,
            routes,
            tls: tls?,
            redirect_https: redirect_https?,
            tcp: tcp?,
            header_timeout,
            keepalive_timeout,
            body_timeout,
            send_timeout,
            limits: RequestLimits {
                max_header_size: usize::try_from(max_header_size?).ok()?,
                max_headers: usize::try_from(max_headers?).ok()?,
                max_uri_length: usize::try_from(max_uri_length?).ok()?,
                max_body_size: max_body_size?,
                allow_underscores_in_headers: allow_underscores?,
            },
            max_connections: usize::try_from(max_connections?).ok()?,
            http2_max_concurrent_streams: u32::try_from(streams?).ok()?,
            // Read once every limit is known (`rate_limit_section::attach_rate_limits`).
            rate_limits: Vec::new(),
            headers: headers?,
            forwarded_headers: forwarded_headers?,
            request_id: request_id?,
        },
        listen_origin,
        upstream_origin: get(t, "upstream").map(|v| r.origin(&upstream_key, v.span())),
    })
}

/// `forwarded_headers = ["x-forwarded-for", ...]`: a list of the names rproxy can write, in any
/// case; an empty list writes none.
fn forwarded_headers(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<ForwardedHeaders> {
    let items = r.array(v, key)?;
    let mut out = Some(ForwardedHeaders::NONE);
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(name) = r.string(item, &item_key) else {
            out = None;
            continue;
        };
        let lower = name.to_ascii_lowercase();
        match ForwardedHeaders::NAMES
            .iter()
            .find(|(known, _)| *known == lower)
        {
            Some(&(_, bit)) => out = out.map(|set| set.and(bit)),
            None => {
                let names: Vec<&str> = ForwardedHeaders::NAMES.iter().map(|(n, _)| *n).collect();
                let hint = did_you_mean(&lower, &names)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                r.error(
                    &item_key,
                    item.span(),
                    format!(
                        "`{name}` is not a forwarding header rproxy writes ({}){hint}",
                        names.join(", ")
                    ),
                );
                out = None;
            }
        }
    }
    out
}

/// A listener with the place of its `listen` key, for the duplicate-address check.
pub(super) struct ListenerDraft {
    pub(super) config: ListenerConfig,
    listen_origin: Origin,
    /// Where `upstream` is, for the checks made once every upstream is read.
    pub(super) upstream_origin: Option<Origin>,
}

fn listen_addrs(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<Vec<SocketAddr>> {
    let items: Vec<(String, &Value<'_>)> = match v.get_ref() {
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{key}[{i}]"), item))
            .collect(),
        _ => vec![(key.to_string(), v)],
    };
    if items.is_empty() {
        r.error(key, v.span(), "needs at least one \"host:port\"");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (item_key, item) in items {
        let Some(text) = r.string(item, &item_key) else {
            ok = false;
            continue;
        };
        match text.parse::<SocketAddr>() {
            Ok(addr) => out.push(addr),
            Err(_) => {
                ok = false;
                r.error(
                    &item_key,
                    item.span(),
                    format!("`{text}` is not an IP address and port, such as \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::1]:8080\""),
                );
            }
        }
    }
    ok.then_some(out)
}

/// A listen address may be used by one listener only.
pub(super) fn check_listen_addrs(
    r: &mut Reader<'_>,
    root: &Table<'_>,
    listeners: &BTreeMap<String, ListenerDraft>,
) {
    if get(root, "listeners").is_none() {
        r.error(
            "listeners",
            0..0,
            "no listeners: add a [listeners.NAME] section with `listen` and `upstream`",
        );
    }
    let mut bound: HashMap<SocketAddr, &str> = HashMap::new();
    for (name, draft) in listeners {
        for addr in &draft.config.listen {
            if addr.port() == 0 {
                continue; // each port-0 socket gets its own port
            }
            if let Some(other) = bound.insert(*addr, name) {
                r.error_at(
                    &draft.listen_origin,
                    format!("listen address {addr} is also used by listener `{other}`"),
                );
            }
        }
    }
}
