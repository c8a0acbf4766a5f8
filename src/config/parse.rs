//! The rproxy schema: turns the spanned TOML tree into a validated [`Config`].
//!
//! Every section is read with `Reader`, which records problems instead of stopping, then
//! cross-references (a listener naming an unknown upstream, an address used twice) are checked.
//! Keys and defaults are documented in `config/upstream.toml` and the README.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::error::ConfigErrors;
use super::model::{
    BalancePolicy, Config, ListenerConfig, Origin, RequestLimits, ServerAddr, ServerConfig,
    UpstreamConfig, defaults,
};
use super::reader::{Reader, Table, Value, did_you_mean, entries, get, join};

const TOP_KEYS: &[&str] = &[
    "workers",
    "log_level",
    "drain_timeout",
    "trusted_proxies",
    "listeners",
    "upstreams",
];
const LISTENER_KEYS: &[&str] = &[
    "listen",
    "upstream",
    "header_timeout",
    "keepalive_timeout",
    "body_timeout",
    "send_timeout",
    "max_header_size",
    "max_headers",
    "max_uri_length",
    "max_body_size",
    "max_connections",
    "allow_underscores_in_headers",
    "http2_max_concurrent_streams",
];
const UPSTREAM_KEYS: &[&str] = &[
    "balance",
    "servers",
    "connect_timeout",
    "response_timeout",
    "body_timeout",
    "keepalive_timeout",
    "keepalive_connections",
];
const SERVER_KEYS: &[&str] = &["addr", "weight", "backup", "down"];

/// Parses and validates configuration text. `file` is only used to name it in errors.
pub fn parse(file: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut r = Reader::new(file, src);
    let (doc, syntax_errors) = DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        // A partly parsed tree would only add confusing follow-on errors: report syntax alone.
        for e in syntax_errors {
            let span = e.span().unwrap_or(0..0);
            r.error("", span, format!("TOML syntax: {}", e.message().trim_end()));
        }
        r.errors.dedup();
        return Err(ConfigErrors(r.errors));
    }
    let root = doc.get_ref();
    r.check_keys(root, "", TOP_KEYS);

    let workers = get(root, "workers")
        .and_then(|v| r.integer(v, "workers", 1, 1024))
        .map(|n| n as usize);
    let log_level = get(root, "log_level").and_then(|v| log_level(&mut r, v));
    let drain_timeout = duration_or(&mut r, root, "", "drain_timeout", defaults::DRAIN_TIMEOUT);
    let trusted_proxies = get(root, "trusted_proxies")
        .map(|v| trusted_proxies(&mut r, v))
        .unwrap_or_default();

    // Names as written, so an upstream with errors of its own still counts as defined.
    let upstream_names: Vec<String> = match get(root, "upstreams").map(|v| v.get_ref()) {
        Some(DeValue::Table(t)) => t.iter().map(|(k, _)| k.get_ref().to_string()).collect(),
        _ => Vec::new(),
    };
    let upstreams = read_section(&mut r, root, "upstreams", upstream);
    let listeners = read_section(&mut r, root, "listeners", |r, path, t, whole| {
        listener(r, path, t, whole, &upstream_names)
    });
    check_listen_addrs(&mut r, root, &listeners);

    if !r.errors.is_empty() {
        r.errors.sort_by_key(|e| (e.line, e.column));
        r.errors.dedup();
        return Err(ConfigErrors(r.errors));
    }
    Ok(Config {
        source: file.to_path_buf(),
        workers,
        log_level,
        drain_timeout,
        trusted_proxies,
        listeners: listeners.into_iter().map(|(k, d)| (k, d.config)).collect(),
        upstreams,
    })
}

