//! `ip_hash` and `hash` through the real proxy: nginx's recorded mappings replayed (the client
//! address comes from the trusted-proxy rule, as every feature's client address does), and
//! consistent hashing stable across a restart with the servers reordered, with only a dead
//! backend's keys moving.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

async fn get_as(addr: std::net::SocketAddr, path: &str, client_ip: &str) -> Answer {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("x-forwarded-for", client_ip)
        .body(Full::<Bytes>::default())
        .expect("request");
    send(&client(), req).await
}

async fn replay_ip_hash(name: &str) {
    let rec = recording(name);
    let (_backends, list) = backends_for(&rec.servers).await;
    let proxy = Proxy::start(&format!(
        "trusted_proxies = [\"127.0.0.1\"]\n{}",
        config_with(&list, "balance = \"ip_hash\"")
    ));
    for (client, expected) in &rec.rows {
        let ans = get_as(proxy.addr(), "/", client).await;
        assert_eq!(ans.status, 200);
        assert_eq!(ans.backend(), expected, "{name}: client {client}");
    }
}

#[tokio::test]
async fn ip_hash_replays_nginx() {
    replay_ip_hash("ip_hash_3.csv").await;
    replay_ip_hash("ip_hash_weighted_5_1_1.csv").await;
    replay_ip_hash("ip_hash_with_down.csv").await;
}

#[tokio::test]
async fn ip_hash_uses_the_real_source_address() {
    let rec = recording("ip_hash_3.csv");
    let (_backends, list) = backends_for(&rec.servers).await;
    let proxy = Proxy::start(&config_with(&list, "balance = \"ip_hash\""));
    let expected: HashMap<&str, &str> = rec
        .rows
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for source in ["127.0.5.1", "127.0.9.1"] {
        // A raw connection from that loopback address (the whole 127/8 is local).
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("addr"))
            .expect("bind source");
        let mut s = socket.connect(proxy.addr()).await.expect("connect");
        use tokio::io::AsyncWriteExt;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let answer = read_response(&mut s).await;
        assert!(
            answer.contains(&format!("x-backend: {}", expected[source])),
            "{source}: {answer}"
        );
    }
}

#[tokio::test]
async fn plain_hash_replays_nginx() {
    let rec = recording("hash_uri_plain_5.csv");
    let (_backends, list) = backends_for(&rec.servers).await;
    let proxy = Proxy::start(&config_with(
        &list,
        "balance = \"hash\"\nhash = { key = \"$request_uri\" }",
    ));
    let c = client();
    for (uri, expected) in rec.rows.iter().take(200) {
        let ans = get(&c, proxy.addr(), uri).await;
        assert_eq!(ans.backend(), expected, "key {uri}");
    }
}

#[tokio::test]
async fn consistent_hash_is_stable_across_restarts_and_moves_only_a_dead_backends_keys() {
    let mut backends = Vec::new();
    for i in 0..5 {
        backends.push(Backend::start(&format!("b{i}")).await);
    }
    let list = |order: &[usize]| {
        order
            .iter()
            .map(|&i| format!("\"{}\"", backends[i].addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let extra = "hash = { key = \"$cookie_session\", consistent = true }";
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let map = |proxy: &Proxy| {
        let addr = proxy.addr();
        let keys = keys.clone();
        async move {
            let c = client();
            let mut m = HashMap::new();
            for k in keys {
                let req = Request::get(format!("http://{addr}/"))
                    .header("cookie", format!("theme=x; session={k}"))
                    .body(Full::<Bytes>::default())
                    .expect("request");
                let ans = send(&c, req).await;
                assert_eq!(ans.status, 200);
                m.insert(k, ans.backend().to_string());
            }
            m
        }
    };
    let first = Proxy::start(&config_with(&list(&[0, 1, 2, 3, 4]), extra));
    let before = map(&first).await;
    drop(first);
    // A new process, servers listed in another order: the same ring, the same mapping.
    let second = Proxy::start(&config_with(&list(&[4, 2, 0, 3, 1]), extra));
    assert_eq!(
        map(&second).await,
        before,
        "mapping changed across a restart"
    );
    let used: std::collections::HashSet<&String> = before.values().collect();
    assert_eq!(used.len(), 5, "keys spread over every backend");

    // b2 dies: its keys go elsewhere, every other key stays where it was.
    backends.remove(2).stop().await;
    let after = map(&second).await;
    let mut moved = 0;
    for (k, was) in &before {
        if was == "b2" {
            assert_ne!(after[k], "b2");
            moved += 1;
        } else {
            assert_eq!(&after[k], was, "key {k} moved although its backend lives");
        }
    }
    assert!(moved > 0);
}

/// Twelve clients send 10 requests each, all with the same key, to three slow backends;
/// returns the requests each backend got, most first.
async fn hot_key_shares(extra: &str) -> Vec<usize> {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start_with_delay(name, std::time::Duration::from_millis(30)).await);
    }
    let servers = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let proxy = Proxy::start(&config_with(&servers, extra));
    let addr = proxy.addr();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            tokio::spawn(async move {
                let c = client();
                for _ in 0..10 {
                    let req = Request::get(format!("http://{addr}/"))
                        .header("x-key", "hot")
                        .body(Full::<Bytes>::default())
                        .expect("request");
                    assert_eq!(send(&c, req).await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    let mut shares: Vec<usize> = backends.iter().map(Backend::requests).collect();
    shares.sort_unstable_by(|a, b| b.cmp(a));
    shares
}

#[tokio::test]
async fn a_balance_factor_spills_a_hot_key_over_to_the_next_backends() {
    let plain = hot_key_shares("hash = { key = \"$http_x_key\", consistent = true }").await;
    assert_eq!(
        plain,
        vec![120, 0, 0],
        "without a bound one backend takes every request"
    );
    let bounded = hot_key_shares(
        "hash = { key = \"$http_x_key\", consistent = true, balance_factor = 1.25 }",
    )
    .await;
    eprintln!("hot key with balance_factor 1.25: {bounded:?}");
    assert_eq!(bounded.iter().sum::<usize>(), 120);
    // Twelve in flight: each backend may hold ceil(1.25 * 12 / 3) = 5 at most.
    assert!(bounded[0] < 80, "{bounded:?}");
    assert!(bounded[1] > 0, "{bounded:?}");
}
