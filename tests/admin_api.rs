//! The runtime admin API through the real binary with real backends: writes refused without
//! the token; drain (sticky clients stay, hash keys move on), disable (nothing at all), enable;
//! runtime weights that change the round-robin counts exactly; reset; overrides that survive
//! three SIGHUPs and leave with a server removed from the file; `?wait=` that returns only
//! once a slow request (or a TCP connection) has finished, or 504 when the wait runs out; 404s
//! that name what exists; and the admin-state gauge and action counter in /metrics.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::Request;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const TOKEN: &str = "admin-token-0123456789";

/// `servers` behind listener `web`, upstream `app`, with an admin listener (and the token when
/// `token`); the access log off.
fn config(servers: &str, upstream_extra: &str, token: bool) -> String {
    let token = if token {
        format!("token = \"{TOKEN}\"\n")
    } else {
        String::new()
    };
    format!(
        "[log]\naccess = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{token}{}",
        config_with(servers, upstream_extra)
    )
}

fn admin(proxy: &Proxy) -> SocketAddr {
    proxy.admin.expect("an admin listener")
}

/// One admin API call: its status and JSON body (`Value::Null` when the body is not JSON).
async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let ans = send(
        &client(),
        req.body(Full::new(Bytes::from(body.to_string())))
            .expect("request"),
    )
    .await;
    (
        ans.status,
        serde_json::from_str(&ans.body).unwrap_or(Value::Null),
    )
}

/// `POST /api/upstreams/app/servers/{server}/{action}` with the token.
async fn act(admin: SocketAddr, server: SocketAddr, action: &str) -> (StatusCode, Value) {
    call(
        admin,
        Method::POST,
        &format!("/api/upstreams/app/servers/{server}/{action}"),
        Some(TOKEN),
        "",
    )
    .await
}

async fn set_weight(admin: SocketAddr, server: SocketAddr, body: &str) -> (StatusCode, Value) {
    call(
        admin,
        Method::PUT,
        &format!("/api/upstreams/app/servers/{server}/weight"),
        Some(TOKEN),
        body,
    )
    .await
}

/// The server's object in `GET /api/upstreams`.
async fn listed(admin: SocketAddr, server: SocketAddr) -> Value {
    let (status, all) = call(admin, Method::GET, "/api/upstreams", Some(TOKEN), "").await;
    assert_eq!(status, 200);
    all["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == "app")
        .flat_map(|u| u["servers"].as_array().cloned().unwrap_or_default())
        .find(|s| s["addr"] == server.to_string())
        .unwrap_or(Value::Null)
}

/// Which backend answered each of `n` sequential GETs of `path` (with `cookie` when given).
async fn spread(
    proxy: &Proxy,
    n: usize,
    path: &str,
    cookie: Option<&str>,
) -> HashMap<String, usize> {
    let c = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let mut req = Request::get(format!("http://{}{path}", proxy.addr()));
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let ans = send(&c, req.body(Full::default()).expect("request")).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        *seen.entry(ans.backend().to_string()).or_default() += 1;
    }
    seen
}

