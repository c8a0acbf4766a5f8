//! `[limits.NAME]` through the real binary: requests beyond a key's burst get the limit's status
//! and `Retry-After` while another key is unaffected, `conns` counts requests in progress until
//! their response bodies end, a reload keeps an unchanged limit's state (and renews a changed
//! one), and the counters are in `/metrics` in a form promtool accepts.

mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

fn config(backend: &Backend, api_burst: u32) -> String {
    with_admin(&format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
upstream = "app"
limits = ["api"]

[[listeners.web.routes]]
path_prefix = "/stall"
upstream = "app"
limits = ["one"]

[[listeners.web.routes]]
path_prefix = "/slow"
upstream = "app"
limits = ["one"]

[[listeners.web.routes]]
path_prefix = "/free"
upstream = "app"
limits = []

[upstreams.app]
servers = ["{}"]

[limits.api]
rate = "1r/m"
burst = {api_burst}
nodelay = true
key = "$http_x_client"
status = 429

[limits.one]
conns = 1
key = "$http_x_client"
"#,
        backend.addr
    ))
}

async fn get_as(proxy: &Proxy, client_id: &str, path: &str) -> Answer {
    let req = Request::get(format!("http://{}{path}", proxy.addr()))
        .header("x-client", client_id)
        .body(Full::<Bytes>::default())
        .expect("request");
    send(&client(), req).await
}

fn retry_after(a: &Answer) -> Option<u64> {
    a.headers.get("retry-after")?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn beyond_the_burst_a_key_gets_429_and_retry_after_and_a_reload_keeps_its_state() {
    let backend = Backend::start("a").await;
    let proxy = Proxy::start(&config(&backend, 2));

    // 1r/m, burst 2, nodelay: three pass at once, the fourth is refused.
    for _ in 0..3 {
        assert_eq!(get_as(&proxy, "alice", "/").await.status, 200);
    }
    let refused = get_as(&proxy, "alice", "/").await;
    assert_eq!(refused.status, 429);
    // nginx's 1r/m is 16 thousandths of a request per second: one request leaks in 62.5 s.
    let wait = retry_after(&refused).expect("Retry-After");
    assert!((60..=63).contains(&wait), "Retry-After: {wait}");
    assert_eq!(
        backend.requests(),
        3,
        "the refused request never reached the backend"
    );
    // Another key, and a route without limits, are not affected.
    assert_eq!(get_as(&proxy, "bob", "/").await.status, 200);
    assert_eq!(get_as(&proxy, "alice", "/free").await.status, 200);

    // A reload that leaves the limit as it was keeps what it knows of alice...
    let mut same = config(&backend, 2);
    same.push_str("\n[limits.unused]\nconns = 5\n");
    assert!(proxy.reload_with(&same).await);
    assert_eq!(get_as(&proxy, "alice", "/").await.status, 429);
    let keys = r#"rproxy_limit_keys{limit="unused"}"#;
    assert_eq!(metric(&proxy.scrape().await, keys), Some(0.0));
    // ...and one that changes it starts afresh; a limit removed leaves /metrics.
    assert!(proxy.reload_with(&config(&backend, 3)).await);
    assert_eq!(get_as(&proxy, "alice", "/").await.status, 200);

    let m = proxy.scrape().await;
    assert_eq!(metric(&m, keys), None, "{m}");
    assert_eq!(
        metric(&m, r#"rproxy_limit_keys{limit="api"}"#),
        Some(1.0),
        "alice, afresh"
    );
    assert_eq!(
        metric(
            &m,
            r#"rproxy_limit_requests_total{limit="api",result="refused"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"rproxy_limit_requests_total{limit="api",result="delayed"}"#
        ),
        Some(0.0)
    );
    check_with_promtool(&m);
}

#[tokio::test]
async fn conns_counts_requests_until_their_bodies_end() {
    let backend = Backend::start("a").await;
    let proxy = Proxy::start(&config(&backend, 2));
    let c = client();

    // A slow backend: alice's request is in progress while it thinks.
    let slow = {
        let req = Request::get(format!("http://{}/slow/1500", proxy.addr()))
            .header("x-client", "alice")
            .body(Full::<Bytes>::default())
            .expect("request");
        let c = c.clone();
        tokio::spawn(async move { send(&c, req).await.status })
    };
    wait_for("the slow request at the backend", || {
        backend.requests() == 1
    })
    .await;
    assert_eq!(get_as(&proxy, "alice", "/slow/0").await.status, 503);
    assert_eq!(get_as(&proxy, "bob", "/slow/0").await.status, 200);
    assert_eq!(slow.await.expect("slow request"), 200);
    wait_until("alice's slot after the slow answer", || async {
        get_as(&proxy, "alice", "/slow/0").await.status == 200
    })
    .await;

    // A response whose body stalls: its request is still in progress.
    let req = Request::get(format!("http://{}/stall", proxy.addr()))
        .header("x-client", "alice")
        .body(Full::<Bytes>::default())
        .expect("request");
    let resp = c.request(req).await.expect("response head");
    assert_eq!(resp.status(), 200);

    let second = get_as(&proxy, "alice", "/stall").await;
    assert_eq!(second.status, 503, "the default status, as nginx's");
    assert_eq!(retry_after(&second), None);
    assert_eq!(
        get_as(&proxy, "bob", "/stall/x").await.status,
        200,
        "another key"
    );

    // The client gives up on the stalled body: the slot is given back.
    drop(resp);
    wait_until("alice's slot to be given back", || async {
        get_as(&proxy, "alice", "/stall/y").await.status == 200
    })
    .await;
    let m = proxy.scrape().await;
    assert!(
        metric(&m, r#"rproxy_limit_conns_refused_total{limit="one"}"#) >= Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_delayed_request_waits_and_is_counted() {
    let backend = Backend::start("a").await;
    let proxy = Proxy::start(&with_admin(&format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nlimits = [\"spaced\"]\n[upstreams.app]\nservers = [\"{}\"]\n[limits.spaced]\nrate = \"5r/s\"\nburst = 5\n",
        backend.addr
    )));
    let start = std::time::Instant::now();
    // From 127.0.0.1, the default key ($remote_addr): the first passes, the second waits
    // 200 ms (1000 thousandths at 5000 a second).
    assert_eq!(get(&client(), proxy.addr(), "/").await.status, 200);
    assert_eq!(get(&client(), proxy.addr(), "/").await.status, 200);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    proxy
        .wait_for_metric(
            r#"rproxy_limit_requests_total{limit="spaced",result="delayed"}"#,
            |v| v >= 1.0,
        )
        .await;
}

/// `promtool check metrics` on `text`, where promtool is installed (CI installs it).
fn check_with_promtool(text: &str) {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else {
        assert!(std::env::var_os("CI").is_none(), "CI must install promtool");
        eprintln!("skipped: promtool is not installed");
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("write metrics");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
