//! Failures answered cleanly: a dead backend costs the client nothing when a retry is safe,
//! and otherwise the client gets 502, 503 or 504 with a log line naming the backend.

mod common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

#[tokio::test]
async fn refused_backend_is_skipped_with_zero_client_errors() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dead = refused_addr();
    let servers = format!(r#""{}", "{dead}", "{}""#, a.addr, b.addr);
    let proxy = Proxy::start(&config_with(&servers, ""));
    let c = client();
    for i in 0..90 {
        let ans = get(&c, proxy.addr(), "/").await;
        assert_eq!(ans.status, 200, "request {i}");
    }
    assert_eq!(a.requests() + b.requests(), 90);
    proxy
        .wait_for_log(&["backend request failed", &dead.to_string()])
        .await;
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
async fn slow_response_head_is_a_504_and_not_resent() {
    let (slow, other) = (Backend::start("slow").await, Backend::start("other").await);
    let servers = format!(r#""{}", "{}""#, slow.addr, other.addr);
    let proxy = Proxy::start(&config_with(&servers, "response_timeout = \"300ms\""));
    let ans = get(&client(), proxy.addr(), "/slow/5000").await;
    assert_eq!(ans.status, 504);
    assert_eq!(ans.body, "504 Gateway Timeout\n");
    assert_eq!(
        other.requests(),
        0,
        "a request that reached a backend is not sent twice"
    );
    proxy
        .wait_for_log(&["no response head in time", &slow.addr.to_string()])
        .await;
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
    let proxy = Proxy::start(&config_with(&servers, "connect_timeout = \"200ms\""));
    let c = client();
    for _ in 0..4 {
        let ans = get(&c, proxy.addr(), "/").await;
        assert_eq!((ans.status.as_u16(), ans.backend()), (200, "good"));
    }
    // The unreachable backend was tried and given up on at the connect timeout.
    proxy
        .wait_for_log(&[&hole.to_string(), "retry=true", "deadline has elapsed"])
        .await;
}

#[tokio::test]
async fn idempotent_request_dropped_by_a_crashing_backend_is_retried_elsewhere() {
    let crashing = RawBackend::start(RawMode::DropRequest).await;
    let good = Backend::start("good").await;
    let servers = format!(r#""{}", "{}""#, crashing.addr, good.addr);
    // Passive health off: every request meets the crashing backend and is retried.
    let proxy = Proxy::start(&config_with(&servers, "max_fails = 0"));
    let c = client();
    for _ in 0..6 {
        let ans = get(&c, proxy.addr(), "/").await;
        assert_eq!((ans.status.as_u16(), ans.backend()), (200, "good"));
    }
    assert!(crashing.accepted.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_not_sent_again() {
    let crashing = RawBackend::start(RawMode::DropRequest).await;
    let good = Backend::start("good").await;
    let servers = format!(r#""{}", "{}""#, crashing.addr, good.addr);
    let proxy = Proxy::start(&config_with(&servers, ""));
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
