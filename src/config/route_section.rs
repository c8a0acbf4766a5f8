//! `[[listeners.NAME.routes]]`: requests sent to a pool by host and path prefix (nginx's
//! `server_name` and `location`). What they mean at run time is in `router`.

use super::headers_section::headers;
use super::model::RouteConfig;
use super::reader::{Reader, Value, did_you_mean, flag, get, join};

const ROUTE_KEYS: &[&str] = &[
    "host",
    "path_prefix",
    "upstream",
    "strip_prefix",
    "limits",
    "headers",
];

pub(super) fn routes(
    r: &mut Reader<'_>,
    key: &str,
    v: &Value<'_>,
    upstream_names: &[String],
) -> Option<Vec<RouteConfig>> {
    let items = r.array(v, key)?;
    let mut out: Vec<(usize, RouteConfig)> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("{key}[{i}]");
        match route(r, &path, item, upstream_names) {
            Some(route) => {
                if let Some((j, _)) = out
                    .iter()
                    .find(|(_, o)| o.host == route.host && o.path_prefix == route.path_prefix)
                {
                    r.error(
                        &path,
                        item.span(),
                        format!("the same host and path_prefix as {key}[{j}]; one of them would never be used"),
                    );
                    ok = false;
                }
                out.push((i, route));
            }
            None => ok = false,
        }
    }
    ok.then(|| out.into_iter().map(|(_, route)| route).collect())
}

fn route(
    r: &mut Reader<'_>,
    path: &str,
    v: &Value<'_>,
    upstream_names: &[String],
) -> Option<RouteConfig> {
    let t = r.table(v, path)?;
    r.check_keys(t, path, ROUTE_KEYS);
    let host = match get(t, "host") {
        None => Some(None),
        Some(h) => {
            let key = join(path, "host");
            let text = r.string(h, &key)?;
            let host = text.trim_end_matches('.').to_ascii_lowercase();
            if valid_host_pattern(&host) {
                Some(Some(host))
            } else {
                r.error(
                    &key,
                    h.span(),
                    format!("`{text}` is not a host name or a wildcard such as \"*.example.com\""),
                );
                None
            }
        }
    };
    let path_prefix = match get(t, "path_prefix") {
        None => Some("/".to_string()),
        Some(p) => {
            let key = join(path, "path_prefix");
            let text = r.string(p, &key)?;
            if text.starts_with('/') && text.bytes().all(|b| b.is_ascii_graphic() && b != b'?') {
                Some(text.to_string())
            } else {
                r.error(
                    &key,
                    p.span(),
                    "must start with `/` and contain no spaces or `?`",
                );
                None
            }
        }
    };
    let upstream = match get(t, "upstream") {
        None => {
            r.error(
                path,
                v.span(),
                "missing key `upstream` (the pool to send to)",
            );
            None
        }
        Some(u) => {
            let key = join(path, "upstream");
            let name = r.string(u, &key)?;
            if upstream_names.iter().any(|n| n == name) {
                Some(name.to_string())
            } else {
                let names: Vec<&str> = upstream_names.iter().map(String::as_str).collect();
                let hint = did_you_mean(name, &names)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                r.error(
                    &key,
                    u.span(),
                    format!("no upstream named `{name}` is defined{hint}"),
                );
                None
            }
        }
    };
    let strip_prefix = flag(r, t, path, "strip_prefix");
    let headers = headers(r, path, t);
    Some(RouteConfig {
        host: host?,
        path_prefix: path_prefix?,
        upstream: upstream?,
        strip_prefix: strip_prefix?,
        // Read with the listener's (`rate_limit_section`), once every limit is known.
        rate_limits: None,
        headers: headers?,
    })
}

/// `name.example`, `*.example`, or an IP address: letters, digits, `-`, `.`, and a leading `*.`.
fn valid_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && !name.contains('*')
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    fn listener(body: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        parse(
            Path::new("t.toml"),
            &format!(
                "[listeners.web]\nlisten = \"127.0.0.1:0\"\n{body}\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n"
            ),
        )
    }

    #[test]
    fn routes_are_read_and_hosts_normalized() {
        let c = listener(
            "[[listeners.web.routes]]\nhost = \"API.Example.com.\"\npath_prefix = \"/v1\"\nstrip_prefix = true\nupstream = \"app\"",
        )
        .expect("valid");
        let l = &c.listeners["web"];
        assert_eq!(l.upstream, None);
        assert_eq!(l.routes[0].host.as_deref(), Some("api.example.com"));
        assert!(l.routes[0].strip_prefix);
    }

    #[test]
    fn mistakes_name_the_route() {
        let e = listener(
            "[[listeners.web.routes]]\nhost = \"a b\"\nupstream = \"ap\"\n[[listeners.web.routes]]\npath_prefix = \"v1\"\nupstream = \"app\"\n[[listeners.web.routes]]\nupstream = \"app\"\n[[listeners.web.routes]]\nupstream = \"app\"",
        )
        .expect_err("invalid")
        .to_string();
        for wanted in [
            "listeners.web.routes[0].host: `a b` is not a host name",
            "listeners.web.routes[0].upstream: no upstream named `ap` is defined; did you mean `app`?",
            "listeners.web.routes[1].path_prefix: must start with `/`",
            "listeners.web.routes[3]: the same host and path_prefix as listeners.web.routes[2]",
        ] {
            assert!(e.contains(wanted), "{wanted} in {e}");
        }
        let e = listener("").expect_err("nowhere to send").to_string();
        assert!(
            e.contains("missing key `upstream` (the pool to send to) or `routes`"),
            "{e}"
        );
    }
}
