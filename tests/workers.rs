//! `workers = N`: N threads with a runtime each, accepting on the same sockets (thread per
//! core, `src/workers.rs`). Balancing stays process-wide, every worker accepts, a reload adds
//! and removes sockets on all of them, and a shutdown drains them all.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const WORKERS: usize = 4;

fn config(servers: &str, extra: &str) -> String {
    format!(
        "workers = {WORKERS}\n{}",
        with_admin(&config_with(servers, extra))
    )
}

/// One request on a connection of its own (so that any worker may accept it): the status
/// line and the `X-Backend` that answered.
async fn one_shot(addr: std::net::SocketAddr) -> (String, String) {
    let text = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n",
    )
    .await;
    let status = text.lines().next().unwrap_or_default().to_string();
    let backend = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-backend")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, backend)
}

/// Each worker thread's time on a CPU so far, in ns (`/proc/PID/task/TID/schedstat`), by name.
fn worker_cpu_ns(pid: u32) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("rproxy-worker-") {
            continue;
        }
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.insert(name.to_string(), ns);
    }
    out
}

#[tokio::test]
async fn every_worker_accepts_and_the_weights_hold_across_them() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let servers = format!(r#"{{ addr = "{}", weight = 3 }}, "{}""#, a.addr, b.addr);
    let proxy = Proxy::start(&config(&servers, ""));
    let before = worker_cpu_ns(proxy.pid());
    assert_eq!(
        before.len(),
        WORKERS - 1,
        "one thread for each worker beyond the main one: {before:?}"
    );
    let addr = proxy.addr();
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..25 {
                got.push(one_shot(addr).await);
            }
            got
        }));
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for c in clients {
        for (status, backend) in c.await.expect("client") {
            assert!(status.contains(" 200 "), "{status}");
            *count.entry(backend).or_default() += 1;
        }
    }
    // 400 requests are 100 whole cycles of the 3:1 order, however the workers shared them.
    assert_eq!((count["a"], count["b"]), (300, 100), "{count:?}");
    let after = worker_cpu_ns(proxy.pid());
    for (name, ns) in &after {
        assert!(
            *ns > before.get(name).copied().unwrap_or(0),
            "{name} did not run during the load: {before:?} -> {after:?}"
        );
    }
}

#[tokio::test]
async fn reload_opens_and_closes_a_listener_on_every_worker_and_shutdown_drains_all() {
    let slow = Backend::start_with_delay("slow", Duration::from_millis(800)).await;
    let base = config(&format!("\"{}\"", slow.addr), "");
    let mut proxy = Proxy::start(&base);
    let extra =
        format!("{base}\n[listeners.extra]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n");
    assert!(proxy.reload_with(&extra).await);
    let extra_addr = proxy.ready().expect("ready file").listeners["extra"][0];
    let answers = futures_util::future::join_all((0..12).map(|_| one_shot(extra_addr))).await;
    assert!(
        answers.iter().all(|(s, _)| s.contains(" 200 ")),
        "{answers:?}"
    );

    assert!(proxy.reload_with(&base).await);
    // Every worker's duplicate of the socket is closed, or it would still accept.
    wait_for("the removed listener to refuse connections", || {
        std::net::TcpStream::connect(extra_addr).is_err()
    })
    .await;

    // Requests in flight on any worker finish before the process exits, with status 0.
    let addr = proxy.addr();
    let in_flight: Vec<_> = (0..8).map(|_| tokio::spawn(one_shot(addr))).collect();
    wait_until("the 8 requests to be in flight", || async {
        proxy.backend_status("app", slow.addr).await["in_flight"] == 8
    })
    .await;
    proxy.signal("TERM");
    for r in in_flight {
        let (status, backend) = r.await.expect("request");
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(backend, "slow");
    }
    assert!(proxy.wait_exit().await.success());
}
