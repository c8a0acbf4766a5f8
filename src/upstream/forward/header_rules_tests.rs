//! Header rules compiled from real configuration text and applied to request and response
//! heads: precedence per header, each variable's value, empty values, `Host` and the HTTP/2
//! authority, and which statuses response rules act on.

use std::net::SocketAddr;
use std::path::Path;

use http::{HeaderMap, Request, StatusCode};

use super::*;
use crate::config::{Config, parse};
use crate::upstream::ClientScheme;

/// A config with header rules on the listener, the upstream and one route (`/r`).
fn config(listener: &str, upstream: &str, route: &str) -> Config {
    parse(
        Path::new("t.toml"),
        &format!(
            "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
             [listeners.web.headers]\n{listener}\n\
             [[listeners.web.routes]]\npath_prefix = \"/r\"\nupstream = \"app\"\n\
             [listeners.web.routes.headers]\n{route}\n\
             [upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[upstreams.app.headers]\n{upstream}\n"
        ),
    )
    .expect("valid config")
}

/// The plans of the route and of the listener's default (upstream and listener levels).
fn plans(c: &Config) -> (Option<HeaderPlan>, Option<HeaderPlan>) {
    let l = &c.listeners["web"];
    let u = &c.upstreams["app"].headers;
    (
        HeaderPlan::new(&[&l.routes[0].headers, u, &l.headers]),
        HeaderPlan::new(&[u, &l.headers]),
    )
}

fn peer() -> Peer {
    Peer {
        addr: "192.0.2.7:5555".parse::<SocketAddr>().expect("addr"),
        scheme: ClientScheme::Https,
        server_port: 8443,
    }
}

fn head(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request").into_parts().0
}

/// The `X-Request-Id` rproxy gives a head before the rules run.
fn give_id(parts: &mut Parts) {
    parts.headers.insert(
        &X_REQUEST_ID,
        HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
    );
}

/// The request head after the plan's request rules, and what the rules keep for the response.
fn on_request<'p>(plan: &'p HeaderPlan, parts: &mut Parts) -> Box<Applying<'p>> {
    let mut applying = plan.begin(parts, peer());
    give_id(parts);
    applying.request(parts, peer().addr.ip());
    applying
}

#[test]
fn no_rules_no_plan() {
    let c = config("", "", "");
    assert!(plans(&c).0.is_none() && plans(&c).1.is_none());
}

#[test]
fn the_most_specific_level_wins_per_header() {
    let c = config(
        "request_set = { \"X-A\" = \"listener\", \"X-B\" = \"listener\", \"X-C\" = \"listener\" }\n\
         response_add = { \"X-R\" = \"listener\" }",
        "request_set = { \"X-B\" = \"upstream\" }\nrequest_add = { \"X-C\" = \"upstream\" }",
        "request_remove = [\"X-A\"]\nresponse_set = { \"X-R\" = \"route\" }",
    );
    let (route, default) = plans(&c);
    let (route, default) = (route.expect("route plan"), default.expect("default plan"));

    let mut parts = head("/r/x", &[("x-a", "client"), ("x-c", "client")]);
    let applying = on_request(&route, &mut parts);
    assert!(!parts.headers.contains_key("x-a"), "the route removes X-A");
    assert_eq!(parts.headers["x-b"], "upstream");
    // The upstream's add of X-C replaces the listener's set: the client's line stays.
    let x_c: Vec<_> = parts.headers.get_all("x-c").iter().collect();
    assert_eq!(x_c, ["client", "upstream"]);
    let mut resp = HeaderMap::new();
    applying.response(&mut resp, StatusCode::OK, &parts.uri, None);
    assert_eq!(resp.get_all("x-r").iter().collect::<Vec<_>>(), ["route"]);

    let mut parts = head("/", &[("x-a", "client")]);
    on_request(&default, &mut parts);
    assert_eq!(parts.headers["x-a"], "listener");
    assert_eq!(parts.headers["x-b"], "upstream");
}

