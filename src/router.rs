//! Routing: which pool receives a request, by its host and path (nginx's `server_name` and
//! `location`).
//!
//! Sits between the listener, which accepted and checked the request, and the upstream pool,
//! which balances it. A pure function of the route table and the request's host and path, so
//! it is unit-tested alone. Hosts are looked up in hash maps (an exact name, then wildcards
//! from the longest suffix, then routes for any host), so hundreds of routes cost a few map
//! lookups; within one host the longest matching path prefix wins. When a host has routes but
//! none matches the path, the less specific hosts are tried, then the listener's default.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::RouteConfig;

/// One listener's routes, built once per snapshot; `T` is what a route leads to (a pool).
#[derive(Debug)]
pub struct RouteTable<T> {
    exact: HashMap<String, Vec<Rule<T>>>,
    /// Keyed by the suffix after `*`: `*.example.com` is `.example.com`.
    wildcard: HashMap<String, Vec<Rule<T>>>,
    any: Vec<Rule<T>>,
    default: Option<T>,
}

#[derive(Debug)]
struct Rule<T> {
    prefix: String,
    strip: bool,
    target: T,
    /// Its place among the routes as written, for what the snapshot keeps per route.
    index: usize,
}

/// Where a request goes, and the path prefix to remove on the way, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a, T> {
    pub to: &'a T,
    pub strip: Option<&'a str>,
    /// Which route matched, by its place in file order; `None` for the default.
    pub route: Option<usize>,
}

impl<T> RouteTable<T> {
    /// `routes` in file order, each with its target; `default` for what no route matches.
    pub fn new(routes: impl IntoIterator<Item = (RouteConfig, T)>, default: Option<T>) -> Self {
        let mut table = RouteTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: Vec::new(),
            default,
        };
        for (index, (config, target)) in routes.into_iter().enumerate() {
            let rule = Rule {
                prefix: config.path_prefix,
                strip: config.strip_prefix,
                target,
                index,
            };
            let rules = match config.host {
                None => &mut table.any,
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => table.wildcard.entry(suffix.to_string()).or_default(),
                    None => table.exact.entry(host).or_default(),
                },
            };
            rules.push(rule);
        }
        for rules in table
            .exact
            .values_mut()
            .chain(table.wildcard.values_mut())
            .chain(std::iter::once(&mut table.any))
        {
            // Longest prefix first, so the first match is the most specific.
            rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        }
        table
    }

    /// Whether the table has nothing but a default.
    pub fn is_trivial(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_empty()
    }

    /// The target for a request to `host` (the Host header or `:authority`, any case, with
    /// or without a port) and `path`; `None` when nothing matches and there is no default.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<Target<'_, T>> {
        if self.is_trivial() {
            return self.default.as_ref().map(|to| Target {
                to,
                strip: None,
                route: None,
            });
        }
        let host = host.map(normalize);
        if let Some(host) = host.as_deref() {
            if let Some(t) = self.exact.get(host).and_then(|r| first_match(r, path)) {
                return Some(t);
            }
            // `a.b.example.com` tries `.b.example.com`, then `.example.com`, then `.com`.
            let wildcards = host.match_indices('.').map(|(i, _)| &host[i..]);
            for suffix in wildcards {
                if let Some(t) = self.wildcard.get(suffix).and_then(|r| first_match(r, path)) {
                    return Some(t);
                }
            }
        }
        first_match(&self.any, path).or_else(|| {
            self.default.as_ref().map(|to| Target {
                to,
                strip: None,
                route: None,
            })
        })
    }
}

fn first_match<'a, T>(rules: &'a [Rule<T>], path: &str) -> Option<Target<'a, T>> {
    rules
        .iter()
        .find(|r| prefix_matches(&r.prefix, path))
        .map(|r| Target {
            to: &r.target,
            strip: r.strip.then_some(r.prefix.as_str()),
            route: Some(r.index),
        })
}

