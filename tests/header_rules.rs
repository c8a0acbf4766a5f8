//! Header rules (`headers` on a listener, an upstream and a route) seen from a real backend
//! that echoes the request head it got and answers with `X-Powered-By`, and from a real
//! client: request set/add/remove (with `Host`, over HTTP/1 and HTTP/2 to the backend),
//! response set/add/remove, `response_always` on rproxy's own 502, 503 and 404, the most
//! specific level winning, each variable's value, and mistakes refused by `rproxy -t`.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

/// A backend speaking HTTP/1.1 and HTTP/2 (prior knowledge) that answers with the head it
/// received as text (`uri: ...`, then `name: value` lines, lower case, in order) and
/// `X-Powered-By: Express`; `/status/N` answers status N.
async fn echo_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut text = format!("uri: {}\n", req.uri());
                        for (name, value) in req.headers() {
                            text.push_str(&format!(
                                "{name}: {}\n",
                                String::from_utf8_lossy(value.as_bytes())
                            ));
                        }
                        let status = req
                            .uri()
                            .path()
                            .strip_prefix("/status/")
                            .and_then(|s| s.parse::<u16>().ok())
                            .unwrap_or(200);
                        hyper::Response::builder()
                            .status(status)
                            .header("x-powered-by", "Express")
                            .header("x-kept", "yes")
                            .body(Full::new(Bytes::from(text)))
                    });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                // A connection that ends in an error is the client's business, not the test's.
                let served = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                drop(served);
            });
        }
    });
    addr
}

/// The values of `name` in the echoed head, in order.
fn echoed(body: &str, name: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .map(str::to_string)
        .collect()
}

fn values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("text").to_string())
        .collect()
}

async fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Full::default()).expect("request")).await
}

const REQUEST_RULES: &str = r#"
[upstreams.app.headers]
request_set = { "Host" = "app.internal:8080", "X-Env" = "prod" }
request_add = { "X-Tag" = ["a", "b"] }
request_remove = ["X-Debug"]
"#;

/// Request set, add and remove reach the backend; the built-in forwarding headers stay.
async fn check_request_rules(h2: bool) {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&config_with(
        &format!("\"{backend}\""),
        &format!("h2 = {h2}\n{REQUEST_RULES}"),
    ));
    let ans = request(
        proxy.addr(),
        "/p",
        &[
            ("host", "shop.example"),
            ("x-debug", "1"),
            ("x-tag", "client"),
            ("x-env", "dev"),
        ],
    )
    .await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    let b = &ans.body;
    assert_eq!(echoed(b, "host"), ["app.internal:8080"], "{b}");
    assert_eq!(echoed(b, "x-env"), ["prod"], "{b}");
    assert_eq!(echoed(b, "x-tag"), ["client", "a", "b"], "{b}");
    assert!(echoed(b, "x-debug").is_empty(), "{b}");
    assert_eq!(echoed(b, "x-forwarded-host"), ["shop.example"], "{b}");
    assert_eq!(echoed(b, "x-forwarded-for"), ["127.0.0.1"], "{b}");
    assert_eq!(echoed(b, "x-forwarded-proto"), ["http"], "{b}");
    if h2 {
        // HTTP/2 carries the host in `:authority`, which most servers read first.
        assert_eq!(echoed(b, "uri"), ["http://app.internal:8080/p"], "{b}");
    } else {
        assert_eq!(echoed(b, "uri"), ["/p"], "{b}");
    }
}

#[tokio::test]
async fn request_rules_over_http1() {
    check_request_rules(false).await;
}

#[tokio::test]
async fn request_rules_over_http2_set_the_authority() {
    check_request_rules(true).await;
}

#[tokio::test]
async fn response_rules_and_nginx_statuses() {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&config_with(
        &format!("\"{backend}\""),
        r#"
[upstreams.app.headers]
response_set = { "X-Served-By" = "$upstream_addr" }
response_add = { "Cache-Control" = "no-store", "X-Kept" = "too" }
response_remove = ["X-Powered-By"]
"#,
    ));
    let ok = request(proxy.addr(), "/", &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(values(&ok.headers, "x-served-by"), [backend.to_string()]);
    assert_eq!(values(&ok.headers, "cache-control"), ["no-store"]);
    assert_eq!(values(&ok.headers, "x-kept"), ["yes", "too"]);
    assert!(ok.headers.get("x-powered-by").is_none());
    // As nginx's add_header without `always`: not on a 404; the removal is made whatever the status.
    let missing = request(proxy.addr(), "/status/404", &[]).await;
    assert_eq!(missing.status, 404);
    assert!(missing.headers.get("x-served-by").is_none());
    assert!(missing.headers.get("cache-control").is_none());
    assert!(missing.headers.get("x-powered-by").is_none());
}

