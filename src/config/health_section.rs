//! `[upstreams.NAME.health_check]` and `all_unhealthy`: how backends are checked, and what
//! happens when every one of them fails its checks.

use std::time::Duration;

use toml::de::DeValue;

use super::model::{HealthCheckConfig, HttpCheck};
use super::reader::{Reader, Table, Value, duration_or, entries, get, join};

const HEALTH_KEYS: &[&str] = &[
    "type",
    "path",
    "interval",
    "timeout",
    "rise",
    "fall",
    "expect_status",
    "expect_body",
    "host",
    "headers",
    "initial",
];

pub(super) fn health_check(
    r: &mut Reader<'_>,
    path: &str,
    v: &Value<'_>,
) -> Option<HealthCheckConfig> {
    let t = r.table(v, path)?;
    r.check_keys(t, path, HEALTH_KEYS);
    let kind = match get(t, "type") {
        None => Some("http"),
        Some(k) => match r.string(k, &join(path, "type"))? {
            "http" => Some("http"),
            "tcp" => Some("tcp"),
            other => {
                r.error(
                    &join(path, "type"),
                    k.span(),
                    format!("unknown check type `{other}`; expected \"http\" or \"tcp\""),
                );
                None
            }
        },
    };
    let interval = duration_or(r, t, path, "interval", Duration::from_secs(2));
    let timeout = duration_or(r, t, path, "timeout", Duration::from_secs(1));
    let count = |r: &mut Reader<'_>, key: &str, default: u64| match get(t, key) {
        Some(v) => r.integer(v, &join(path, key), 1, 100).map(|n| n as u32),
        None => Some(default as u32),
    };
    let rise = count(r, "rise", 2);
    let fall = count(r, "fall", 3);
    let initially_healthy = match get(t, "initial") {
        None => Some(true),
        Some(i) => match r.string(i, &join(path, "initial"))? {
            "healthy" => Some(true),
            "unhealthy" => Some(false),
            other => {
                r.error(
                    &join(path, "initial"),
                    i.span(),
                    format!("`{other}` is not \"healthy\" or \"unhealthy\""),
                );
                None
            }
        },
    };
    let http = if kind? == "tcp" {
        for key in ["path", "expect_status", "expect_body", "host", "headers"] {
            if let Some(v) = get(t, key) {
                r.error(
                    &join(path, key),
                    v.span(),
                    "applies to HTTP checks only (type = \"tcp\" here)",
                );
            }
        }
        Some(None)
    } else {
        http_check(r, path, t).map(Some)
    };
    Some(HealthCheckConfig {
        http: http?,
        interval,
        timeout,
        rise: rise?,
        fall: fall?,
        initially_healthy: initially_healthy?,
    })
}

fn http_check(r: &mut Reader<'_>, path: &str, t: &Table<'_>) -> Option<HttpCheck> {
    let check_path = match get(t, "path") {
        None => Some("/".to_string()),
        Some(p) => {
            let text = r.string(p, &join(path, "path"))?;
            if text.starts_with('/') && text.bytes().all(|b| b.is_ascii_graphic()) {
                Some(text.to_string())
            } else {
                r.error(
                    &join(path, "path"),
                    p.span(),
                    "must start with `/` and contain no spaces",
                );
                None
            }
        }
    };
    let expect_status = match get(t, "expect_status") {
        None => Some(vec![(200, 399)]),
        Some(v) => status_ranges(r, &join(path, "expect_status"), v),
    };
    let text = |r: &mut Reader<'_>, key: &str| match get(t, key) {
        Some(v) => r.string(v, &join(path, key)).map(|s| Some(s.to_string())),
        None => Some(None),
    };
    let expect_body = text(r, "expect_body");
    let host = text(r, "host");
    let headers = match get(t, "headers") {
        Some(v) => check_headers(r, &join(path, "headers"), v),
        None => Some(Vec::new()),
    };
    Some(HttpCheck {
        path: check_path?,
        expect_status: expect_status?,
        expect_body: expect_body?,
        host: host?,
        headers: headers?,
        // Set by the upstream section, which knows whether the pool speaks HTTP/2.
        h2: false,
    })
}

/// `headers = { "X-Check" = "rproxy" }`: names and values as HTTP allows them.
fn check_headers(
    r: &mut Reader<'_>,
    key: &str,
    v: &Value<'_>,
) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
    let t = r.table(v, key)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (name, value) in entries(t) {
        let name: &str = name.get_ref();
        let item_key = join(key, name);
        let Some(text) = r.string(value, &item_key) else {
            ok = false;
            continue;
        };
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(text),
        ) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => {
                r.error(
                    &item_key,
                    value.span(),
                    format!("`{name}` is not a valid header name"),
                );
                ok = false;
            }
            (_, Err(_)) => {
                r.error(
                    &item_key,
                    value.span(),
                    "not a valid header value (control characters?)",
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// `200`, `"200-399"`, or a list of those.
fn status_ranges(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<Vec<(u16, u16)>> {
    let items: Vec<&Value<'_>> = match v.get_ref() {
        DeValue::Array(a) => a.iter().collect(),
        _ => vec![v],
    };
    let mut out = Vec::new();
    for item in items {
        let range = match item.get_ref() {
            DeValue::Integer(_) => r.integer(item, key, 100, 599).map(|n| (n as u16, n as u16)),
            DeValue::String(s) => {
                let parse = |x: &str| {
                    x.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                };
                let parsed = match s.split_once('-') {
                    Some((a, b)) => parse(a).zip(parse(b)).filter(|(a, b)| a <= b),
                    None => parse(s).map(|c| (c, c)),
                };
                if parsed.is_none() {
                    r.error(
                        key,
                        item.span(),
                        format!("`{s}` is not a status or a range such as \"200-399\""),
                    );
                }
                parsed
            }
            other => {
                r.error(
                    key,
                    item.span(),
                    format!(
                        "expected a status, a range or a list, found {}",
                        other.type_str()
                    ),
                );
                None
            }
        };
        out.push(range?);
    }
    if out.is_empty() {
        r.error(key, v.span(), "needs at least one status");
        return None;
    }
    Some(out)
}

/// `all_unhealthy = "fail_open" | "503"`: `true` for fail-open.
pub(super) fn all_unhealthy(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<bool> {
    match r.string(v, key)? {
        "fail_open" => Some(true),
        "503" => Some(false),
        other => {
            r.error(
                key,
                v.span(),
                format!("`{other}` is not \"fail_open\" or \"503\""),
            );
            None
        }
    }
}