/// The `route=...` pair of a `Set-Cookie`, if the answer set one.
fn route_cookie(ans: &Answer) -> Option<String> {
    ans.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("route="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

async fn get_with_cookie(proxy: &Proxy, cookie: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{}/", proxy.addr()));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    send(&client(), req.body(Full::default()).expect("request")).await
}

/// Writes `config`, sends SIGHUP, and waits until `/metrics` counts one more successful
/// reload.
async fn reload(proxy: &Proxy, config: &str) {
    let successes =
        |text: &str| metric(text, "rproxy_config_reloads_total{result=\"success\"}").unwrap_or(0.0);
    let before = successes(&scrape(proxy).await);
    std::fs::write(&proxy.config_path, config).expect("write config");
    proxy.signal("HUP");
    let start = Instant::now();
    while successes(&scrape(proxy).await) <= before {
        assert!(start.elapsed() < DEADLINE, "the reload did not succeed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn scrape(proxy: &Proxy) -> String {
    let (admin, c) = (admin(proxy), client());
    let req = Request::get(format!("http://{admin}/metrics"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::default())
        .expect("request");
    send(&c, req).await.body
}

#[tokio::test]
async fn writes_are_refused_without_the_token() {
    let a = Backend::start("a").await;
    // No token configured: reads work, every write is refused with how to enable them.
    let open = Proxy::start(&config(&list(&[&a]), "", false));
    let admin_open = admin(&open);
    let (status, body) = call(admin_open, Method::GET, "/api/upstreams", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(body["upstreams"][0]["servers"][0]["admin_state"], "active");
    for (method, action) in [
        (Method::POST, "drain"),
        (Method::POST, "disable"),
        (Method::POST, "enable"),
        (Method::POST, "reset"),
        (Method::PUT, "weight"),
    ] {
        let path = format!("/api/upstreams/app/servers/{}/{action}", a.addr);
        let (status, body) = call(admin_open, method, &path, Some(TOKEN), "{\"weight\": 2}").await;
        assert_eq!(status, 403, "{action}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("set `token` under [admin]"), "{error}");
    }
    assert_eq!(listed(admin_open, a.addr).await["admin_state"], "active");
    assert_eq!(spread(&open, 3, "/", None).await["a"], 3);

    // A token configured: a missing or wrong one is 401, reads included; the query form is
    // for reading the page, not for writes.
    let locked = Proxy::start(&config(&list(&[&a]), "", true));
    let admin_locked = admin(&locked);
    let drain = format!("/api/upstreams/app/servers/{}/drain", a.addr);
    for token in [None, Some("admin-token-0123456780"), Some("short")] {
        assert_eq!(
            call(admin_locked, Method::POST, &drain, token, "").await.0,
            401
        );
        assert_eq!(
            call(admin_locked, Method::GET, "/api/upstreams", token, "")
                .await
                .0,
            401
        );
    }
    let with_query = format!("{drain}?token={TOKEN}");
    assert_eq!(
        call(admin_locked, Method::POST, &with_query, None, "")
            .await
            .0,
        401
    );
    assert_eq!(listed(admin_locked, a.addr).await["admin_state"], "active");
    // The wrong method is 405, with what is allowed.
    let (status, _) = call(admin_locked, Method::GET, &drain, Some(TOKEN), "").await;
    assert_eq!(status, 405);
    let (status, body) = act(admin_locked, a.addr, "drain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["admin_state"], "draining");
}

#[tokio::test]
async fn drain_keeps_sticky_clients_disable_does_not_and_enable_brings_it_back() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let sticky = "[upstreams.app.sticky]\ncookie = \"route\"\n";
    let proxy = Proxy::start(&config(&list(&[&a, &b, &c]), sticky, true));
    let admin = admin(&proxy);
    let first = get_with_cookie(&proxy, None).await;
    let cookie = route_cookie(&first).expect("the first answer pins the client");
    let pinned = first.backend().to_string();
    let pinned_addr = [&a, &b, &c]
        .into_iter()
        .find(|x| x.name == pinned)
        .expect("a backend")
        .addr;

    let (status, body) = act(admin, pinned_addr, "drain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["admin_state"], &body["source"]),
        (&Value::from("draining"), &Value::from("runtime"))
    );
    assert_eq!(body["override"]["state"], "draining");
    assert!(
        body["override"]["by"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{body}"
    );
    // New clients never reach it; its pinned client still does, without a new cookie.
    let fresh = spread(&proxy, 30, "/", None).await;
    assert_eq!(fresh.get(&pinned), None, "{fresh:?}");
    assert_eq!(fresh.values().sum::<usize>(), 30);
    for _ in 0..10 {
        let ans = get_with_cookie(&proxy, Some(&cookie)).await;
        assert_eq!(ans.backend(), pinned);
        assert_eq!(route_cookie(&ans), None);
    }

    // Disabled: the pinned client goes elsewhere, without an error, and is pinned anew.
    assert_eq!(act(admin, pinned_addr, "disable").await.0, 200);
    let moved = get_with_cookie(&proxy, Some(&cookie)).await;
    assert_eq!(moved.status, 200);
    assert_ne!(moved.backend(), pinned);
    assert!(route_cookie(&moved).is_some(), "the cookie is re-issued");
    assert_eq!(spread(&proxy, 30, "/", None).await.get(&pinned), None);

    // Enabled: back in the rotation (round-robin: a third of the requests), the override gone.
    let (status, body) = act(admin, pinned_addr, "enable").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&body["admin_state"], &body["source"], &body["override"]),
        (&Value::from("active"), &Value::from("file"), &Value::Null)
    );
    assert_eq!(spread(&proxy, 30, "/", None).await.get(&pinned), Some(&10));
    assert_eq!(
        get_with_cookie(&proxy, Some(&cookie)).await.backend(),
        pinned
    );
}

#[tokio::test]
async fn a_drained_server_gives_its_hash_keys_to_the_next_one_until_enabled() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let hash = "hash = { key = \"$request_uri\", consistent = true }";
    let proxy = Proxy::start(&config(&list(&[&a, &b, &c]), hash, true));
    let admin = admin(&proxy);
    let owner = |seen: &HashMap<String, usize>| {
        assert_eq!(seen.len(), 1, "one key, one backend: {seen:?}");
        seen.keys().next().cloned().unwrap_or_default()
    };
    let home = owner(&spread(&proxy, 5, "/key/7", None).await);
    let home_addr = [&a, &b, &c]
        .into_iter()
        .find(|x| x.name == home)
        .expect("a backend")
        .addr;
    assert_eq!(act(admin, home_addr, "drain").await.0, 200);
    let elsewhere = owner(&spread(&proxy, 5, "/key/7", None).await);
    assert_ne!(elsewhere, home);
    assert_eq!(act(admin, home_addr, "enable").await.0, 200);
    assert_eq!(owner(&spread(&proxy, 5, "/key/7", None).await), home);
}

#[tokio::test]
async fn a_runtime_weight_changes_the_round_robin_counts_until_reset() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&config(&list(&[&a, &b]), "", true));
    let admin = admin(&proxy);
    let even = spread(&proxy, 400, "/", None).await;
    assert_eq!((even["a"], even["b"]), (200, 200));

    let (status, body) = set_weight(admin, a.addr, "{\"weight\": 3}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["weight"]["configured"], 1);
    assert_eq!(body["weight"]["effective"], 3);
    assert_eq!(body["source"], "runtime");
    assert_eq!(body["override"]["weight"], 3);
    assert_eq!(body["override"]["state"], Value::Null);
    assert_eq!(body["admin_state"], "active");
    // Smooth weighted round-robin, 3:1: exactly 300 and 100 over 400 requests.
    let weighted = spread(&proxy, 400, "/", None).await;
    assert_eq!((weighted["a"], weighted["b"]), (300, 100));

    // Bad weights change nothing.
    for bad in [
        "{\"weight\": 0}",
        "{\"weight\": 1000001}",
        "{\"weight\": -1}",
        "{\"weight\": \"2\"}",
        "{\"weight\": 2, \"extra\": 1}",
        "weight=2",
        "",
    ] {
        let (status, body) = set_weight(admin, a.addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(listed(admin, a.addr).await["weight"]["effective"], 3);

    // Reset drops the override: the file's weight, and `source` back to the file.
    let (status, body) = act(admin, a.addr, "reset").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &body["weight"]["effective"],
            &body["source"],
            &body["override"]
        ),
        (&Value::from(1), &Value::from("file"), &Value::Null)
    );
    let even = spread(&proxy, 400, "/", None).await;
    assert_eq!((even["a"], even["b"]), (200, 200));
    // Reset also ends a drain.
    assert_eq!(act(admin, b.addr, "drain").await.0, 200);
    assert_eq!(spread(&proxy, 10, "/", None).await.get("b"), None);
    let (_, body) = act(admin, b.addr, "reset").await;
    assert_eq!(body["admin_state"], "active");
    assert_eq!(spread(&proxy, 10, "/", None).await.get("b"), Some(&5));
}

#[tokio::test]
async fn overrides_survive_three_reloads_and_leave_with_their_server() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let all = config(&list(&[&a, &b, &c]), "", true);
    let proxy = Proxy::start(&all);
    let admin = admin(&proxy);
    assert_eq!(act(admin, a.addr, "drain").await.0, 200);
    assert_eq!(set_weight(admin, b.addr, "{\"weight\": 2}").await.0, 200);
    let (drained, weighted) = (listed(admin, a.addr).await, listed(admin, b.addr).await);

    // Three reloads, each with a change elsewhere in the file.
    for timeout in ["5s", "6s", "7s"] {
        let changed = config(
            &list(&[&a, &b, &c]),
            &format!("connect_timeout = \"{timeout}\""),
            true,
        );
        reload(&proxy, &changed).await;
        assert_eq!(listed(admin, a.addr).await, drained, "after {timeout}");
        assert_eq!(listed(admin, b.addr).await, weighted, "after {timeout}");
        // a never; b about twice as often as c (a's turns are shared by weight, so not to
        // the request).
        let seen = spread(&proxy, 30, "/", None).await;
        assert_eq!(seen.get("a"), None, "{seen:?}");
        let b_share = seen.get("b").copied().unwrap_or(0);
        assert!((18..=22).contains(&b_share), "{seen:?}");
    }

    // A server removed from the file leaves with its override; added back, it starts from
    // the file's state.
    reload(&proxy, &config(&list(&[&b, &c]), "", true)).await;
    assert_eq!(listed(admin, a.addr).await, Value::Null);
    reload(&proxy, &all).await;
    let back = listed(admin, a.addr).await;
    assert_eq!(
        (&back["admin_state"], &back["source"], &back["override"]),
        (&Value::from("active"), &Value::from("file"), &Value::Null)
    );
    assert_eq!(listed(admin, b.addr).await["weight"]["effective"], 2);
    let seen = spread(&proxy, 40, "/", None).await;
    assert_eq!(
        (seen.get("a"), seen.get("b"), seen.get("c")),
        (Some(&10), Some(&20), Some(&10))
    );
}

/// Sends `GET path` through the proxy in a task, and waits until one of `backends` has it in
/// flight; returns that backend and the task (its status, and when it finished).
async fn slow_request(
    proxy: &Proxy,
    backends: &[&Backend],
    path: &'static str,
) -> (SocketAddr, tokio::task::JoinHandle<(StatusCode, Instant)>) {
    let (addr, admin) = (proxy.addr(), admin(proxy));
    let request = tokio::spawn(async move {
        let ans = get(&client(), addr, path).await;
        (ans.status, Instant::now())
    });
    let start = Instant::now();
    loop {
        for b in backends {
            if listed(admin, b.addr).await["in_flight"].as_u64() == Some(1) {
                return (b.addr, request);
            }
        }
        assert!(start.elapsed() < DEADLINE, "the slow request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn drain_with_wait_returns_once_the_slow_request_has_finished() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&config(&list(&[&a, &b]), "", true));
    let admin = admin(&proxy);

    let sent = Instant::now();
    let (busy, request) = slow_request(&proxy, &[&a, &b], "/slow/1000").await;
    let path = format!("/api/upstreams/app/servers/{busy}/drain?wait=5s");
    let (status, body) = call(admin, Method::POST, &path, Some(TOKEN), "").await;
    let returned = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["drained"], true);
    assert_eq!(body["in_flight"], 0);
    assert_eq!(body["server"]["admin_state"], "draining");
    assert!(body["waited_ms"].as_u64().unwrap_or(0) > 0, "{body}");
    // The backend held the request for 1 s after it arrived, which was after `sent`: the
    // drain cannot have returned before the response.
    assert!(
        returned.duration_since(sent) >= Duration::from_millis(1000),
        "the drain returned after {:?}",
        returned.duration_since(sent)
    );
    let (status, done) = request.await.expect("the slow request");
    assert_eq!(
        status,
        StatusCode::OK,
        "the request in flight finished normally"
    );
    assert!(done.duration_since(sent) >= Duration::from_millis(1000));

    // A wait that runs out: 504, not drained, the request still in flight and then served.
    assert_eq!(act(admin, busy, "enable").await.0, 200);
    let (busy, request) = slow_request(&proxy, &[&a, &b], "/slow/3000").await;
    let path = format!("/api/upstreams/app/servers/{busy}/drain?wait=300ms");
    let (status, body) = call(admin, Method::POST, &path, Some(TOKEN), "").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        (&body["drained"], &body["in_flight"]),
        (&Value::from(false), &Value::from(1))
    );
    assert!(body["waited_ms"].as_u64().unwrap_or(0) >= 300, "{body}");
    assert_eq!(request.await.expect("the slow request").0, StatusCode::OK);

    // A bad wait is refused before anything changes.
    let idle = if busy == a.addr { b.addr } else { a.addr };
    let path = format!("/api/upstreams/app/servers/{idle}/enable?wait=5s");
    assert_eq!(
        call(admin, Method::POST, &path, Some(TOKEN), "").await.0,
        400
    );
    let path = format!("/api/upstreams/app/servers/{idle}/drain?wait=soon");
    assert_eq!(
        call(admin, Method::POST, &path, Some(TOKEN), "").await.0,
        400
    );
    assert_eq!(listed(admin, idle).await["admin_state"], "active");
}

#[tokio::test]
async fn drain_with_wait_counts_open_tcp_connections() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[listeners.tcp]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n[upstreams.app]\nservers = [\"{backend_addr}\"]\n"
    ));
    let admin = admin(&proxy);
    let mut conn = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    conn.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    conn.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");

    let path = format!("/api/upstreams/app/servers/{backend_addr}/drain?wait=200ms");
    let (status, body) = call(admin, Method::POST, &path, Some(TOKEN), "").await;
    assert_eq!(
        (status, &body["in_flight"]),
        (StatusCode::GATEWAY_TIMEOUT, &Value::from(1))
    );
    // The open connection is not cut by the drain.
    conn.write_all(b"pong").await.expect("write");
    conn.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"pong");
    drop(conn);
    let path = format!("/api/upstreams/app/servers/{backend_addr}/drain?wait=5s");
    let (status, body) = call(admin, Method::POST, &path, Some(TOKEN), "").await;
    assert_eq!(
        (status, &body["drained"]),
        (StatusCode::OK, &Value::from(true))
    );
    // Drained: a new connection finds no backend and is closed.
    let mut refused = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    assert!(read_until_closed(&mut refused).await.is_empty());
}