#[tokio::test]
async fn always_rules_reach_rproxys_own_errors() {
    let dead = refused_addr();
    let backend = echo_backend().await;
    let proxy = Proxy::start(&format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
upstream = "dead"

[listeners.web.headers]
response_add = {{ "Strict-Transport-Security" = "max-age=63072000" }}
response_always = true

[[listeners.web.routes]]
path_prefix = "/down"
upstream = "down"

[[listeners.web.routes]]
path_prefix = "/ok"
upstream = "ok"
headers = {{ response_set = {{ "X-Route" = "ok" }} }}

[upstreams.dead]
servers = ["{dead}"]
[upstreams.dead.headers]
response_set = {{ "X-Error-Page" = "rproxy", "X-Not-Always" = "1" }}
response_always = true

[upstreams.down]
servers = [{{ addr = "{backend}", down = true }}]

[upstreams.ok]
servers = ["{backend}"]
"#
    ));
    let bad_gateway = request(proxy.addr(), "/", &[]).await;
    assert_eq!(bad_gateway.status, 502);
    assert_eq!(values(&bad_gateway.headers, "x-error-page"), ["rproxy"]);
    assert_eq!(
        values(&bad_gateway.headers, "strict-transport-security"),
        ["max-age=63072000"]
    );
    let unavailable = request(proxy.addr(), "/down", &[]).await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(
        values(&unavailable.headers, "strict-transport-security"),
        ["max-age=63072000"]
    );
    assert!(
        unavailable.headers.get("x-error-page").is_none(),
        "another upstream's rule"
    );
    let fine = request(proxy.addr(), "/ok", &[]).await;
    assert_eq!(fine.status, 200);
    assert_eq!(values(&fine.headers, "x-route"), ["ok"]);
    assert_eq!(
        values(&fine.headers, "strict-transport-security"),
        ["max-age=63072000"]
    );
}

#[tokio::test]
async fn always_rules_of_the_listener_reach_a_404_without_route() {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
[listeners.web.headers]
response_set = {{ "X-Frame-Options" = "DENY" }}
response_always = true
[[listeners.web.routes]]
host = "known.example"
upstream = "app"
[upstreams.app]
servers = ["{backend}"]
"#
    ));
    let ans = request(proxy.addr(), "/", &[("host", "unknown.example")]).await;
    assert_eq!(ans.status, 404);
    assert_eq!(values(&ans.headers, "x-frame-options"), ["DENY"]);
}

#[tokio::test]
async fn the_most_specific_level_wins_per_header() {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
upstream = "app"
[listeners.web.headers]
request_set = {{ "X-Level" = "listener", "X-Listener" = "yes", "X-Up" = "listener" }}
response_set = {{ "X-Answer" = "listener" }}

[[listeners.web.routes]]
path_prefix = "/r"
upstream = "app"
[listeners.web.routes.headers]
request_set = {{ "X-Level" = "route" }}
response_remove = ["X-Answer"]

[upstreams.app]
servers = ["{backend}"]
[upstreams.app.headers]
request_set = {{ "X-Level" = "upstream", "X-Up" = "upstream" }}
"#
    ));
    let routed = request(proxy.addr(), "/r", &[]).await;
    let b = &routed.body;
    assert_eq!(echoed(b, "x-level"), ["route"], "{b}");
    assert_eq!(echoed(b, "x-up"), ["upstream"], "{b}");
    assert_eq!(echoed(b, "x-listener"), ["yes"], "{b}");
    assert!(routed.headers.get("x-answer").is_none());
    let default = request(proxy.addr(), "/", &[]).await;
    let b = &default.body;
    assert_eq!(echoed(b, "x-level"), ["upstream"], "{b}");
    assert_eq!(values(&default.headers, "x-answer"), ["listener"]);
}

