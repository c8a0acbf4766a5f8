//! The admin listener and `/metrics`, scraped over HTTP from the real binary after known
//! traffic: requests counted once per backend, errors by kind, in-flight back to 0, admin
//! paths absent from proxy listeners, the token enforced, and the output accepted by
//! `promtool check metrics`.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

const TOKEN: &str = "test-token-0123456789";

fn admin_config(body: &str, token: bool) -> String {
    let token = if token {
        format!("token = \"{TOKEN}\"\n")
    } else {
        String::new()
    };
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{token}{body}")
}

async fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(
        &client(),
        req.body(Full::<Bytes>::default()).expect("request"),
    )
    .await
}

async fn scrape(proxy: &Proxy) -> String {
    let ans = admin_get(proxy.admin.expect("admin listener"), "/metrics", None).await;
    assert_eq!(ans.status, 200);
    assert!(
        ans.headers["content-type"]
            .to_str()
            .expect("text")
            .starts_with("text/plain")
    );
    ans.body
}

/// A scrape once `settled` holds for it. A request is counted, and leaves the in-flight gauge,
/// when its response body has been sent: just after the client has the response, so a scrape
/// right after the last response can come first.
async fn scrape_when(proxy: &Proxy, settled: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = scrape(proxy).await;
        if settled(&text) || start.elapsed() > DEADLINE {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn requests_are_counted_once_per_backend() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&admin_config(
        &config_with(&format!("\"{}\", \"{}\"", a.addr, b.addr), ""),
        false,
    ));
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    let total = "rproxy_http_requests_total{listener=\"web\",code=\"2xx\"}";
    let in_flight = |backend: &Backend| {
        format!(
            "rproxy_backend_in_flight{{upstream=\"app\",backend=\"{}\"}}",
            backend.addr
        )
    };
    let text = scrape_when(&proxy, |text| {
        metric(text, total) == Some(10.0)
            && [&a, &b]
                .iter()
                .all(|b| metric(text, &in_flight(b)) == Some(0.0))
    })
    .await;
    for backend in [&a, &b] {
        let series = format!(
            "rproxy_upstream_requests_total{{upstream=\"app\",backend=\"{}\",code=\"2xx\"}}",
            backend.addr
        );
        assert_eq!(metric(&text, &series), Some(5.0), "{series} in\n{text}");
        assert_eq!(metric(&text, &in_flight(backend)), Some(0.0));
        let up = format!(
            "rproxy_backend_up{{upstream=\"app\",backend=\"{}\"}}",
            backend.addr
        );
        assert_eq!(metric(&text, &up), Some(1.0));
    }
    assert_eq!(metric(&text, total), Some(10.0));
    assert_eq!(
        metric(
            &text,
            "rproxy_http_request_duration_seconds_count{listener=\"web\"}"
        ),
        Some(10.0)
    );
    assert_eq!(
        metric(&text, "rproxy_connections_total{listener=\"web\"}"),
        Some(1.0),
        "one keep-alive connection"
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "rproxy_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert!(metric(&text, "process_open_fds").is_some_and(|n| n > 0.0));
}

#[tokio::test]
async fn errors_are_counted_by_kind() {
    let dead = refused_addr();
    let crashing = RawBackend::start(RawMode::DropRequest).await;
    let garbage = RawBackend::start(RawMode::Script {
        bytes: b"nonsense\r\n\r\n".to_vec(),
        close: true,
    })
    .await;
    let slow = Backend::start("slow").await;
    let mut config = String::new();
    for (name, server, extra) in [
        ("refused", dead.to_string(), ""),
        ("crashing", crashing.addr.to_string(), ""),
        ("garbage", garbage.addr.to_string(), ""),
        (
            "slow",
            slow.addr.to_string(),
            "response_timeout = \"200ms\"\n",
        ),
    ] {
        config.push_str(&format!(
            "[listeners.{name}]\nlisten = \"127.0.0.1:0\"\nupstream = \"{name}\"\n\
             [upstreams.{name}]\nservers = [\"{server}\"]\n{extra}"
        ));
    }
    let proxy = Proxy::start(&admin_config(&config, false));
    let c = client();
    for (name, status) in [
        ("refused", 502),
        ("crashing", 502),
        ("garbage", 502),
        ("slow", 504),
    ] {
        let ans = get(&c, proxy.listeners[name][0], "/slow/2000").await;
        assert_eq!(ans.status, status, "{name}");
    }
    let slow_5xx = "rproxy_http_requests_total{listener=\"slow\",code=\"5xx\"}";
    let text = scrape_when(&proxy, |text| metric(text, slow_5xx) == Some(1.0)).await;
    for (upstream, server, kind) in [
        ("refused", dead.to_string(), "connect"),
        ("crashing", crashing.addr.to_string(), "reset"),
        ("garbage", garbage.addr.to_string(), "protocol"),
        ("slow", slow.addr.to_string(), "timeout"),
    ] {
        let series = format!(
            "rproxy_upstream_errors_total{{upstream=\"{upstream}\",backend=\"{server}\",kind=\"{kind}\"}}"
        );
        assert_eq!(metric(&text, &series), Some(1.0), "{series} in\n{text}");
    }
    assert_eq!(metric(&text, slow_5xx), Some(1.0));
}

#[tokio::test]
async fn in_flight_rises_during_a_request_and_returns_to_zero() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&admin_config(
        &config_with(&format!("\"{}\"", b.addr), ""),
        false,
    ));
    let series = format!(
        "rproxy_backend_in_flight{{upstream=\"app\",backend=\"{}\"}}",
        b.addr
    );
    let addr = proxy.addr();
    let slow = tokio::spawn(async move { get(&client(), addr, "/slow/1000").await });
    wait_for("the request to reach the backend", || b.requests() == 1).await;
    assert_eq!(metric(&scrape(&proxy).await, &series), Some(1.0));
    assert_eq!(slow.await.expect("task").status, 200);
    let start = std::time::Instant::now();
    loop {
        // The count drops when the response body has been sent, just after the client has it.
        if metric(&scrape(&proxy).await, &series) == Some(0.0) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "in-flight never returned to 0");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn admin_paths_are_not_served_on_proxy_listeners() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&admin_config(
        &config_with(&format!("\"{}\"", b.addr), ""),
        false,
    ));
    for path in ["/metrics", "/healthz", "/readyz"] {
        let ans = get(&client(), proxy.addr(), path).await;
        assert_eq!(
            ans.backend(),
            "b",
            "{path} on the proxy listener goes to the backend"
        );
        assert_eq!(b.last().uri, path);
    }
}