#[tokio::test]
async fn unknown_names_get_404_naming_what_exists() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&config(&list(&[&a, &b]), "", true));
    let admin = admin(&proxy);
    let (status, body) = call(
        admin,
        Method::POST,
        &format!("/api/upstreams/nope/servers/{}/drain", a.addr),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap_or("").contains("nope"),
        "{body}"
    );
    assert_eq!(body["known"], serde_json::json!(["app"]));

    let gone = refused_addr();
    let (status, body) = act(admin, gone, "disable").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains(&gone.to_string())
    );
    assert_eq!(
        body["known"],
        serde_json::json!([a.addr.to_string(), b.addr.to_string()])
    );
    let (status, _) = call(
        admin,
        Method::GET,
        "/api/upstreams/app/servers/x:1",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = act(admin, a.addr, "explode").await;
    assert_eq!(status, 404);
    // A server named with its address percent-encoded, and one upstream on its own.
    let encoded = a.addr.to_string().replace(':', "%3A");
    let (status, body) = call(
        admin,
        Method::GET,
        &format!("/api/upstreams/app/servers/{encoded}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(
        (status, &body["written"]),
        (StatusCode::OK, &Value::from(a.addr.to_string()))
    );
    let (status, body) = call(admin, Method::GET, "/api/upstreams/app", Some(TOKEN), "").await;
    assert_eq!(
        (status, &body["balance"]),
        (StatusCode::OK, &Value::from("round_robin"))
    );
    assert_eq!(body["servers"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["queue"], Value::Null);
    assert_eq!(body["servers"][0]["max_conns"], Value::Null);
}

#[tokio::test]
async fn metrics_and_status_show_the_admin_state_and_count_the_actions() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&config(&list(&[&a, &b]), "", true));
    let admin = admin(&proxy);
    let gauge = |text: &str| {
        metric(
            text,
            &format!(
                "rproxy_backend_admin_state{{upstream=\"app\",backend=\"{}\"}}",
                a.addr
            ),
        )
    };
    let actions = |text: &str, action: &str| {
        metric(
            text,
            &format!("rproxy_admin_actions_total{{action=\"{action}\"}}"),
        )
    };
    let text = scrape(&proxy).await;
    assert_eq!(gauge(&text), Some(0.0));
    for action in ["drain", "disable", "enable", "weight", "reset"] {
        assert_eq!(actions(&text, action), Some(0.0), "{action}");
    }
    assert!(text.contains("# HELP rproxy_backend_admin_state"));

    act(admin, a.addr, "drain").await;
    assert_eq!(gauge(&scrape(&proxy).await), Some(1.0));
    act(admin, a.addr, "disable").await;
    set_weight(admin, a.addr, "{\"weight\": 4}").await;
    let text = scrape(&proxy).await;
    assert_eq!(gauge(&text), Some(2.0));

    // /status shows the same, per backend.
    let (status, json) = call(admin, Method::GET, "/status", Some(TOKEN), "").await;
    assert_eq!(status, 200);
    let row = json["upstreams"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["address"] == a.addr.to_string())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        (
            &row["admin_state"],
            &row["weight"],
            &row["effective_weight"]
        ),
        (&Value::from("disabled"), &Value::from(1), &Value::from(4))
    );
    assert_eq!(row["override"]["state"], "disabled");
    assert_eq!(row["override"]["weight"], 4);
    assert!(row["override"]["since_unix"].as_u64().unwrap_or(0) > 1_700_000_000);

    act(admin, a.addr, "enable").await;
    let text = scrape(&proxy).await;
    assert_eq!(gauge(&text), Some(0.0));
    for (action, n) in [
        ("drain", 1.0),
        ("disable", 1.0),
        ("enable", 1.0),
        ("weight", 1.0),
        ("reset", 0.0),
    ] {
        assert_eq!(actions(&text, action), Some(n), "{action}");
    }
}
