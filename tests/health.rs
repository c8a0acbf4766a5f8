//! Active health checks with real backends: a failing backend leaves rotation after `fall`
//! failed checks and returns after `rise` passes, a dead one (TCP check) leaves without a
//! client error, and when every backend fails its checks the pool fails open (or answers 503
//! when told to).

mod common;

use std::sync::atomic::Ordering;

use common::*;

/// `rproxy_health_checks_total` of `addr` in upstream `app` with `result` (`pass`, `fail`).
fn checks(addr: std::net::SocketAddr, result: &str) -> String {
    backend_series(
        "rproxy_health_checks_total",
        "app",
        addr,
        &format!(",result=\"{result}\""),
    )
}

const FAST_CHECKS: &str = "[upstreams.app.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n";

async fn three() -> Vec<Backend> {
    let mut v = Vec::new();
    for name in ["a", "b", "c"] {
        v.push(Backend::start(name).await);
    }
    v
}

fn list(backends: &[Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn a_failing_backend_leaves_rotation_and_comes_back() {
    let backends = three().await;
    let proxy = Proxy::start(&with_admin(&format!(
        "{}{FAST_CHECKS}",
        config_with(&list(&backends), "")
    )));
    let c = client();
    let b = &backends[1];

    // No request reaches it meanwhile, so only its checks (answered 503) can take it out.
    b.healthy.store(false, Ordering::SeqCst);
    proxy
        .wait_for_backend_state("app", b.addr, "unhealthy")
        .await;
    assert_eq!(
        proxy.backend_status("app", b.addr).await["last_check"],
        "fail"
    );
    let before = b.requests();
    for _ in 0..30 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    assert_eq!(
        b.requests(),
        before,
        "an unhealthy backend gets no requests"
    );

    b.healthy.store(true, Ordering::SeqCst);
    proxy.wait_for_backend_state("app", b.addr, "up").await;
    for _ in 0..30 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    assert_eq!(
        b.requests(),
        before + 10,
        "back in rotation, one request in three"
    );
}

#[tokio::test]
async fn a_dead_backend_is_ejected_by_a_tcp_check_without_client_errors() {
    let mut backends = three().await;
    let proxy = Proxy::start(&with_admin(&format!(
        "{}[upstreams.app.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\nfall = 2\n",
        config_with(&list(&backends), "")
    )));
    let c = client();
    let dead = backends.remove(0);
    let addr = dead.addr;
    dead.stop().await;
    for _ in 0..20 {
        assert_eq!(
            get(&c, proxy.addr(), "/").await.status,
            200,
            "failover covers it meanwhile"
        );
    }
    // Every check of a dead backend fails: two of them (fall) take it out by its checks,
    // whatever passive health did meanwhile.
    proxy
        .wait_for_metric(&checks(addr, "fail"), |n| n >= 2.0)
        .await;
    let dead = proxy.backend_status("app", addr).await;
    assert_eq!(
        (&dead["state"], &dead["last_check"]),
        (&"unhealthy".into(), &"fail".into())
    );
    for _ in 0..20 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
}

/// Three backends whose health endpoints all fail, once rproxy has seen every one fail.
async fn all_unhealthy(upstream_extra: &str) -> (Vec<Backend>, Proxy) {
    let backends = three().await;
    let proxy = Proxy::start(&with_admin(&format!(
        "{}{FAST_CHECKS}",
        config_with(&list(&backends), upstream_extra)
    )));
    for b in &backends {
        b.healthy.store(false, Ordering::SeqCst);
    }
    for b in &backends {
        proxy
            .wait_for_backend_state("app", b.addr, "unhealthy")
            .await;
    }
    (backends, proxy)
}

#[tokio::test]
async fn when_every_backend_fails_its_checks_the_pool_fails_open() {
    let (_backends, proxy) = all_unhealthy("").await;
    let c = client();
    for _ in 0..9 {
        assert_eq!(
            get(&c, proxy.addr(), "/").await.status,
            200,
            "a broken health endpoint must not black-hole the pool"
        );
    }
    assert_eq!(
        proxy
            .metric("rproxy_upstream_fail_open_total{upstream=\"app\"}")
            .await,
        1.0,
        "counted once per episode, not per request"
    );
}

#[tokio::test]
async fn all_unhealthy_503_answers_at_once() {
    let (backends, proxy) = all_unhealthy("all_unhealthy = \"503\"").await;
    let before: usize = backends.iter().map(Backend::requests).sum();
    let ans = get(&client(), proxy.addr(), "/").await;
    assert_eq!(ans.status, 503);
    assert_eq!(ans.headers["retry-after"], "1");
    assert_eq!(
        backends.iter().map(Backend::requests).sum::<usize>(),
        before
    );
}

/// A backend whose `/health` alternates: pass, fail, pass, fail... Returns its address and
/// the number of checks it has answered.
async fn flapping_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::AtomicUsize;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let checks = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = checks.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let status = if req.uri().path() == "/health" {
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            if n.is_multiple_of(2) { 200 } else { 503 }
                        } else {
                            200
                        };
                        async move {
                            hyper::Response::builder()
                                .status(status)
                                .header("x-backend", "flapping")
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, checks)
}

#[tokio::test]
async fn a_backend_alternating_pass_and_fail_does_not_flap() {
    let (addr, checks) = flapping_backend().await;
    let steady = Backend::start("steady").await;
    // rise 2 / fall 3: a run of two failures never happens, so it never leaves rotation.
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}[upstreams.app.health_check]\npath = \"/health\"\ninterval = \"50ms\"\nrise = 2\nfall = 3\n",
        config_with(&format!("\"{addr}\", \"{}\"", steady.addr), "max_fails = 0")
    ));
    wait_for("20 checks of the flapping backend", || {
        checks.load(Ordering::SeqCst) >= 20
    })
    .await;
    let c = client();
    let metrics = scrape_admin(proxy.admin.expect("admin")).await;
    let series =
        |name: &str, label: &str| format!("{name}{{upstream=\"app\",backend=\"{addr}\"{label}}}");
    let failed = metric(
        &metrics,
        &series("rproxy_health_checks_total", ",result=\"fail\""),
    );
    assert!(
        failed.is_some_and(|n| n >= 9.0),
        "the failing checks are counted: {metrics}"
    );
    for to in ["up", "down"] {
        let changes = series(
            "rproxy_backend_state_changes_total",
            &format!(",to=\"{to}\""),
        );
        assert_eq!(
            metric(&metrics, &changes),
            Some(0.0),
            "{changes} in {metrics}"
        );
    }
    assert_eq!(
        metric(&metrics, &series("rproxy_backend_up", "")),
        Some(1.0)
    );
    assert_eq!(
        proxy.backend_status("app", addr).await["state"],
        "up",
        "it never left rotation"
    );
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&c, proxy.addr(), "/").await.backend().to_string());
    }
    assert!(
        answers.iter().any(|b| b == "flapping"),
        "it still serves: {answers:?}"
    );
}

