//! Load-aware balancing through the real proxy: under concurrent load a slow backend, which
//! holds its requests longer, receives fewer of them with `least_conn` and `random_two`, while
//! round-robin splits evenly regardless.

mod common;

use std::time::Duration;

use common::*;

/// Sends `clients × per_client` requests concurrently; returns how many each backend got.
async fn shares(policy: &str) -> (usize, usize, usize) {
    let slow = Backend::start_with_delay("slow", Duration::from_millis(50)).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let servers = format!("\"{}\", \"{}\", \"{}\"", slow.addr, a.addr, b.addr);
    let proxy = Proxy::start(&config_with(&servers, &format!("balance = \"{policy}\"")));
    let addr = proxy.addr();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            tokio::spawn(async move {
                let c = client();
                for _ in 0..20 {
                    assert_eq!(get(&c, addr, "/").await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    (slow.requests(), a.requests(), b.requests())
}

#[tokio::test]
async fn least_conn_sends_fewer_requests_to_a_slow_backend() {
    let (slow, a, b) = shares("least_conn").await;
    eprintln!("least_conn: slow {slow}, fast {a} and {b}");
    assert_eq!(slow + a + b, 240);
    // Round-robin would give it 80; holding each request ~50 ms longer, it gets far fewer.
    assert!(slow < 40, "slow backend got {slow} of 240 (fast: {a}, {b})");
}

#[tokio::test]
async fn random_two_sends_fewer_requests_to_a_slow_backend() {
    let (slow, a, b) = shares("random_two").await;
    eprintln!("random_two: slow {slow}, fast {a} and {b}");
    assert_eq!(slow + a + b, 240);
    assert!(slow < 60, "slow backend got {slow} of 240 (fast: {a}, {b})");
}

#[tokio::test]
async fn round_robin_ignores_load_the_control() {
    let (slow, a, b) = shares("round_robin").await;
    assert_eq!((slow, a, b), (80, 80, 80));
}

#[tokio::test]
async fn least_conn_balances_like_round_robin_at_idle() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let servers = format!("{{ addr = \"{}\", weight = 3 }}, \"{}\"", a.addr, b.addr);
    let proxy = Proxy::start(&config_with(&servers, "balance = \"least_conn\""));
    let c = client();
    let mut order = String::new();
    for _ in 0..8 {
        order.push_str(get(&c, proxy.addr(), "/").await.backend());
    }
    // One request at a time: every backend is idle, so ties go by smooth weighted round-robin.
    assert_eq!(order, "aabaaaba");
}
