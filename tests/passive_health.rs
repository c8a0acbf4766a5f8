//! Passive health, as nginx's max_fails / fail_timeout: failures seen by real requests take a
//! backend out for fail_timeout, then one request probes it; chosen statuses count too, 4xx
//! never.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use common::*;

/// `rproxy_backend_state_changes_total` of `addr` in upstream `app`, `to` up or down.
fn changes(addr: std::net::SocketAddr, to: &str) -> String {
    backend_series(
        "rproxy_backend_state_changes_total",
        "app",
        addr,
        &format!(",to=\"{to}\""),
    )
}

/// Requests to `addr` that failed, of every kind, in a `/metrics` scrape.
fn failures(metrics: &str, addr: std::net::SocketAddr) -> f64 {
    ["connect", "timeout", "reset", "protocol"]
        .iter()
        .filter_map(|kind| {
            let extra = format!(",kind=\"{kind}\"");
            metric(
                metrics,
                &backend_series("rproxy_upstream_errors_total", "app", addr, &extra),
            )
        })
        .sum()
}

#[tokio::test]
async fn a_failing_backend_is_left_out_for_fail_timeout_then_probed() {
    // Answers every request with 502, which the config counts as a failure.
    let bad = RawBackend::start(RawMode::Script {
        bytes: b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\n\r\nbad".to_vec(),
        close: false,
    })
    .await;
    let good = Backend::start("good").await;
    let proxy = Proxy::start(&with_admin(&config_with(
        &format!("\"{}\", \"{}\"", bad.addr, good.addr),
        "max_fails = 1\nfail_timeout = \"1s\"\nfail_on_status = [502]",
    )));
    let c = client();
    // The first request meets the bad backend: its answer is passed on as it is, and counts
    // as its failure.
    assert_eq!(get(&c, proxy.addr(), "/").await.status, 502);
    let out_at = Instant::now();
    proxy
        .wait_for_metric(&changes(bad.addr, "down"), |n| n == 1.0)
        .await;
    // While it is out, every request goes to the good backend.
    for _ in 0..10 {
        assert_eq!(get(&c, proxy.addr(), "/").await.backend(), "good");
    }
    assert_eq!(bad.answered.load(Ordering::SeqCst), 1);
    // After fail_timeout one request probes it again.
    let start = Instant::now();
    while bad.answered.load(Ordering::SeqCst) == 1 {
        assert!(start.elapsed() < DEADLINE, "never probed again");
        get(&c, proxy.addr(), "/").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        out_at.elapsed() >= Duration::from_millis(900),
        "probed too early"
    );
}

#[tokio::test]
async fn connect_failures_take_a_backend_out_and_4xx_never_does() {
    let dead = refused_addr();
    let good = Backend::start("good").await;
    let proxy = Proxy::start(&with_admin(&config_with(
        &format!("\"{dead}\", \"{}\"", good.addr),
        "fail_timeout = \"30s\"\nfail_on_status = [502, 503, 504]",
    )));
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    // The refused backend was tried once, then left out: one failure, not ten.
    let m = proxy.scrape().await;
    assert_eq!(metric(&m, &changes(dead, "down")), Some(1.0), "{m}");
    assert_eq!(failures(&m, dead), 1.0, "{m}");

    // A backend answering 404s is not a failing backend.
    let notfound = RawBackend::start(RawMode::Script {
        bytes: b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
        close: false,
    })
    .await;
    let proxy = Proxy::start(&with_admin(&config_with(
        &format!("\"{}\"", notfound.addr),
        "fail_on_status = [502, 503, 504]",
    )));
    for _ in 0..5 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 404);
    }
    let m = proxy.scrape().await;
    assert_eq!(
        metric(&m, &changes(notfound.addr, "down")),
        Some(0.0),
        "{m}"
    );
    assert_eq!(failures(&m, notfound.addr), 0.0, "{m}");
    assert_eq!(
        proxy.backend_status("app", notfound.addr).await["state"],
        "up"
    );
}

/// A backend that takes `n` requests, holds them, then closes all their connections at once:
/// a process that died with requests in flight.
async fn dies_with_requests_in_flight(n: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < n {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            held.push(stream);
        }
        // Dropping them closes every one; the listener goes too, so new connections are refused.
    });
    addr
}

#[tokio::test]
async fn a_backend_dying_under_many_requests_is_left_out_once() {
    const HELD: usize = 4;
    let dying = dies_with_requests_in_flight(HELD).await;
    let good = Backend::start("good").await;
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        config_with(
            &format!("\"{dying}\", \"{}\"", good.addr),
            "max_fails = 1\nfail_timeout = \"30s\"",
        )
    ));
    // Round-robin sends every other request to the dying backend, which fails them all
    // together once it has HELD. Each is a GET, so each is retried on the good backend.
    let c = client();
    let answers =
        futures_util::future::join_all((0..2 * HELD).map(|_| get(&c, proxy.addr(), "/"))).await;
    for a in &answers {
        assert_eq!((a.status.as_u16(), a.backend()), (200, "good"));
    }
    // Each held request failed there once (counted before its retry was answered).
    let metrics = scrape_admin(proxy.admin.expect("admin")).await;
    assert_eq!(
        failures(&metrics, dying),
        HELD as f64,
        "each held request failed there once: {metrics}"
    );
    // One backend went out once: one state change, not one per request.
    let down = format!(
        "rproxy_backend_state_changes_total{{upstream=\"app\",backend=\"{dying}\",to=\"down\"}}"
    );
    assert_eq!(metric(&metrics, &down), Some(1.0), "{down} in:\n{metrics}");
}
