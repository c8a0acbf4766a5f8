//! Signals: SIGTERM drains (requests in progress finish, idle connections close, exit 0), a
//! second signal exits at once, the drain timeout bounds the wait, SIGHUP reloads rather than
//! kills.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

async fn connect_refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_progress_then_exits_zero() {
    let b = Backend::start("b").await;
    let mut proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let addr = proxy.addr();
    let slow = tokio::spawn(async move { get(&client(), addr, "/slow/1500").await });
    wait_for("the slow request to reach the backend", || {
        b.requests() == 1
    })
    .await;

    proxy.signal("TERM");
    // New connections are refused while the slow request is still running.
    let start = std::time::Instant::now();
    while !connect_refused(addr).await {
        assert!(
            start.elapsed() < DEADLINE,
            "listener still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !slow.is_finished(),
        "the listener closed before the request finished"
    );

    let ans = slow.await.expect("client task");
    assert_eq!((ans.status.as_u16(), ans.body.as_str()), (200, "b"));
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        proxy.ready(),
        None,
        "the ready file went when it stopped accepting"
    );
}

#[tokio::test]
async fn idle_keepalive_connections_do_not_hold_the_drain() {
    let b = Backend::start("b").await;
    let mut proxy = Proxy::start(&format!(
        "drain_timeout = \"60s\"\n{}",
        config_with(&format!("\"{}\"", b.addr), "")
    ));
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));

    proxy.signal("TERM");
    let mut buf = vec![0u8; 4096];
    // The idle connection is closed by rproxy, and rproxy exits long before the 60 s drain.
    let closed = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(
        closed.unwrap_or(0),
        0,
        "idle keep-alive connection closed on shutdown"
    );
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn the_drain_timeout_bounds_the_wait() {
    let b = Backend::start("b").await;
    let mut proxy = Proxy::start(&format!(
        "drain_timeout = \"300ms\"\n{}",
        config_with(&format!("\"{}\"", b.addr), "")
    ));
    let mut stuck = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    stuck
        .write_all(b"GET /slow/60000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    wait_for("the request to reach the backend", || b.requests() == 1).await;
    let term = std::time::Instant::now();
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    // It waited for the request as long as the drain timeout allowed, and no longer: the
    // request was cut, unanswered.
    let waited = term.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(30),
        "exited {waited:?} after SIGTERM"
    );
    assert_eq!(read_until_closed(&mut stuck).await, b"");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let b = Backend::start("b").await;
    let mut proxy = Proxy::start(&format!(
        "drain_timeout = \"120s\"\n{}",
        config_with(&format!("\"{}\"", b.addr), "")
    ));
    let addr = proxy.addr();
    let _stuck = tokio::spawn(async move { get(&client(), addr, "/slow/60000").await });
    wait_for("the request to reach the backend", || b.requests() == 1).await;
    proxy.signal("TERM");
    // Shutting down: the listener refuses new connections.
    let start = std::time::Instant::now();
    while !connect_refused(addr).await {
        assert!(
            start.elapsed() < DEADLINE,
            "listener still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("INT");
    assert_eq!(proxy.wait_exit().await.code(), Some(1));
}

#[tokio::test]
async fn sighup_reloads_and_an_unchanged_file_changes_nothing() {
    let b = Backend::start("b").await;
    let mut proxy = Proxy::start(&with_admin(&config_with(&format!("\"{}\"", b.addr), "")));
    let ready = proxy.ready();
    // What /status says of the listeners and upstreams (not the uptime).
    let state = || async {
        let s = proxy.status().await;
        (s["listeners"].clone(), s["upstreams"].clone())
    };
    let before = state().await;
    assert!(proxy.reload().await, "the reload succeeded");
    assert_eq!(state().await, before, "nothing changed");
    assert_eq!(proxy.ready(), ready);
    assert_eq!(proxy.exited(), None, "SIGHUP does not stop it");
    assert_eq!(get(&client(), proxy.addr(), "/").await.status, 200);
}
