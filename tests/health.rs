//! Active health checks with real backends: a failing backend leaves rotation after `fall`
//! failed checks and returns after `rise` passes, a dead one (TCP check) leaves without a
//! client error, and when every backend fails its checks the pool fails open (or answers 503
//! when told to).

mod common;

use std::sync::atomic::Ordering;

use common::*;

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
    let proxy = Proxy::start(&format!(
        "{}{FAST_CHECKS}",
        config_with(&list(&backends), "")
    ));
    let c = client();
    let b = &backends[1];

    b.healthy.store(false, Ordering::SeqCst);
    proxy
        .wait_for_log(&["backend is unhealthy", &b.addr.to_string(), "status 503"])
        .await;
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
    proxy
        .wait_for_log(&["backend is healthy again", &b.addr.to_string()])
        .await;
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
    let proxy = Proxy::start(&format!(
        "{}[upstreams.app.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\nfall = 2\n",
        config_with(&list(&backends), "")
    ));
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
    proxy
        .wait_for_log(&["backend is unhealthy", &addr.to_string(), "connect"])
        .await;
    for _ in 0..20 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
}

/// Three backends whose health endpoints all fail, once rproxy has seen every one fail.
async fn all_unhealthy(upstream_extra: &str) -> (Vec<Backend>, Proxy) {
    let backends = three().await;
    let proxy = Proxy::start(&format!(
        "{}{FAST_CHECKS}",
        config_with(&list(&backends), upstream_extra)
    ));
    for b in &backends {
        b.healthy.store(false, Ordering::SeqCst);
    }
    for b in &backends {
        proxy
            .wait_for_log(&["backend is unhealthy", &b.addr.to_string()])
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
    let logged = proxy
        .logs()
        .iter()
        .filter(|l| l.contains("every backend is unhealthy"))
        .count();
    assert_eq!(logged, 1, "logged once per episode, not per request");
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
