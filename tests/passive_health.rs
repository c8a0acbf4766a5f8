//! Passive health, as nginx's max_fails / fail_timeout: failures seen by real requests take a
//! backend out for fail_timeout, then one request probes it; chosen statuses count too, 4xx
//! never.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn a_failing_backend_is_left_out_for_fail_timeout_then_probed() {
    // Answers every request with 502, which the config counts as a failure.
    let bad = RawBackend::start(RawMode::Script {
        bytes: b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\n\r\nbad".to_vec(),
        close: false,
    })
    .await;
    let good = Backend::start("good").await;
    let proxy = Proxy::start(&config_with(
        &format!("\"{}\", \"{}\"", bad.addr, good.addr),
        "max_fails = 1\nfail_timeout = \"1s\"\nfail_on_status = [502]",
    ));
    let c = client();
    // The first request meets the bad backend: its answer is passed on as it is.
    assert_eq!(get(&c, proxy.addr(), "/").await.status, 502);
    let out_at = Instant::now();
    proxy
        .wait_for_log(&[
            "left out for fail_timeout",
            &bad.addr.to_string(),
            "status 502",
        ])
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
    let proxy = Proxy::start(&config_with(
        &format!("\"{dead}\", \"{}\"", good.addr),
        "fail_timeout = \"30s\"\nfail_on_status = [502, 503, 504]",
    ));
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    // The refused backend was tried once, then left out: one failure logged, not ten.
    proxy
        .wait_for_log(&["left out for fail_timeout", &dead.to_string()])
        .await;
    let tries = proxy
        .logs()
        .iter()
        .filter(|l| l.contains("backend request failed") && l.contains(&dead.to_string()))
        .count();
    assert_eq!(tries, 1);

    // A backend answering 404s is not a failing backend.
    let notfound = RawBackend::start(RawMode::Script {
        bytes: b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
        close: false,
    })
    .await;
    let proxy = Proxy::start(&config_with(
        &format!("\"{}\"", notfound.addr),
        "fail_on_status = [502, 503, 504]",
    ));
    for _ in 0..5 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 404);
    }
    assert!(!proxy.logs().iter().any(|l| l.contains("left out")));
}