#[tokio::test]
async fn passive_and_active_health_count_one_departure_and_one_return() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}{FAST_CHECKS}",
        config_with(
            &format!("\"{}\"", b.addr),
            "max_fails = 1\nfail_timeout = \"60s\"\nresponse_timeout = \"200ms\""
        )
    ));
    let c = client();
    let admin = proxy.admin.expect("admin");
    let labels = format!("upstream=\"app\",backend=\"{}\"", b.addr);
    let up = |m: &str| metric(m, &format!("rproxy_backend_up{{{labels}}}"));
    let changes = |m: &str, to: &str| {
        let series = format!("rproxy_backend_state_changes_total{{{labels},to=\"{to}\"}}");
        metric(m, &series)
    };

    // A response timeout takes it out by passive health while its checks still pass.
    get(&c, proxy.addr(), "/slow/5000").await;
    let down = format!("rproxy_backend_state_changes_total{{{labels},to=\"down\"}}");
    proxy.wait_for_metric(&down, |n| n >= 1.0).await;
    let m = scrape_admin(admin).await;
    assert_eq!(up(&m), Some(0.0), "{m}");
    assert_eq!(changes(&m, "down"), Some(1.0), "{m}");

    // Its checks fail too: it is already out of rotation, so no second departure.
    // Two failed checks in a row (fall) take it out by its checks as well.
    let failed = proxy.metric(&checks(b.addr, "fail")).await;
    b.healthy.store(false, Ordering::SeqCst);
    proxy
        .wait_for_metric(&checks(b.addr, "fail"), |n| n >= failed + 2.0)
        .await;
    let m = scrape_admin(admin).await;
    assert_eq!(changes(&m, "down"), Some(1.0), "{m}");

    // Its checks pass again: back in rotation (a rise overrides passive health), once.
    let ups = changes(&m, "up").unwrap_or(0.0);
    b.healthy.store(true, Ordering::SeqCst);
    let to_up = format!("rproxy_backend_state_changes_total{{{labels},to=\"up\"}}");
    proxy.wait_for_metric(&to_up, |n| n > ups).await;
    let m = scrape_admin(admin).await;
    assert_eq!(changes(&m, "up"), Some(ups + 1.0), "{m}");
    assert_eq!(up(&m), Some(1.0), "{m}");
    assert_eq!(get(&c, proxy.addr(), "/").await.backend(), "b");
}
