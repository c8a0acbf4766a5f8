//! Failures answered cleanly: a dead backend costs the client nothing when a retry is safe,
//! and otherwise the client gets 502, 503 or 504; `/metrics` counts each failure against its
//! backend, each retry, and each retry refused with its reason.

mod common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

/// `rproxy_upstream_errors_total` of backend `addr` in upstream `app`, of `kind`.
fn errors(addr: impl std::fmt::Display, kind: &str) -> String {
    format!("rproxy_upstream_errors_total{{upstream=\"app\",backend=\"{addr}\",kind=\"{kind}\"}}")
}

const RETRIES: &str = "rproxy_upstream_retries_total{upstream=\"app\"}";

/// `rproxy_upstream_retries_refused_total` of upstream `app` for `reason`.
fn refused(reason: &str) -> String {
    format!("rproxy_upstream_retries_refused_total{{upstream=\"app\",reason=\"{reason}\"}}")
}

#[tokio::test]
async fn refused_backend_is_skipped_with_zero_client_errors() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dead = refused_addr();
    let servers = format!(r#""{}", "{dead}", "{}""#, a.addr, b.addr);
    let proxy = Proxy::start(&with_admin(&config_with(&servers, "")));
    let c = client();
    for i in 0..90 {
        let ans = get(&c, proxy.addr(), "/").await;
        assert_eq!(ans.status, 200, "request {i}");
    }
    assert_eq!(a.requests() + b.requests(), 90);
    // The dead backend was tried, failed to connect, and its request went on.
    let m = proxy.scrape().await;
    let failed = metric(&m, &errors(dead, "connect")).unwrap_or(0.0);
    assert!(failed >= 1.0, "{m}");
    assert_eq!(metric(&m, RETRIES), Some(failed), "{m}");
}

