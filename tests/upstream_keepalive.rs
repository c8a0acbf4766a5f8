//! Upstream connections are kept alive and reused, closed when idle, and a pooled connection
//! the backend has just closed never turns into a client error.

mod common;

use std::sync::atomic::Ordering;

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
