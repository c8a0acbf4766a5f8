//! The `headers` table of a listener, an upstream and a route (the most specific one that names
//! a header wins for it; see `upstream::forward::header_rules`):
//!
//! ```toml
//! [upstreams.app.headers]
//! request_set = { "Host" = "$host", "X-Env" = "prod" }
//! request_add = { "X-Tag" = ["a", "b"] }
//! request_remove = ["X-Debug"]
//! response_set = { "X-Served-By" = "$upstream_addr" }
//! response_add = { "Cache-Control" = "no-store" }
//! response_remove = ["X-Powered-By"]
//! response_always = true
//! ```
//!
//! `response_always` makes this table's response sets and adds apply to every status, rproxy's
//! own 502/503/504 included (nginx's `add_header ... always`).

use http::HeaderName;
use http::uri::Authority;
use toml::de::DeValue;

use super::header_rules::{HeaderAction, HeaderRule, HeaderRules, ValuePart, ValueTemplate};
use super::reader::{Reader, Table, Value, entries, flag, get, join};

const HEADER_KEYS: &[&str] = &[
    "request_set",
    "request_add",
    "request_remove",
    "response_set",
    "response_add",
    "response_remove",
    "response_always",
];

/// Headers that belong to one connection or frame the message: rproxy writes them itself.
const MANAGED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The `headers` key of the table `t` at `path` (a listener, upstream or route); no rules when
/// it is absent.
pub(super) fn headers(r: &mut Reader<'_>, path: &str, t: &Table<'_>) -> Option<HeaderRules> {
    let Some(v) = get(t, "headers") else {
        return Some(HeaderRules::default());
    };
    let key = join(path, "headers");
    let h = r.table(v, &key)?;
    r.check_keys(h, &key, HEADER_KEYS);
    let always = flag(r, h, &key, "response_always");
    let request = side(r, &key, h, "request", false);
    let response = side(r, &key, h, "response", always == Some(true));
    if let Some(a) = get(h, "response_always")
        && get(h, "response_set").is_none()
        && get(h, "response_add").is_none()
    {
        r.error(
            &join(&key, "response_always"),
            a.span(),
            "applies to response_set and response_add, and this table has neither",
        );
        return None;
    }
    always?;
    Some(HeaderRules {
        request: request?,
        response: response?,
    })
}

