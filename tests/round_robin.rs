//! Smooth weighted round-robin through the real proxy: the exact orders nginx produces
//! (replayed from recordings of real nginx), backups and down servers.

mod common;

use common::*;

async fn replay(name: &str) {
    let rec = recording(name);
    let (_backends, servers) = backends_for(&rec.servers).await;
    let proxy = Proxy::start(&config_with(&servers, ""));
    let c = client();
    for (i, expected) in rec.rows.iter().map(|(_, b)| b).enumerate() {
        let a = get(&c, proxy.addr(), "/").await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.backend(),
            expected,
            "{name}: request {i} went to {} where nginx chose {expected}",
            a.backend()
        );
    }
}

#[tokio::test]
async fn replays_nginx_equal_weights() {
    replay("rr_equal_4.csv").await;
}

#[tokio::test]
async fn replays_nginx_weights_3_2_1() {
    replay("rr_weights_3_2_1.csv").await;
}

#[tokio::test]
async fn replays_nginx_weights_5_1_1() {
    replay("rr_weights_5_1_1.csv").await;
}

#[tokio::test]
async fn replays_nginx_weights_with_down() {
    replay("rr_weights_with_down.csv").await;
}

#[tokio::test]
async fn weights_5_1_1_give_the_documented_order() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let servers = format!(
        r#"{{ addr = "{}", weight = 5 }}, "{}", "{}""#,
        a.addr, b.addr, c.addr
    );
    let proxy = Proxy::start(&config_with(&servers, ""));
    let cl = client();
    let mut order = String::new();
    for _ in 0..14 {
        order.push_str(get(&cl, proxy.addr(), "/").await.backend());
    }
    assert_eq!(order, "aabacaaaabacaa");
}

#[tokio::test]
async fn order_is_global_across_concurrent_connections() {
    // Many clients at once, on many connections and worker threads: over whole cycles each
    // backend still gets exactly its weight's share.
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let servers = format!(r#"{{ addr = "{}", weight = 3 }}, "{}""#, a.addr, b.addr);
    let proxy = Proxy::start(&config_with(&servers, ""));
    let addr = proxy.addr();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut got = Vec::new();
            for _ in 0..50 {
                got.push(get(&c, addr, "/").await.backend().to_string());
            }
            got
        }));
    }
    let mut count_a = 0;
    let mut total = 0;
    for t in tasks {
        for who in t.await.expect("task") {
            total += 1;
            count_a += usize::from(who == "a");
        }
    }
    assert_eq!(total, 400);
    assert_eq!(count_a, 300, "weight 3 of 4 over 100 whole cycles");
}

#[tokio::test]
async fn backup_only_when_no_primary_can_take_it_and_down_never() {
    let primary = Backend::start("primary").await;
    let backup = Backend::start("backup").await;
    let down = Backend::start("down").await;
    let dead = refused_addr();
    let servers = format!(
        r#""{}", "{dead}", {{ addr = "{}", backup = true }}, {{ addr = "{}", down = true }}"#,
        primary.addr, backup.addr, down.addr
    );
    let proxy = Proxy::start(&config_with(&servers, ""));
    let c = client();
    for _ in 0..10 {
        let a = get(&c, proxy.addr(), "/").await;
        assert_eq!((a.status.as_u16(), a.backend()), (200, "primary"));
    }
    assert_eq!(backup.requests(), 0, "a live primary is always preferred");
    // The primary dies: from the very next request on, the backup answers, with no error.
    primary.stop().await;
    for _ in 0..10 {
        let a = get(&c, proxy.addr(), "/").await;
        assert_eq!((a.status.as_u16(), a.backend()), (200, "backup"));
    }
    assert_eq!(down.requests(), 0, "a down server is never used");
}