/// Reads `[section.NAME]` tables with `read`, keyed by NAME.
fn read_section<T>(
    r: &mut Reader<'_>,
    root: &Table<'_>,
    section: &str,
    mut read: impl FnMut(&mut Reader<'_>, &str, &Table<'_>, &Value<'_>) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(v) = get(root, section) else {
        return out;
    };
    let Some(table) = r.table(v, section) else {
        return out;
    };
    for (name, value) in entries(table) {
        let path = join(section, name.get_ref());
        if !valid_name(name.get_ref()) {
            r.error(
                &path,
                name.span(),
                "names may use only letters, digits, '-' and '_'",
            );
        }
        let Some(t) = r.table(value, &path) else {
            continue;
        };
        if let Some(item) = read(r, &path, t, value) {
            out.insert(name.get_ref().to_string(), item);
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn listener(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
    whole: &Value<'_>,
    upstream_names: &[String],
) -> Option<ListenerDraft> {
    r.check_keys(t, path, LISTENER_KEYS);
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
        None => {
            r.error(
                path,
                whole.span(),
                "missing key `upstream` (the pool to send to)",
            );
            None
        }
    };
    let header_timeout = duration_or(r, t, path, "header_timeout", defaults::HEADER_TIMEOUT);
    let keepalive_timeout =
        duration_or(r, t, path, "keepalive_timeout", defaults::KEEPALIVE_TIMEOUT);
    let body_timeout = duration_or(r, t, path, "body_timeout", defaults::CLIENT_BODY_TIMEOUT);
    let send_timeout = duration_or(r, t, path, "send_timeout", defaults::SEND_TIMEOUT);
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
    let upstream = upstream?;
    let (listen, listen_origin) = listen?;
    Some(ListenerDraft {
        config: ListenerConfig {
            name: path.trim_start_matches("listeners.").to_string(),
            listen,
            upstream,
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
        },
        listen_origin,
    })
}

/// A listener with the place of its `listen` key, for the duplicate-address check.
struct ListenerDraft {
    config: ListenerConfig,
    listen_origin: Origin,
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

fn upstream(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
    whole: &Value<'_>,
) -> Option<UpstreamConfig> {
    r.check_keys(t, path, UPSTREAM_KEYS);
    let balance = match get(t, "balance") {
        None => Some(BalancePolicy::RoundRobin),
        Some(v) => {
            let key = join(path, "balance");
            let name = r.string(v, &key)?;
            let policy = BalancePolicy::from_name(name);
            if policy.is_none() {
                let hint = did_you_mean(name, BalancePolicy::NAMES)
                    .map(|c| format!("did you mean `{c}`? "))
                    .unwrap_or_default();
                r.error(
                    &key,
                    v.span(),
                    format!(
                        "unknown policy `{name}`; {hint}known policies: {}",
                        BalancePolicy::NAMES.join(", ")
                    ),
                );
            }
            policy
        }
    };
    let servers = match get(t, "servers") {
        Some(v) => servers(r, &join(path, "servers"), v),
        None => {
            r.error(
                path,
                whole.span(),
                "missing key `servers` (the backends of this pool)",
            );
            None
        }
    };
    let connect_timeout = duration_or(r, t, path, "connect_timeout", defaults::CONNECT_TIMEOUT);
    let response_timeout = duration_or(r, t, path, "response_timeout", defaults::RESPONSE_TIMEOUT);
    let body_timeout = duration_or(r, t, path, "body_timeout", defaults::UPSTREAM_BODY_TIMEOUT);
    let keepalive_timeout = duration_or(
        r,
        t,
        path,
        "keepalive_timeout",
        defaults::UPSTREAM_KEEPALIVE_TIMEOUT,
    );
    let keepalive_connections = match get(t, "keepalive_connections") {
        Some(v) => r
            .integer(v, &join(path, "keepalive_connections"), 0, 100_000)
            .map(|n| n as usize),
        None => Some(defaults::UPSTREAM_KEEPALIVE_CONNECTIONS),
    };
    Some(UpstreamConfig {
        name: path.trim_start_matches("upstreams.").to_string(),
        balance: balance?,
        servers: servers?,
        connect_timeout,
        response_timeout,
        body_timeout,
        keepalive_timeout,
        keepalive_connections: keepalive_connections?,
    })
}

fn servers(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<Vec<ServerConfig>> {
    let items = r.array(v, key)?;
    if items.is_empty() {
        r.error(key, v.span(), "an upstream needs at least one server");
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut seen: HashMap<ServerAddr, String> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(server) = server(r, &item_key, item) else {
            ok = false;
            continue;
        };
        if let Some(first) = seen.get(&server.addr) {
            r.error_at(
                &server.origin,
                format!("`{}` is already listed at {first}", server.addr),
            );
            ok = false;
            continue;
        }
        seen.insert(server.addr.clone(), item_key);
        out.push(server);
    }
    ok.then_some(out)
}

fn server(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<ServerConfig> {
    match v.get_ref() {
        DeValue::String(text) => {
            let addr = server_addr(r, key, v, text)?;
            Some(ServerConfig {
                addr,
                weight: NonZeroU32::MIN,
                backup: false,
                down: false,
                origin: r.origin(key, v.span()),
            })
        }
        DeValue::Table(t) => {
            r.check_keys(t, key, SERVER_KEYS);
            let addr_key = join(key, "addr");
            let addr = match get(t, "addr") {
                Some(a) => {
                    let text = r.string(a, &addr_key)?;
                    server_addr(r, &addr_key, a, text)
                        .map(|addr| (addr, r.origin(&addr_key, a.span())))
                }
                None => {
                    r.error(key, v.span(), "missing key `addr` (\"host:port\")");
                    None
                }
            };
            let weight = match get(t, "weight") {
                Some(w) => r
                    .integer(w, &join(key, "weight"), 1, u64::from(defaults::MAX_WEIGHT))
                    .and_then(|n| NonZeroU32::new(u32::try_from(n).ok()?)),
                None => Some(NonZeroU32::MIN),
            };
            let backup = flag(r, t, key, "backup");
            let down = flag(r, t, key, "down");
            let (addr, origin) = addr?;
            Some(ServerConfig {
                addr,
                weight: weight?,
                backup: backup?,
                down: down?,
                origin,
            })
        }
        other => {
            r.error(
                key,
                v.span(),
                format!(
                    "expected \"host:port\" or {{ addr = \"host:port\", weight = N }}, found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

fn flag(r: &mut Reader<'_>, t: &Table<'_>, path: &str, key: &str) -> Option<bool> {
    match get(t, key) {
        Some(v) => r.boolean(v, &join(path, key)),
        None => Some(false),
    }
}

/// `"10.0.0.1:3000"`, `"[::1]:3000"` or `"app1.internal:3000"`.
fn server_addr(r: &mut Reader<'_>, key: &str, v: &Value<'_>, text: &str) -> Option<ServerAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            r.error(key, v.span(), "port 0 is not a backend port");
            return None;
        }
        return Some(ServerAddr::Ip(addr));
    }
    let parsed = text.rsplit_once(':').and_then(|(host, port)| {
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63 && label_chars_ok(label));
        valid_host.then(|| ServerAddr::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    });
    if parsed.is_none() {
        r.error(
            key,
            v.span(),
            format!("`{text}` is not a backend address; write \"host:port\" such as \"127.0.0.1:3000\", \"[::1]:3000\" or \"app1.internal:3000\""),
        );
    }
    parsed
}

fn label_chars_ok(label: &str) -> bool {
    label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !label.starts_with('-')
}

fn duration_or(
    r: &mut Reader<'_>,
    t: &Table<'_>,
    path: &str,
    key: &str,
    default: std::time::Duration,
) -> std::time::Duration {
    match get(t, key) {
        // On error the default stands in so validation can go on; the error still fails the load.
        Some(v) => r.duration(v, &join(path, key)).unwrap_or(default),
        None => default,
    }
}

fn log_level(r: &mut Reader<'_>, v: &Value<'_>) -> Option<String> {
    let text = r.string(v, "log_level")?;
    match tracing_subscriber::EnvFilter::builder().parse(text) {
        Ok(_) => Some(text.to_string()),
        Err(e) => {
            r.error(
                "log_level",
                v.span(),
                format!(
                    "`{text}` is not a log filter ({e}); use error, warn, info, debug or trace"
                ),
            );
            None
        }
    }
}

fn trusted_proxies(r: &mut Reader<'_>, v: &Value<'_>) -> Vec<ipnet::IpNet> {
    let Some(items) = r.array(v, "trusted_proxies") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("trusted_proxies[{i}]");
        let Some(text) = r.string(item, &key) else {
            continue;
        };
        // A bare address is a /32 or /128.
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => out.push(net.trunc()),
            Err(_) => r.error(
                &key,
                item.span(),
                format!("`{text}` is not a CIDR block or an IP address, such as \"10.0.0.0/8\""),
            ),
        }
    }
    out
}

/// A listen address may be used by one listener only.
fn check_listen_addrs(
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

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/upstream.toml");

    #[test]
    fn the_shipped_example_parses_to_the_documented_values() {
        let c = parse(Path::new("upstream.toml"), EXAMPLE).expect("example is valid");
        let app = &c.upstreams["app"];
        assert_eq!(app.servers.len(), 4);
        assert_eq!(app.servers[1].weight.get(), 2);
        assert!(app.servers[2].backup && app.servers[3].down);
        assert_eq!(app.keepalive_timeout, defaults::UPSTREAM_KEEPALIVE_TIMEOUT);
        assert_eq!(c.listeners["web"].listen.len(), 2);
        assert_eq!(c.drain_timeout, defaults::DRAIN_TIMEOUT);
    }

    fn listener_with(extra: &str) -> Result<Config, ConfigErrors> {
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n{extra}\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n"
        );
        parse(Path::new("t.toml"), &text)
    }

    #[test]
    fn sizes_take_bytes_or_binary_units() {
        let c = listener_with(
            "max_body_size = \"10m\"\nmax_header_size = 16384\nmax_uri_length = \"4KiB\"",
        )
        .expect("valid sizes");
        let limits = c.listeners["l"].limits;
        assert_eq!(limits.max_body_size, Some(10 << 20));
        assert_eq!(limits.max_header_size, 16384);
        assert_eq!(limits.max_uri_length, 4096);
        assert_eq!(
            listener_with("").expect("defaults").listeners["l"]
                .limits
                .max_body_size,
            None
        );
        let errors = listener_with("max_body_size = \"ten\"\nmax_header_size = \"1k\"")
            .expect_err("invalid");
        let text = errors.to_string();
        assert!(
            text.contains("t.toml:4:17: listeners.l.max_body_size: `ten` is not a size"),
            "{text}"
        );
        assert!(
            text.contains(
                "listeners.l.max_header_size: must be between 8192 and 1048576 bytes, got 1024"
            ),
            "{text}"
        );
    }

    #[test]
    fn never_panics_on_damaged_input() {
        // Every prefix, and every single-byte replacement at a range of positions, of the
        // example: parse may fail but must not panic.
        let bytes = EXAMPLE.as_bytes();
        for end in 0..bytes.len() {
            let text = String::from_utf8_lossy(&bytes[..end]);
            let _ = parse(Path::new("t.toml"), &text);
        }
        for pos in (0..bytes.len()).step_by(3) {
            for b in [b'"', b'[', b']', b'=', b'\n', b'{', b'0', 0xff] {
                let mut m = bytes.to_vec();
                m[pos] = b;
                let text = String::from_utf8_lossy(&m);
                let _ = parse(Path::new("t.toml"), &text);
            }
        }
    }
}