#[tokio::test]
async fn a_body_that_never_left_rproxy_goes_to_the_next_backend_whole() {
    let good = Backend::start("good").await;
    let dead = refused_addr();
    let servers = format!(r#""{dead}", "{}""#, good.addr);
    let proxy = Proxy::start(&config_with(&servers, ""));
    let c = client();
    for _ in 0..4 {
        let req = Request::post(format!("http://{}/upload", proxy.addr()))
            .body(Full::new(Bytes::from(vec![7u8; 100_000])))
            .expect("request");
        let ans = send(&c, req).await;
        assert_eq!((ans.status.as_u16(), ans.backend()), (200, "good"));
        assert_eq!(good.last().body_len, 100_000);
    }
}

#[tokio::test]
async fn every_backend_refusing_is_a_502() {
    let servers = format!(r#""{}", "{}""#, refused_addr(), refused_addr());
    let proxy = Proxy::start(&config_with(&servers, ""));
    let ans = get(&client(), proxy.addr(), "/").await;
    assert_eq!(ans.status, 502);
    assert_eq!(ans.body, "502 Bad Gateway\n");
    assert_eq!(ans.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn no_usable_backend_is_a_503() {
    let b = Backend::start("b").await;
    let servers = format!(r#"{{ addr = "{}", down = true }}"#, b.addr);
    let proxy = Proxy::start(&config_with(&servers, ""));
    let ans = get(&client(), proxy.addr(), "/").await;
    assert_eq!(ans.status, 503);
    assert_eq!(ans.body, "503 Service Unavailable\n");
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn slow_response_head_is_retried_when_idempotent_else_a_504() {
    let slow = Backend::start_with_delay("slow", std::time::Duration::from_secs(5)).await;
    let other = Backend::start("other").await;
    let servers = format!(r#""{}", "{}""#, slow.addr, other.addr);
    // Passive health off, so every request meets the slow backend first in turn.
    let proxy = Proxy::start(&with_admin(&config_with(
        &servers,
        "response_timeout = \"300ms\"\nmax_fails = 0",
    )));
    let c = client();
    // Round-robin sends the first request to the slow backend: a GET goes on to the other.
    let ans = get(&c, proxy.addr(), "/").await;
    assert_eq!((ans.status.as_u16(), ans.backend()), (200, "other"));
    assert_eq!(other.requests(), 1);
    let m = proxy.scrape().await;
    assert_eq!(metric(&m, &errors(slow.addr, "timeout")), Some(1.0), "{m}");
    assert_eq!(metric(&m, RETRIES), Some(1.0), "{m}");
    // The next GET is answered by the other backend too (whether it met the slow one first
    // depends on whose turn the retry took); then a POST meets the slow one and is not sent
    // twice: it may have taken effect.
    assert_eq!(get(&c, proxy.addr(), "/").await.backend(), "other");
    let req = Request::post(format!("http://{}/", proxy.addr()))
        .body(Full::new(Bytes::from_static(b"order=1")))
        .expect("request");
    let ans = send(&c, req).await;
    assert_eq!(ans.status, 504);
    assert_eq!(ans.body, "504 Gateway Timeout\n");
    assert_eq!(
        other.requests(),
        2,
        "the POST was not sent to the other backend"
    );
    // Every GET that met the slow backend went on; the POST, refused as unsafe, did not.
    let m = proxy.scrape().await;
    let timeouts = metric(&m, &errors(slow.addr, "timeout")).unwrap_or(0.0);
    assert_eq!(metric(&m, RETRIES), Some(timeouts - 1.0), "{m}");
    assert_eq!(metric(&m, &refused("unsafe")), Some(1.0), "{m}");
}

#[tokio::test]
async fn a_retry_must_fit_in_tries_and_try_timeout() {
    let (slow_a, slow_b) = (Backend::start("a").await, Backend::start("b").await);
    let servers = format!(r#""{}", "{}""#, slow_a.addr, slow_b.addr);
    // Each try may wait 400ms, but all of them together only 600ms: the second try is cut
    // short and the client gets its 504 at about 600ms, not 800ms.
    let proxy = Proxy::start(&with_admin(&config_with(
        &servers,
        "response_timeout = \"400ms\"\ntry_timeout = \"600ms\"\nmax_fails = 0",
    )));
    let c = client();
    let ans = get(&c, proxy.addr(), "/slow/5000").await;
    assert_eq!(ans.status, 504);
    assert_eq!((slow_a.requests(), slow_b.requests()), (1, 1));
    let m = proxy.scrape().await;
    assert_eq!(metric(&m, &refused("try_timeout")), Some(1.0), "{m}");
    assert_eq!(metric(&m, &refused("tries")), Some(0.0), "{m}");
    // With tries = 1 nothing is sent a second time.
    let (c_a, c_b) = (Backend::start("a").await, Backend::start("b").await);
    let servers = format!(r#""{}", "{}""#, c_a.addr, c_b.addr);
    let proxy = Proxy::start(&with_admin(&config_with(
        &servers,
        "response_timeout = \"300ms\"\ntries = 1\nmax_fails = 0",
    )));
    let ans = get(&c, proxy.addr(), "/slow/5000").await;
    assert_eq!(ans.status, 504);
    assert_eq!(c_a.requests() + c_b.requests(), 1);
    let m = proxy.scrape().await;
    assert_eq!(metric(&m, &refused("tries")), Some(1.0), "{m}");
    assert_eq!(metric(&m, &refused("try_timeout")), Some(0.0), "{m}");
}

#[tokio::test]
async fn connect_timeout_moves_on_to_the_next_backend() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connecting
    // hangs until the connect timeout, like a host that has vanished from the network.
    let blackhole =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    blackhole
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .expect("addr")
                .into(),
        )
        .expect("bind");
    blackhole.listen(0).expect("listen");
    let hole = blackhole
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        let _ = s.connect(&hole.into()); // in progress or done: either fills the queue
        fillers.push(s);
    }
    let good = Backend::start("good").await;
    let servers = format!(r#""{hole}", "{}""#, good.addr);
    let proxy = Proxy::start(&with_admin(&config_with(
        &servers,
        "connect_timeout = \"200ms\"",
    )));
    let c = client();
    for i in 0..4 {
        let sent = std::time::Instant::now();
        let ans = get(&c, proxy.addr(), "/").await;
        assert_eq!((ans.status.as_u16(), ans.backend()), (200, "good"));
        if i == 0 {
            // Round-robin's first pick is the unreachable backend: given up on at the connect
            // timeout, not sooner.
            assert!(sent.elapsed() >= std::time::Duration::from_millis(200));
        }
    }
    // It was tried, failed to connect, and the request went on to the next backend.
    let m = proxy.scrape().await;
    assert_eq!(metric(&m, &errors(hole, "connect")), Some(1.0), "{m}");
    assert_eq!(metric(&m, RETRIES), Some(1.0), "{m}");
}

/// A backend that reads each request head and closes without answering (a process crashing
/// on it), first in file order, then a healthy one named "good"; `extra` goes in the upstream.
async fn crashing_then_good(extra: &str) -> (RawBackend, Backend, Proxy) {
    let crashing = RawBackend::start(RawMode::DropRequest).await;
    let good = Backend::start("good").await;
    let servers = format!(r#""{}", "{}""#, crashing.addr, good.addr);
    let proxy = Proxy::start(&config_with(&servers, extra));
    (crashing, good, proxy)
}

#[tokio::test]
async fn idempotent_request_dropped_by_a_crashing_backend_is_retried_elsewhere() {
    // Passive health off: every request meets the crashing backend and is retried.
    let (crashing, _good, proxy) = crashing_then_good("max_fails = 0").await;
    let c = client();
    for _ in 0..6 {
        let ans = get(&c, proxy.addr(), "/").await;
        assert_eq!((ans.status.as_u16(), ans.backend()), (200, "good"));
    }
    assert!(crashing.accepted.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn a_request_sent_again_carries_the_same_head() {
    // The first attempt takes the head itself; the second is made from the copy kept for it.
    let (crashing, good, proxy) = crashing_then_good("max_fails = 0").await;
    let req = Request::get(format!("http://{}/page?q=1", proxy.addr()))
        .header("x-many", "first")
        .header("x-many", "second, third")
        .header("x-empty", "")
        .header("authorization", "Bearer token:with:colons")
        .header("x-request-id", "client-chosen-id")
        .header(
            "x-bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").expect("value"),
        )
        .body(Full::default())
        .expect("request");
    let ans = send(&client(), req).await;
    assert_eq!((ans.status.as_u16(), ans.backend()), (200, "good"));
    assert_eq!(
        crashing.accepted.load(Ordering::SeqCst),
        1,
        "the first attempt"
    );
    let seen = good.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("GET", "/page?q=1")
    );
    let all = |name: &str| -> Vec<&[u8]> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect()
    };
    assert_eq!(all("x-many"), [&b"first"[..], b"second, third"]);
    assert_eq!(all("x-empty"), [&b""[..]]);
    assert_eq!(all("authorization"), [&b"Bearer token:with:colons"[..]]);
    assert_eq!(all("x-request-id"), [&b"client-chosen-id"[..]]);
    assert_eq!(all("x-bytes"), [&b"caf\xe9"[..]]);
    assert_eq!(all("x-forwarded-for"), [&b"127.0.0.1"[..]]);
    assert_eq!(all("host"), [proxy.addr().to_string().as_bytes()]);
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_not_sent_again() {
    let (crashing, good, proxy) = crashing_then_good("").await;
    // The first pick is the crashing backend (file order).
    let req = Request::post(format!("http://{}/order", proxy.addr()))
        .body(Full::new(Bytes::from_static(b"buy 1")))
        .expect("request");
    let ans = send(&client(), req).await;
    assert_eq!(ans.status, 502);
    assert_eq!(
        good.requests(),
        0,
        "a POST that may have been processed is not repeated"
    );
    wait_for("the crashing backend to see the request", || {
        crashing.accepted.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn a_put_body_within_retry_buffer_is_sent_again_whole() {
    // The first backend reads the whole request and never answers; the second is healthy.
    let hold = RawBackend::start(RawMode::Hold).await;
    let good = Backend::start("good").await;
    let servers = format!(r#""{}", "{}""#, hold.addr, good.addr);
    let proxy = Proxy::start(&with_admin(&config_with(
        &servers,
        "response_timeout = \"300ms\"\nretry_buffer = \"64k\"\nmax_fails = 0",
    )));
    let c = client();
    let put = |len: usize| {
        Request::put(format!("http://{}/doc", proxy.addr()))
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .expect("request")
    };
    // Round-robin: the first request meets the silent backend, is kept, and goes on.
    let ans = send(&c, put(60_000)).await;
    assert_eq!((ans.status.as_u16(), ans.backend()), (200, "good"));
    assert_eq!(good.last().body_len, 60_000, "the kept body arrived whole");
    // The second is answered by the good backend too (kept and sent again if it met the
    // silent one first).
    assert_eq!(send(&c, put(10)).await.backend(), "good");
    // A body larger than retry_buffer was streamed, not kept: it cannot be sent again.
    let ans = send(&c, put(200_000)).await;
    assert_eq!(ans.status, 504);
    assert_eq!(good.requests(), 2);
    // Every kept body that met the silent backend went on; the streamed one did not.
    let m = proxy.scrape().await;
    let timeouts = metric(&m, &errors(hold.addr, "timeout")).unwrap_or(0.0);
    assert!(timeouts >= 2.0, "{m}");
    assert_eq!(metric(&m, RETRIES), Some(timeouts - 1.0), "{m}");
    assert_eq!(metric(&m, &refused("unsafe")), Some(1.0), "{m}");
}