#[tokio::test]
async fn the_token_is_required_when_configured() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&admin_config(
        &config_with(&format!("\"{}\"", b.addr), ""),
        true,
    ));
    let admin = proxy.admin.expect("admin");
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            admin_get(admin, path, None).await.status,
            401,
            "{path} without token"
        );
        assert_eq!(
            admin_get(admin, path, Some("test-token-0123456788"))
                .await
                .status,
            401,
            "{path} wrong token"
        );
        assert_eq!(
            admin_get(admin, path, Some(TOKEN)).await.status,
            200,
            "{path} with token"
        );
    }
    let ans = admin_get(admin, "/metrics", None).await;
    assert_eq!(ans.headers["www-authenticate"], "Bearer");
    assert_eq!(admin_get(admin, "/healthz", Some(TOKEN)).await.body, "ok\n");
    assert_eq!(admin_get(admin, "/nope", Some(TOKEN)).await.status, 404);
}

#[tokio::test]
async fn promtool_accepts_the_output_at_idle_under_load_and_after_a_backend_dies() {
    let Some(promtool) = promtool() else {
        return;
    };
    let (a, b, dead) = (
        Backend::start("a").await,
        Backend::start("b").await,
        refused_addr(),
    );
    let proxy = Proxy::start(&admin_config(
        &config_with(&format!("\"{}\", \"{}\", \"{dead}\"", a.addr, b.addr), ""),
        false,
    ));
    check_with_promtool(&promtool, &scrape(&proxy).await);

    // Under load: eight clients sending while the metrics are scraped.
    let addr = proxy.addr();
    let load: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let c = client();
                for _ in 0..100 {
                    assert_eq!(get(&c, addr, "/").await.status, 200);
                }
            })
        })
        .collect();
    for _ in 0..5 {
        check_with_promtool(&promtool, &scrape(&proxy).await);
    }
    for task in load {
        task.await.expect("load task");
    }
    // A backend dies: its errors appear, still as valid, non-duplicated series.
    b.stop().await;
    for _ in 0..6 {
        assert_eq!(get(&client(), proxy.addr(), "/").await.status, 200);
    }
    let text = scrape(&proxy).await;
    check_with_promtool(&promtool, &text);
    let errors = format!(
        "rproxy_upstream_errors_total{{upstream=\"app\",backend=\"{}\",kind=\"connect\"}}",
        a.addr
    );
    assert_eq!(metric(&text, &errors), Some(0.0));
}