#[test]
fn each_variable_has_its_value() {
    let c = config(
        "request_set = { \"X-Host\" = \"$host\", \"X-Addr\" = \"$remote_addr\", \"X-Scheme\" = \"$scheme\", \
         \"X-Port\" = \"$server_port\", \"X-Id\" = \"$request_id\", \"X-Uri\" = \"$request_uri\", \
         \"X-Ua\" = \"ua=$http_user_agent\", \"X-All\" = \"$scheme://$host:$server_port$request_uri\", \
         \"X-Fwd\" = \"$http_x_forwarded_for\" }\n\
         response_set = { \"X-Up\" = \"$upstream_addr\", \"X-Seen-Host\" = \"$host\" }",
        "",
        "",
    );
    let plan = plans(&c).1.expect("plan");
    let mut parts = head(
        "/p?q=1",
        &[
            ("host", "Example.COM:8443"),
            ("user-agent", "curl/8"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "203.0.113.2"),
        ],
    );
    let mut applying = plan.begin(&parts, peer());
    // What rproxy does between: its own X-Forwarded-For replaces the client's.
    parts
        .headers
        .insert("x-forwarded-for", HeaderValue::from_static("192.0.2.7"));
    give_id(&mut parts);
    applying.request(&mut parts, peer().addr.ip());
    let h = &parts.headers;
    for (name, want) in [
        ("x-host", "example.com"),
        ("x-addr", "192.0.2.7"),
        ("x-scheme", "https"),
        ("x-port", "8443"),
        ("x-id", "0123456789abcdef0123456789abcdef"),
        ("x-uri", "/p?q=1"),
        ("x-ua", "ua=curl/8"),
        ("x-all", "https://example.com:8443/p?q=1"),
        ("x-fwd", "203.0.113.1, 203.0.113.2"),
    ] {
        assert_eq!(h[name], want, "{name}");
    }
    let mut resp = HeaderMap::new();
    applying.response(
        &mut resp,
        StatusCode::OK,
        &parts.uri,
        Some("127.0.0.1:9000"),
    );
    assert_eq!(resp["x-up"], "127.0.0.1:9000");
    assert_eq!(resp["x-seen-host"], "example.com");
}

#[test]
fn host_is_lowercase_without_port_from_the_target_first() {
    for (uri, header, want) in [
        ("/", Some("A.example:80"), Some("a.example")),
        ("/", Some("[::1]:8080"), Some("[::1]")),
        ("/", Some("[::1]"), Some("[::1]")),
        ("/", Some("plain"), Some("plain")),
        (
            "http://Target.example:81/x",
            Some("other"),
            Some("target.example"),
        ),
        ("/", None, None),
    ] {
        let parts = head(uri, header.map(|h| ("host", h)).as_slice());
        assert_eq!(
            host(&parts).as_ref().map(|v| v.to_str().expect("text")),
            want,
            "{uri} {header:?}"
        );
    }
}

#[test]
fn empty_values_remove_or_add_nothing_but_host_stays() {
    let c = config(
        "request_set = { \"Host\" = \"$http_x_missing\", \"X-Gone\" = \"$http_x_missing\" }\n\
         request_add = { \"X-None\" = \"$http_x_missing\" }",
        "",
        "",
    );
    let plan = plans(&c).1.expect("plan");
    let mut parts = head("/", &[("host", "a.example"), ("x-gone", "1")]);
    let applying = on_request(&plan, &mut parts);
    assert_eq!(parts.headers["host"], "a.example");
    assert!(!parts.headers.contains_key("x-gone"));
    assert!(!parts.headers.contains_key("x-none"));
    // An HTTP/2 backend's `:authority` follows the Host the request kept.
    assert_eq!(
        applying.authority().map(Authority::as_str),
        Some("a.example")
    );
}

#[test]
fn a_host_rule_gives_the_h2_authority() {
    let c = config("", "request_set = { \"Host\" = \"app.internal:8080\" }", "");
    let plan = plans(&c).1.expect("plan");
    let mut parts = head("/", &[("host", "a.example")]);
    let applying = on_request(&plan, &mut parts);
    assert_eq!(parts.headers["host"], "app.internal:8080");
    assert_eq!(
        applying.authority().map(Authority::as_str),
        Some("app.internal:8080")
    );
}

#[test]
fn response_rules_follow_the_status_unless_always() {
    let c = config(
        "response_set = { \"X-Set\" = \"1\" }\nresponse_add = { \"X-Add\" = \"2\" }\n\
         response_remove = [\"X-Powered-By\"]",
        "response_add = { \"X-Always\" = \"3\" }\nresponse_always = true",
        "",
    );
    let plan = plans(&c).1.expect("plan");
    let mut parts = head("/", &[]);
    let applying = on_request(&plan, &mut parts);
    for (status, plain) in [
        (200, true),
        (302, true),
        (404, false),
        (502, false),
        (503, false),
    ] {
        let mut resp = HeaderMap::new();
        resp.insert("x-powered-by", HeaderValue::from_static("PHP"));
        resp.insert("x-set", HeaderValue::from_static("backend"));
        let status = StatusCode::from_u16(status).expect("status");
        applying.response(&mut resp, status, &parts.uri, None);
        assert!(
            !resp.contains_key("x-powered-by"),
            "{status}: removed always"
        );
        assert_eq!(resp["x-always"], "3", "{status}");
        assert_eq!(resp.contains_key("x-add"), plain, "{status}");
        let set = if plain { "1" } else { "backend" };
        assert_eq!(resp["x-set"], set, "{status}");
    }
    // rproxy's own answer without a route: only the always rules.
    let mut own = HeaderMap::new();
    plan.local_answer(&mut own, StatusCode::NOT_FOUND, &parts, peer());
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(own["x-always"], "3");
}
