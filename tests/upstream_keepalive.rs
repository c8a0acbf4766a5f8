//! Upstream connections are kept alive and reused, closed when idle, and a pooled connection
//! the backend has just closed never turns into a client error.

mod common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use common::*;

#[tokio::test]
async fn sequential_requests_reuse_a_handful_of_connections() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let c = client();
    for _ in 0..300 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    let conns = b.connections.load(Ordering::SeqCst);
    assert_eq!(b.requests(), 300);
    assert!(
        conns <= 2,
        "300 sequential requests used {conns} upstream connections"
    );
}

#[tokio::test]
async fn concurrent_clients_share_the_pool() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let addr = proxy.addr();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..50 {
                assert_eq!(get(&c, addr, "/").await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let conns = b.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 16,
        "400 requests from 8 clients used {conns} upstream connections"
    );
}

#[tokio::test]
async fn backend_closing_pooled_connections_costs_no_request() {
    // Every connection is closed by the backend right after its first answer, without
    // `Connection: close`: each reuse attempt meets a dead pooled connection.
    let raw = RawBackend::start(RawMode::CloseAfterAnswer).await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", raw.addr), ""));
    let c = client();
    for i in 0..200 {
        let a = get(&c, proxy.addr(), &format!("/{i}")).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.body, "ok");
    }
    assert_eq!(raw.answered.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn idle_pooled_connections_are_closed_by_rproxy() {
    let raw = RawBackend::start(RawMode::Answer).await;
    let proxy = Proxy::start(&config_with(
        &format!("\"{}\"", raw.addr),
        "keepalive_timeout = \"300ms\"",
    ));
    let c = client();
    assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    assert_eq!(raw.accepted.load(Ordering::SeqCst), 1);
    // The backend never closes; only rproxy's idle timeout can.
    wait_for("rproxy to close its idle upstream connection", || {
        raw.open.load(Ordering::SeqCst) == 0
    })
    .await;
    // And a later request simply opens a new one.
    assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    assert_eq!(raw.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn answers_without_a_body_keep_their_connection() {
    // hyper never reads a body that is empty from the start, so these give their connection
    // back by another path than a body read to its end.
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let c = client();
    for i in 0..100 {
        let head = Request::head(format!("http://{}/", proxy.addr()))
            .body(Full::default())
            .expect("request");
        assert_eq!(send(&c, head).await.status, 200, "HEAD {i}");
        let empty = get(&c, proxy.addr(), "/download/0").await;
        assert_eq!((empty.status.as_u16(), empty.body.as_str()), (200, ""));
    }
    assert_eq!(b.requests(), 200);
    let conns = b.connections.load(Ordering::SeqCst);
    assert!(conns <= 2, "200 bodyless answers used {conns} connections");
}

#[tokio::test]
async fn a_response_the_client_abandons_does_not_spoil_the_next() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    for _ in 0..3 {
        // The client reads the first chunk of a body that never ends, and goes away.
        let c = client();
        let body = stalled_body(&c, proxy.addr()).await;
        drop((body, c));
        // The connection that carried it is never handed to another request.
        let c = client();
        for _ in 0..5 {
            let a = get(&c, proxy.addr(), "/").await;
            assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "b"));
        }
    }
}

#[tokio::test]
async fn a_kept_connection_the_backend_closes_on_reuse_costs_no_idempotent_request() {
    // Every reused connection is closed by the backend as the request arrives: the request
    // went out, no answer came. A GET goes again, to the same (only) backend on a new
    // connection; a POST may have taken effect, so it is answered 502, as nginx does.
    let raw = RawBackend::start(RawMode::DropSecondRequest).await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", raw.addr), ""));
    let c = client();
    for i in 0..20 {
        let a = get(&c, proxy.addr(), &format!("/{i}")).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, "ok"),
            "request {i}"
        );
    }
    assert_eq!(raw.answered.load(Ordering::SeqCst), 20);
    let post = Request::post(format!("http://{}/order", proxy.addr()))
        .body(Full::new(Bytes::from_static(b"x")))
        .expect("request");
    assert_eq!(send(&c, post).await.status, 502);
}
