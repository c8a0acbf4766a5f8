//! A request target longer than `max_uri_length` is answered 414, as nginx answers it, even
//! when the whole head is also larger than `max_header_size` (hyper alone would answer 431),
//! and the client gets the answer whole although it was still sending.

mod common;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Sends `head` on a new connection (the proxy may stop reading it part way) and returns the
/// answer, and the connection.
async fn exchange(proxy: &Proxy, head: &[u8]) -> (String, TcpStream) {
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    // The proxy answers before it has read everything; a write that fails then is expected.
    if let Err(e) = s.write_all(head).await {
        eprintln!("write ended early: {e}");
    }
    (read_response(&mut s).await, s)
}

#[tokio::test]
async fn a_long_target_gets_414_even_past_the_header_size() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&with_admin(&format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n{}",
        log.display(),
        config_with(&format!("\"{}\"", backend.addr), "")
    )));
    // Defaults: max_uri_length 8 KiB, max_header_size 32 KiB.
    for target_len in [100 * 1024, 40 * 1024, 8 * 1024 + 1] {
        let head = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(target_len - 1)
        );
        let (answer, mut s) = exchange(&proxy, head.as_bytes()).await;
        assert_eq!(status_of(&answer), 414, "{target_len}: {answer:.200}");
        assert!(answer.ends_with("414 URI Too Long\n"), "{answer:.200}");
        assert!(
            closed_by_server(&mut s).await,
            "{target_len}: the connection is closed after a 414"
        );
    }
    // At the limit it is forwarded; a large head with a short target is still 431.
    let head = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(8 * 1024 - 1)
    );
    let (answer, _) = exchange(&proxy, head.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer:.200}");
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let (answer, _) = exchange(&proxy, head.as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{answer:.200}");
    // A head hyper cannot parse: 400.
    let (answer, _) = exchange(&proxy, b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n").await;
    assert_eq!(status_of(&answer), 400, "{answer:.200}");
    assert_eq!(
        backend.requests(),
        1,
        "only the request at the limit reached the backend"
    );
    // Each answer is counted, the ones given before routing too (as nginx counts its 400s
    // and 414s). Polled: a refused connection is counted as it ends, which may be just after
    // the client read its answer.
    let series =
        |code: &str| format!("rproxy_http_requests_total{{listener=\"web\",code=\"{code}\"}}");
    proxy.wait_for_metric(&series("4xx"), |n| n == 5.0).await;
    assert_eq!(proxy.metric(&series("2xx")).await, 1.0);
    // And each is in the access log, the refused ones with no request (nginx's "-"), the
    // bytes of the body they were answered with, and the client and listener.
    let mut lines = Vec::new();
    wait_for("six access log lines", || {
        lines = json_lines(&log);
        lines.len() >= 6
    })
    .await;
    let mut seen: Vec<(u64, Option<&str>, u64)> = lines
        .iter()
        .map(|l| {
            assert_eq!(
                (&l["client"], &l["listener"]),
                (&"127.0.0.1".into(), &"web".into())
            );
            (
                l["status"].as_u64().unwrap_or(0),
                l["method"].as_str(),
                l["bytes"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    seen.sort();
    let refused_414 = (414, None, 17);
    assert_eq!(
        seen,
        [
            (200, Some("GET"), 1),
            (400, None, 0),
            (414, None, 17),
            refused_414,
            refused_414,
            (431, None, 0)
        ]
    );
}

#[tokio::test]
async fn a_long_target_after_a_kept_alive_request_gets_414_too() {
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", backend.addr), ""));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(status_of(&read_response(&mut s).await), 200);
    let head = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    if let Err(e) = s.write_all(head.as_bytes()).await {
        eprintln!("write ended early: {e}");
    }
    assert_eq!(status_of(&read_response(&mut s).await), 414);
    assert!(closed_by_server(&mut s).await);
}
