//! Routes by host and path through the real binary: exact and wildcard hosts, the longest
//! path prefix, strip_prefix (the backend sees the shortened path), the listener's default
//! upstream, and 404 when nothing matches.

mod common;

use common::*;

async fn get_host(addr: std::net::SocketAddr, host: &str, path: &str) -> Answer {
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(http_body_util::Full::default())
        .expect("request");
    send(&client(), req).await
}

#[tokio::test]
async fn hosts_and_prefixes_pick_the_pool() {
    let (api, v1, sites, fallback) = (
        Backend::start("api").await,
        Backend::start("v1").await,
        Backend::start("sites").await,
        Backend::start("fallback").await,
    );
    let config = format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
upstream = "fallback"

[[listeners.web.routes]]
host = "api.example.com"
upstream = "api"

[[listeners.web.routes]]
host = "api.example.com"
path_prefix = "/v1"
strip_prefix = true
upstream = "v1"

[[listeners.web.routes]]
host = "*.example.com"
upstream = "sites"

[upstreams.api]
servers = ["{}"]
[upstreams.v1]
servers = ["{}"]
[upstreams.sites]
servers = ["{}"]
[upstreams.fallback]
servers = ["{}"]
"#,
        api.addr, v1.addr, sites.addr, fallback.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.addr();
    for (host, path, want) in [
        ("api.example.com", "/", "api"),
        ("API.example.com:8080", "/users", "api"),
        ("api.example.com", "/v1/users?id=7", "v1"),
        ("api.example.com", "/v1x", "api"),
        ("shop.example.com", "/v1/users", "sites"),
        ("a.b.example.com", "/", "sites"),
        ("example.com", "/", "fallback"),
        ("other.test", "/v1", "fallback"),
    ] {
        let ans = get_host(addr, host, path).await;
        assert_eq!(
            (ans.status.as_u16(), ans.backend()),
            (200, want),
            "{host}{path}"
        );
    }
    // strip_prefix: the backend saw the path without `/v1`, query kept.
    assert_eq!(v1.last().uri, "/users?id=7");
    assert_eq!(api.last().uri, "/v1x", "no strip_prefix on that route");
}

#[tokio::test]
async fn no_route_and_no_default_is_a_404() {
    let a = Backend::start("a").await;
    let config = format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[[listeners.web.routes]]\nhost = \"a.test\"\nupstream = \"a\"\n[upstreams.a]\nservers = [\"{}\"]\n",
        a.addr
    );
    let proxy = Proxy::start(&config);
    assert_eq!(get_host(proxy.addr(), "a.test", "/").await.backend(), "a");
    let ans = get_host(proxy.addr(), "b.test", "/").await;
    assert_eq!(ans.status, 404);
    assert_eq!(ans.body, "404 Not Found\n");
    assert_eq!(a.requests(), 1);
}