/// The `{side}_remove`, `{side}_set` and `{side}_add` keys, as rules in that order.
fn side(
    r: &mut Reader<'_>,
    path: &str,
    h: &Table<'_>,
    side: &str,
    always: bool,
) -> Option<Vec<HeaderRule>> {
    let response = side == "response";
    let mut rules: Vec<HeaderRule> = Vec::new();
    // Each name with the key that named it, for the conflicts below.
    let mut named: Vec<(HeaderName, String)> = Vec::new();
    let mut ok = true;

    let remove_key = join(path, &format!("{side}_remove"));
    if let Some(v) = get(h, &format!("{side}_remove")) {
        match r.array(v, &remove_key) {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{remove_key}[{i}]");
                    let Some(text) = r.string(item, &item_key) else {
                        ok = false;
                        continue;
                    };
                    match name(r, &item_key, item, text, response) {
                        Some(n) => {
                            if !response && n == http::header::HOST {
                                r.error(
                                    &item_key,
                                    item.span(),
                                    "an HTTP/1.1 request needs a Host: set it with request_set instead",
                                );
                                ok = false;
                            }
                            ok &= unique(r, &mut named, &n, &item_key, item, &remove_key);
                            rules.push(HeaderRule {
                                name: n,
                                action: HeaderAction::Remove,
                                always: false,
                            });
                        }
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }

    for (op, add) in [("set", false), ("add", true)] {
        let op_key = join(path, &format!("{side}_{op}"));
        let Some(v) = get(h, &format!("{side}_{op}")) else {
            continue;
        };
        let Some(t) = r.table(v, &op_key) else {
            ok = false;
            continue;
        };
        for (header, value) in entries(t) {
            let item_key = join(&op_key, header.get_ref());
            let Some(n) = name(r, &item_key, header, header.get_ref(), response) else {
                ok = false;
                continue;
            };
            ok &= unique(r, &mut named, &n, &item_key, value, &op_key);
            // An add takes one value or a list of them.
            let values: Vec<&Value<'_>> = match value.get_ref() {
                DeValue::Array(items) if add => items.iter().collect(),
                _ => vec![value],
            };
            for item in values {
                let Some(text) = r.string(item, &item_key) else {
                    ok = false;
                    continue;
                };
                let template = match ValueTemplate::parse(text, response) {
                    Ok(t) => t,
                    Err(e) => {
                        r.error(&item_key, item.span(), e);
                        ok = false;
                        continue;
                    }
                };
                if !response && n == http::header::HOST {
                    let wrong = if add {
                        Some("a request has one Host: set it with request_set".to_string())
                    } else if !valid_host(&template) {
                        Some(format!("`{text}` is not a host name with an optional port"))
                    } else {
                        None
                    };
                    if let Some(wrong) = wrong {
                        r.error(&item_key, item.span(), wrong);
                        ok = false;
                    }
                }
                rules.push(HeaderRule {
                    name: n.clone(),
                    action: if add {
                        HeaderAction::Add(template)
                    } else {
                        HeaderAction::Set(template)
                    },
                    always: response && always,
                });
            }
        }
    }
    ok.then_some(rules)
}

/// A header name a rule may name.
fn name<T>(
    r: &mut Reader<'_>,
    key: &str,
    at: &toml::Spanned<T>,
    text: &str,
    response: bool,
) -> Option<HeaderName> {
    let Ok(n) = HeaderName::from_bytes(text.as_bytes()) else {
        r.error(
            key,
            at.span(),
            format!("`{text}` is not a valid header name"),
        );
        return None;
    };
    if MANAGED.contains(&n.as_str()) {
        let side = if response { "response" } else { "request" };
        r.error(
            key,
            at.span(),
            format!(
                "`{text}` belongs to one connection or frames the message: rproxy writes it on each {side} itself, \
                 and a rule cannot change it (keep-alive and WebSocket upgrades work without one)"
            ),
        );
        return None;
    }
    Some(n)
}

/// Records that `list` names `n`; false (with an error) when another key of this side already
/// named it, since the two rules would undo each other or which one wins would be unclear.
fn unique<T>(
    r: &mut Reader<'_>,
    named: &mut Vec<(HeaderName, String)>,
    n: &HeaderName,
    key: &str,
    at: &toml::Spanned<T>,
    list: &str,
) -> bool {
    match named.iter().find(|(m, _)| m == n) {
        // A set and an add of one header work together: the set first.
        Some((_, other)) if other.ends_with("_set") && list.ends_with("_add") => true,
        Some((_, other)) => {
            let what = if other == list {
                format!("`{n}` is named twice in {list}")
            } else {
                format!("`{n}` is also named in {other}")
            };
            r.error(key, at.span(), what);
            false
        }
        None => {
            named.push((n.clone(), list.to_string()));
            true
        }
    }
}

/// A `Host` value that is literal text must be a host name, with a port or not; one made of
/// variables is checked when it is used.
fn valid_host(template: &ValueTemplate) -> bool {
    let literal_only = template
        .parts
        .iter()
        .all(|p| matches!(p, ValuePart::Literal(_)));
    !literal_only
        || (template.text.parse::<Authority>().is_ok()
            && template.text.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
            }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::HeaderName;

    use crate::config::{Config, ConfigErrors, HeaderAction, parse};

    fn with(listener: &str, upstream: &str) -> Result<Config, ConfigErrors> {
        parse(
            Path::new("t.toml"),
            &format!(
                "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n{listener}\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n{upstream}\n"
            ),
        )
    }

    #[test]
    fn every_level_reads_its_table() {
        let c = with(
            "[listeners.web.headers]\nrequest_set = { \"X-Env\" = \"prod\" }\n\
             [[listeners.web.routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\n\
             headers = { response_remove = [\"X-Powered-By\"] }",
            "[upstreams.app.headers]\nrequest_remove = [\"X-Debug\"]\nrequest_set = { \"Host\" = \"$host\" }\n\
             request_add = { \"X-Tag\" = [\"a\", \"b\"] }\nresponse_add = { \"Cache-Control\" = \"no-store\" }\n\
             response_always = true",
        )
        .expect("valid");
        let l = &c.listeners["web"];
        assert_eq!(l.headers.request[0].name, "x-env");
        assert_eq!(l.routes[0].headers.response[0].action, HeaderAction::Remove);
        let u = &c.upstreams["app"].headers;
        let names: Vec<&str> = u.request.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["x-debug", "host", "x-tag", "x-tag"]);
        assert!(u.response[0].always);
        assert_eq!(u.response[0].name, HeaderName::from_static("cache-control"));
        assert!(
            with("", "").expect("none").listeners["web"]
                .headers
                .is_empty()
        );
    }

    #[test]
    fn mistakes_name_file_line_column_and_key() {
        let e = with(
            "[listeners.web.headers]\n\
             request_set = { \"X-A\" = \"$nope\", \"Bad Name\" = \"1\", \"Connection\" = \"\" }\n\
             request_add = { \"X-B\" = \"$upstream_addr\" }\n\
             request_remove = [\"Host\", \"X-C\", \"x-c\"]\n\
             response_add = { \"X-D\" = \"a\\u0001b\" }\n\
             response_remove = [\"X-D\"]\n\
             colour = 1",
            "[upstreams.app.headers]\nresponse_always = true\nrequest_set = { \"Host\" = \"a b\" }",
        )
        .expect_err("invalid")
        .to_string();
        for wanted in [
            "t.toml:5:25: listeners.web.headers.request_set.X-A: unknown variable `$nope`; known: $host",
            "t.toml:5:34: listeners.web.headers.request_set.Bad Name: `Bad Name` is not a valid header name",
            "t.toml:5:52: listeners.web.headers.request_set.Connection: `Connection` belongs to one connection",
            "t.toml:6:25: listeners.web.headers.request_add.X-B: `$upstream_addr` is known only once a backend answered",
            "t.toml:7:19: listeners.web.headers.request_remove[0]: an HTTP/1.1 request needs a Host",
            "t.toml:7:34: listeners.web.headers.request_remove[2]: `x-c` is named twice in listeners.web.headers.request_remove",
            "t.toml:8:26: listeners.web.headers.response_add.X-D: `x-d` is also named in listeners.web.headers.response_remove",
            "t.toml:8:26: listeners.web.headers.response_add.X-D: `a\\u{1}b` is not a valid header value",
            "t.toml:10:1: listeners.web.headers.colour: unknown key `colour`",
            "t.toml:14:19: upstreams.app.headers.response_always: applies to response_set and response_add",
            "t.toml:15:26: upstreams.app.headers.request_set.Host: `a b` is not a host name",
        ] {
            assert!(e.contains(wanted), "{wanted}\nin\n{e}");
        }
        let e = with(
            "[listeners.web.headers]\nrequest_add = { \"host\" = \"a.example\" }",
            "",
        )
        .expect_err("two hosts")
        .to_string();
        assert!(
            e.contains(
                "t.toml:5:26: listeners.web.headers.request_add.host: a request has one Host"
            ),
            "{e}"
        );
        let e = with(
            "[listeners.web.headers]\nresponse_remove = [\"X-D\"]\nresponse_set = { \"x-d\" = \"1\" }",
            "",
        )
        .expect_err("conflict")
        .to_string();
        assert!(
            e.contains("listeners.web.headers.response_set.x-d: `x-d` is also named in listeners.web.headers.response_remove"),
            "{e}"
        );
    }

    #[test]
    fn a_tcp_listener_takes_no_header_rules() {
        let e = parse(
            Path::new("t.toml"),
            "[listeners.db]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"pg\"\n\
             headers = { request_set = { \"X-A\" = \"1\" } }\n[upstreams.pg]\nservers = [\"127.0.0.1:1\"]\n",
        )
        .expect_err("tcp")
        .to_string();
        assert!(
            e.contains("listeners.db.headers: applies to HTTP listeners only"),
            "{e}"
        );
    }
}
