//! The `[upstreams.NAME]` sections: pools of backends, their balancing and upstream timeouts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use toml::de::DeValue;

use super::backend_addr::{UNIX_PREFIX, unix_path};
use super::headers_section::headers;
use super::health_section::{all_unhealthy, health_check};
use super::key_template::KeyTemplate;
use super::limits_section::{LIMIT_KEYS, default_max_conns, max_conns, queue};
use super::model::{
    BalanceFactor, BalancePolicy, PassiveHealth, ServerAddr, ServerConfig, StickyConfig,
    UpstreamConfig, defaults,
};
use super::reader::{Reader, Table, Value, did_you_mean, duration_or, flag, flag_or, get, join};
use super::retry_section::{RETRY_KEYS, retry_policy, slow_start};
use super::tls_section::backend_tls;

const UPSTREAM_KEYS: &[&str] = &[
    "balance",
    "hash",
    "sticky",
    "health_check",
    "all_unhealthy",
    "max_fails",
    "fail_timeout",
    "fail_on_status",
    "servers",
    "connect_timeout",
    "response_timeout",
    "body_timeout",
    "keepalive_timeout",
    "keepalive_connections",
    "websocket_idle_timeout",
    "h2",
    "tls",
    "headers",
];
const SERVER_KEYS: &[&str] = &[
    "addr",
    "weight",
    "backup",
    "down",
    "max_conns",
    "resolve",
    "service",
];