#[tokio::test]
async fn each_variable_has_its_value() {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&config_with(
        &format!("\"{backend}\""),
        r#"
[upstreams.app.headers]
request_set = { "X-Host" = "$host", "X-Remote" = "$remote_addr", "X-Scheme" = "$scheme", "X-Port" = "$server_port", "X-Id" = "$request_id", "X-Uri" = "$request_uri", "X-Agent" = "$http_user_agent", "X-Url" = "$scheme://$host:$server_port$request_uri" }
response_set = { "X-Upstream" = "$upstream_addr", "X-Echo-Id" = "$request_id", "X-Echo-Agent" = "agent=$http_user_agent" }
"#,
    ));
    let port = proxy.addr().port();
    let ans = request(
        proxy.addr(),
        "/a/b?c=d",
        &[
            ("host", "Shop.Example:8080"),
            ("user-agent", "probe/1"),
            ("x-request-id", "trace-42"),
        ],
    )
    .await;
    let b = &ans.body;
    for (name, want) in [
        ("x-host", "shop.example".to_string()),
        ("x-remote", "127.0.0.1".to_string()),
        ("x-scheme", "http".to_string()),
        ("x-port", port.to_string()),
        ("x-id", "trace-42".to_string()),
        ("x-request-id", "trace-42".to_string()),
        ("x-uri", "/a/b?c=d".to_string()),
        ("x-agent", "probe/1".to_string()),
        ("x-url", format!("http://shop.example:{port}/a/b?c=d")),
    ] {
        assert_eq!(echoed(b, name), [want], "{name} in {b}");
    }
    assert_eq!(values(&ans.headers, "x-upstream"), [backend.to_string()]);
    assert_eq!(values(&ans.headers, "x-echo-id"), ["trace-42"]);
    assert_eq!(values(&ans.headers, "x-echo-agent"), ["agent=probe/1"]);
    // Without a client id, `$request_id` is the one rproxy made: 32 hex digits.
    let ans = request(proxy.addr(), "/", &[]).await;
    let made = echoed(&ans.body, "x-request-id");
    assert_eq!(echoed(&ans.body, "x-id"), made);
    assert!(made[0].len() == 32 && made[0].bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(values(&ans.headers, "x-echo-id"), made);
}

#[test]
fn mistakes_are_refused_by_dash_t_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[listeners.web]
listen = "127.0.0.1:8080"
upstream = "app"

[listeners.web.headers]
request_set = { "X-Where" = "$upstream_addr", "X-A" = "$hots" }
response_add = { "Bad Header" = "1" }

[upstreams.app]
servers = ["127.0.0.1:3001"]
headers = { response_set = { "X-B" = "a\u0007b" } }
"#,
    )
    .expect("write");
    let out = rproxy_check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display();
    for wanted in [
        format!(
            "{file}:6:29: listeners.web.headers.request_set.X-Where: `$upstream_addr` is known only once a backend answered"
        ),
        format!("{file}:6:55: listeners.web.headers.request_set.X-A: unknown variable `$hots`"),
        format!(
            "{file}:7:18: listeners.web.headers.response_add.Bad Header: `Bad Header` is not a valid header name"
        ),
        format!(
            "{file}:11:38: upstreams.app.headers.response_set.X-B: `a\\u{{7}}b` is not a valid header value"
        ),
    ] {
        assert!(err.contains(&wanted), "missing {wanted:?} in:\n{err}");
    }
}

#[tokio::test]
async fn a_reload_changes_the_rules_and_a_bad_one_keeps_them() {
    let backend = echo_backend().await;
    let config = |value: &str| {
        with_admin(&config_with(
            &format!("\"{backend}\""),
            &format!("[upstreams.app.headers]\nrequest_set = {{ \"X-Env\" = \"{value}\" }}\n"),
        ))
    };
    let proxy = Proxy::start(&config("one"));
    let seen = |ans: Answer| echoed(&ans.body, "x-env");
    assert_eq!(seen(request(proxy.addr(), "/", &[]).await), ["one"]);
    assert!(proxy.reload_with(&config("two")).await);
    assert_eq!(seen(request(proxy.addr(), "/", &[]).await), ["two"]);
    assert!(
        !proxy.reload_with(&config("$nope")).await,
        "an unknown variable"
    );
    assert_eq!(seen(request(proxy.addr(), "/", &[]).await), ["two"]);
}