/// `/v1` matches `/v1`, `/v1/` and `/v1/users`, not `/v1x`: a prefix ends at a path segment
/// boundary unless it ends with `/` itself.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Lowercase, no port, no trailing dot; borrowed when already so.
fn normalize(host: &str) -> Cow<'_, str> {
    let name = match host.rfind(':') {
        Some(i) if !host[..i].contains(':') || host[..i].ends_with(']') => &host[..i],
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        host: Option<&str>,
        prefix: &str,
        strip: bool,
        to: &'static str,
    ) -> (RouteConfig, &'static str) {
        (
            RouteConfig {
                host: host.map(str::to_string),
                path_prefix: prefix.to_string(),
                upstream: to.to_string(),
                strip_prefix: strip,
                rate_limits: None,
                headers: Default::default(),
            },
            to,
        )
    }

    fn table() -> RouteTable<&'static str> {
        RouteTable::new(
            [
                route(Some("api.example.com"), "/", false, "api"),
                route(Some("api.example.com"), "/v1", true, "api-v1"),
                route(Some("api.example.com"), "/v1/admin", false, "admin"),
                route(Some("*.example.com"), "/", false, "sites"),
                route(Some("*.eu.example.com"), "/", false, "eu"),
                route(None, "/static/", false, "static"),
            ],
            Some("default"),
        )
    }

    fn to(t: &RouteTable<&'static str>, host: Option<&str>, path: &str) -> Option<&'static str> {
        t.lookup(host, path).map(|x| *x.to)
    }

    #[test]
    fn exact_host_then_longest_prefix() {
        let t = table();
        assert_eq!(to(&t, Some("api.example.com"), "/"), Some("api"));
        assert_eq!(to(&t, Some("api.example.com"), "/v1/users"), Some("api-v1"));
        assert_eq!(to(&t, Some("api.example.com"), "/v1"), Some("api-v1"));
        assert_eq!(
            to(&t, Some("api.example.com"), "/v1/admin/x"),
            Some("admin")
        );
        assert_eq!(
            to(&t, Some("api.example.com"), "/v1x"),
            Some("api"),
            "segment boundary"
        );
    }

    #[test]
    fn host_ignores_case_port_and_trailing_dot() {
        let t = table();
        for host in [
            "API.Example.COM",
            "api.example.com:8443",
            "api.example.com.",
            "Api.Example.Com.:80",
        ] {
            assert_eq!(to(&t, Some(host), "/v1"), Some("api-v1"), "{host}");
        }
    }

    #[test]
    fn wildcards_match_from_the_longest_suffix() {
        let t = table();
        assert_eq!(to(&t, Some("shop.example.com"), "/"), Some("sites"));
        assert_eq!(to(&t, Some("a.b.example.com"), "/"), Some("sites"));
        assert_eq!(to(&t, Some("paris.eu.example.com"), "/"), Some("eu"));
        assert_eq!(
            to(&t, Some("example.com"), "/"),
            Some("default"),
            "*.x does not match x"
        );
    }

    #[test]
    fn any_host_routes_then_the_default_then_nothing() {
        let t = table();
        assert_eq!(to(&t, Some("other.org"), "/static/app.js"), Some("static"));
        assert_eq!(to(&t, None, "/static/app.js"), Some("static"));
        assert_eq!(to(&t, Some("other.org"), "/"), Some("default"));
        let no_default = RouteTable::new([route(Some("a.test"), "/", false, "a")], None);
        assert_eq!(to(&no_default, Some("b.test"), "/"), None);
        assert_eq!(to(&no_default, None, "/"), None);
    }

    #[test]
    fn a_stripping_route_reports_its_prefix() {
        let t = table();
        let hit = t
            .lookup(Some("api.example.com"), "/v1/users")
            .expect("route");
        assert_eq!(hit.strip, Some("/v1"));
        assert_eq!(hit.route, Some(1), "the second route written");
        assert_eq!(
            t.lookup(Some("other.org"), "/").map(|x| x.route),
            Some(None)
        );
    }

    #[test]
    fn hundreds_of_hosts_stay_map_lookups() {
        let routes: Vec<_> = (0..500)
            .map(|i| {
                (
                    RouteConfig {
                        host: Some(format!("site{i}.example.com")),
                        path_prefix: "/".to_string(),
                        upstream: String::new(),
                        strip_prefix: false,
                        rate_limits: None,
                        headers: Default::default(),
                    },
                    i,
                )
            })
            .collect();
        let t = RouteTable::new(routes, None);
        assert_eq!(
            t.lookup(Some("site417.example.com"), "/x").map(|x| *x.to),
            Some(417)
        );
        assert_eq!(t.lookup(Some("site500.example.com"), "/x"), None);
    }
}