pub(super) fn upstream(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
    whole: &Value<'_>,
) -> Option<UpstreamConfig> {
    let known: Vec<&str> = UPSTREAM_KEYS
        .iter()
        .chain(RETRY_KEYS)
        .chain(LIMIT_KEYS)
        .copied()
        .collect();
    r.check_keys(t, path, &known);
    let balance = balance(r, path, t);
    let default_max_conns = default_max_conns(r, path, t);
    let servers = match get(t, "servers") {
        Some(v) => servers(r, &join(path, "servers"), v, default_max_conns.flatten()),
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
    let websocket_idle_timeout = duration_or(
        r,
        t,
        path,
        "websocket_idle_timeout",
        defaults::WEBSOCKET_IDLE_TIMEOUT,
    );
    let keepalive_connections = match get(t, "keepalive_connections") {
        Some(v) => r
            .integer(v, &join(path, "keepalive_connections"), 0, 100_000)
            .map(|n| n as usize),
        None => Some(defaults::UPSTREAM_KEEPALIVE_CONNECTIONS),
    };
    let sticky = match get(t, "sticky") {
        Some(v) => sticky(r, &join(path, "sticky"), v).map(Some),
        None => Some(None),
    };
    let h2 = flag(r, t, path, "h2");
    let tls = match get(t, "tls") {
        Some(v) => backend_tls(r, &join(path, "tls"), v).map(Some),
        None => Some(None),
    };
    let health_check = match get(t, "health_check") {
        Some(v) => health_check(r, &join(path, "health_check"), v).map(|mut check| {
            if let Some(http) = &mut check.http {
                http.h2 = h2 == Some(true);
            }
            Some(check)
        }),
        None => Some(None),
    };
    let max_fails = match get(t, "max_fails") {
        Some(v) => r
            .integer(v, &join(path, "max_fails"), 0, 1000)
            .map(|n| n as u32),
        None => Some(1),
    };
    let fail_timeout = duration_or(
        r,
        t,
        path,
        "fail_timeout",
        std::time::Duration::from_secs(10),
    );
    let fail_on_status = match get(t, "fail_on_status") {
        None => Some(Vec::new()),
        Some(v) => {
            let key = join(path, "fail_on_status");
            r.array(v, &key).and_then(|items| {
                items
                    .iter()
                    .map(|item| r.integer(item, &key, 500, 599).map(|n| n as u16))
                    .collect::<Option<Vec<u16>>>()
            })
        }
    };
    let fail_open = match get(t, "all_unhealthy") {
        Some(v) => all_unhealthy(r, &join(path, "all_unhealthy"), v),
        None => Some(true),
    };
    let retry = retry_policy(r, path, t);
    let slow_start = slow_start(r, path, t, balance.as_ref());
    let limited = servers
        .as_ref()
        .map(|s| s.iter().any(|s| s.max_conns.is_some()));
    let queue = queue(r, path, t, limited);
    if let (Some(servers), Some(Some(_))) = (&servers, &tls) {
        unix_without_tls(r, servers);
    }
    let headers = headers(r, path, t);
    default_max_conns?;
    Some(UpstreamConfig {
        name: path.trim_start_matches("upstreams.").to_string(),
        balance: balance?,
        servers: servers?,
        connect_timeout,
        response_timeout,
        body_timeout,
        keepalive_timeout,
        websocket_idle_timeout,
        h2: h2?,
        tls: tls?,
        keepalive_connections: keepalive_connections?,
        sticky: sticky?,
        health_check: health_check?,
        fail_open: fail_open?,
        passive: PassiveHealth {
            max_fails: max_fails?,
            fail_timeout,
            fail_on_status: fail_on_status?,
        },
        retry: retry?,
        slow_start: slow_start?,
        queue: queue?,
        headers: headers?,
    })
}

/// TLS to backends runs over TCP: a Unix-socket server in an upstream with `tls` is an error
/// (nginx cannot do it either), rather than a backend that never connects.
fn unix_without_tls(r: &mut Reader<'_>, servers: &[ServerConfig]) {
    for server in servers {
        if let ServerAddr::Unix(_) = server.addr {
            r.error_at(
                &server.origin,
                format!("`{}` is a Unix socket, and this upstream has `tls`: TLS to a Unix-socket backend is not supported; put it in an upstream without `tls`", server.addr),
            );
        }
    }
}

/// The `servers` array; `default_max_conns` is the upstream's `max_conns`.
fn servers(
    r: &mut Reader<'_>,
    key: &str,
    v: &Value<'_>,
    default_max_conns: Option<NonZeroU32>,
) -> Option<Vec<ServerConfig>> {
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
        let Some(server) = server(r, &item_key, item, default_max_conns) else {
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

fn server(
    r: &mut Reader<'_>,
    key: &str,
    v: &Value<'_>,
    default_max_conns: Option<NonZeroU32>,
) -> Option<ServerConfig> {
    match v.get_ref() {
        DeValue::String(text) => {
            let addr = server_addr(r, key, v, text)?;
            Some(ServerConfig {
                addr,
                weight: NonZeroU32::MIN,
                backup: false,
                down: false,
                max_conns: default_max_conns,
                resolve: false,
                origin: r.origin(key, v.span()),
            })
        }
        DeValue::Table(t) => {
            r.check_keys(t, key, SERVER_KEYS);
            let addr_key = join(key, "addr");
            let resolve = flag(r, t, key, "resolve");
            let service_key = join(key, "service");
            let service = match get(t, "service") {
                Some(s) => r.string(s, &service_key).map(|text| Some((text, s))),
                None => Some(None),
            };
            let addr = match get(t, "addr") {
                Some(a) => {
                    let text = r.string(a, &addr_key)?;
                    let parsed = match service {
                        Some(Some((svc, sv))) => {
                            if resolve == Some(false) {
                                r.error(
                                    &service_key,
                                    sv.span(),
                                    "`service` needs `resolve = true` (SRV records are followed as they change)",
                                );
                            }
                            srv_name(r, &addr_key, a, text, &service_key, sv, svc)
                        }
                        _ => server_addr(r, &addr_key, a, text),
                    };
                    match parsed {
                        Some(ServerAddr::Ip(_)) if resolve == Some(true) => {
                            r.error(
                                &addr_key,
                                a.span(),
                                "`resolve = true` needs a host name, not an IP address",
                            );
                            None
                        }
                        Some(ServerAddr::Unix(_)) if resolve == Some(true) => {
                            r.error(
                                &addr_key,
                                a.span(),
                                "`resolve = true` needs a host name, not a Unix socket path",
                            );
                            None
                        }
                        other => other.map(|addr| (addr, r.origin(&addr_key, a.span()))),
                    }
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
            let max_conns = match get(t, "max_conns") {
                Some(m) => max_conns(r, m, &join(key, "max_conns")),
                None => Some(default_max_conns),
            };
            let (addr, origin) = addr?;
            Some(ServerConfig {
                addr,
                weight: weight?,
                backup: backup?,
                down: down?,
                max_conns: max_conns?,
                resolve: resolve?,
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

/// `"10.0.0.1:3000"`, `"[::1]:3000"`, `"app1.internal:3000"` or `"unix:/run/app.sock"`.
fn server_addr(r: &mut Reader<'_>, key: &str, v: &Value<'_>, text: &str) -> Option<ServerAddr> {
    if let Some(path) = text.strip_prefix(UNIX_PREFIX) {
        return match unix_path(path) {
            Ok(path) => Some(ServerAddr::Unix(path)),
            Err(message) => {
                r.error(key, v.span(), message);
                None
            }
        };
    }
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
            format!("`{text}` is not a backend address; write \"host:port\" such as \"127.0.0.1:3000\", \"[::1]:3000\" or \"app1.internal:3000\", or \"unix:/path/to.sock\""),
        );
    }
    parsed
}

/// `addr = "app.service.consul", service = "http"` (or `"_http._tcp"`): the SRV records'
/// name, built as nginx builds it: a service without a dot becomes `_SERVICE._tcp.`, one with
/// dots is put in front of the name as it is.
fn srv_name(
    r: &mut Reader<'_>,
    key: &str,
    v: &Value<'_>,
    host: &str,
    service_key: &str,
    sv: &Value<'_>,
    service: &str,
) -> Option<ServerAddr> {
    let host_ok = valid_host(host);
    if !host_ok {
        let hint = if host.contains(':') {
            "with `service`, write the name without a port: the ports come from the SRV records"
        } else {
            "not a host name"
        };
        r.error(key, v.span(), format!("`{host}`: {hint}"));
    }
    let service_ok = valid_host(service);
    if !service_ok {
        r.error(
            service_key,
            sv.span(),
            format!("`{service}` is not a service name such as \"http\" or \"_http._tcp\""),
        );
    }
    if !(host_ok && service_ok) {
        return None;
    }
    let prefix = if service.contains('.') {
        service.to_string()
    } else {
        format!("_{service}._tcp")
    };
    Some(ServerAddr::Srv {
        name: format!("{prefix}.{host}").to_ascii_lowercase(),
    })
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && label_chars_ok(label))
}

fn label_chars_ok(label: &str) -> bool {
    label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !label.starts_with('-')
}

/// `balance = "round_robin" | "ip_hash" | "hash"`, and for `hash` the
/// `hash = { key = "...", consistent = true }` table (which alone also selects `hash`).
fn balance(r: &mut Reader<'_>, path: &str, t: &Table<'_>) -> Option<BalancePolicy> {
    let key = join(path, "balance");
    let named = match get(t, "balance") {
        None => None,
        Some(v) => {
            let name = r.string(v, &key)?;
            if !BalancePolicy::NAMES.contains(&name) {
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
                return None;
            }
            Some((name, v))
        }
    };
    let hash = get(t, "hash");
    match (named, hash) {
        (None | Some(("round_robin", _)), None) => Some(BalancePolicy::RoundRobin),
        (Some(("ip_hash", _)), None) => Some(BalancePolicy::IpHash),
        (Some(("least_conn", _)), None) => Some(BalancePolicy::LeastConn),
        (Some(("random_two", _)), None) => Some(BalancePolicy::RandomTwo),
        (None | Some(("hash", _)), Some(h)) => hash_policy(r, &join(path, "hash"), h),
        (Some(("hash", v)), None) => {
            r.error(
                &key,
                v.span(),
                "`hash` needs its key: hash = { key = \"$request_uri\", consistent = true }",
            );
            None
        }
        (Some((name, _)), Some(h)) => {
            r.error(
                &join(path, "hash"),
                h.span(),
                format!("`hash` settings do not apply to balance = \"{name}\""),
            );
            None
        }
        (Some(_), None) => Some(BalancePolicy::RoundRobin),
    }
}

fn hash_policy(r: &mut Reader<'_>, path: &str, v: &Value<'_>) -> Option<BalancePolicy> {
    let t = r.table(v, path)?;
    r.check_keys(t, path, &["key", "consistent", "balance_factor"]);
    let consistent = flag(r, t, path, "consistent");
    let balance_factor = match get(t, "balance_factor") {
        None => Some(None),
        Some(f) => {
            let k = join(path, "balance_factor");
            match (r.number(f, &k), consistent) {
                (Some(x), Some(true)) if (1.0..=100.0).contains(&x) && x > 1.0 => {
                    Some(Some(BalanceFactor((x * 1000.0).round() as u32)))
                }
                (Some(_), Some(true)) => {
                    r.error(
                        &k,
                        f.span(),
                        "must be above 1 (1.25 allows 25% over the average) and at most 100",
                    );
                    None
                }
                (Some(_), _) => {
                    r.error(&k, f.span(), "bounded loads need consistent = true");
                    None
                }
                (None, _) => None,
            }
        }
    };
    let key_path = join(path, "key");
    let key = match get(t, "key") {
        Some(k) => {
            let text = r.string(k, &key_path)?;
            match KeyTemplate::parse(text) {
                Ok(key) => Some(key),
                Err(e) => {
                    r.error(&key_path, k.span(), e);
                    None
                }
            }
        }
        None => {
            r.error(
                path,
                v.span(),
                "missing key `key`, such as \"$request_uri\" or \"$cookie_session\"",
            );
            None
        }
    };
    Some(BalancePolicy::Hash {
        key: key?,
        consistent: consistent?,
        balance_factor: balance_factor?,
    })
}

const STICKY_KEYS: &[&str] = &[
    "cookie",
    "max_age",
    "path",
    "domain",
    "secure",
    "http_only",
    "same_site",
    "secret",
];

/// `[upstreams.NAME.sticky]`: the cookie's name and attributes.
fn sticky(r: &mut Reader<'_>, path: &str, v: &Value<'_>) -> Option<StickyConfig> {
    let t = r.table(v, path)?;
    r.check_keys(t, path, STICKY_KEYS);
    // Cookie names, paths and domains go into a header as they are: keep them to safe bytes.
    let token = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
    };
    let mut text = |key: &str, default: Option<&str>, extra: &[u8]| -> Option<Option<String>> {
        let Some(val) = get(t, key) else {
            return Some(default.map(String::from));
        };
        let k = join(path, key);
        let s = r.string(val, &k)?;
        if token(s, extra) {
            Some(Some(s.to_string()))
        } else {
            r.error(
                &k,
                val.span(),
                format!(
                    "`{s}` may use only letters, digits and -_.{}",
                    String::from_utf8_lossy(extra)
                ),
            );
            None
        }
    };
    let cookie = text("cookie", None, b"");
    let cookie_path = text("path", Some("/"), b"/");
    let domain = text("domain", None, b"");
    if get(t, "cookie").is_none() {
        r.error(path, v.span(), "missing key `cookie` (the cookie's name)");
    }
    let same_site = match get(t, "same_site") {
        None => Some("Lax".to_string()),
        Some(val) => {
            let k = join(path, "same_site");
            match r.string(val, &k)?.to_ascii_lowercase().as_str() {
                "lax" => Some("Lax".to_string()),
                "strict" => Some("Strict".to_string()),
                "none" => Some("None".to_string()),
                other => {
                    r.error(
                        &k,
                        val.span(),
                        format!("`{other}` is not one of lax, strict, none"),
                    );
                    None
                }
            }
        }
    };
    let max_age = match get(t, "max_age") {
        Some(val) => r.duration(val, &join(path, "max_age")).map(Some),
        None => Some(None),
    };
    let secure = flag(r, t, path, "secure");
    let http_only = flag_or(r, t, path, "http_only", true);
    let secret = match get(t, "secret") {
        Some(val) => {
            let k = join(path, "secret");
            let s = r.string(val, &k)?;
            if s.len() < 16 {
                r.error(&k, val.span(), "a secret needs at least 16 characters");
                None
            } else {
                Some(Some(s.to_string()))
            }
        }
        None => Some(None),
    };
    Some(StickyConfig {
        cookie: cookie??,
        max_age: max_age?,
        path: cookie_path??,
        domain: domain?,
        secure: secure?,
        http_only: http_only?,
        same_site: same_site?,
        secret: secret?,
    })
}
