//! Broken, ambiguous or hostile answers from a backend, spoken as raw bytes by a fake backend:
//! the client gets a clean 502 or a correctly framed response, never a mis-framed one, and a
//! connection that carried extra bytes is never reused.

mod common;

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

fn script(bytes: &[u8], close: bool) -> RawMode {
    RawMode::Script {
        bytes: bytes.to_vec(),
        close,
    }
}

async fn proxy_to(mode: RawMode, upstream_extra: &str) -> (RawBackend, Proxy) {
    let backend = RawBackend::start(mode).await;
    let proxy = Proxy::start(&config_with(
        &format!("\"{}\"", backend.addr),
        upstream_extra,
    ));
    (backend, proxy)
}

#[tokio::test]
async fn malformed_answers_are_502() {
    let oversized = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\ncontent-length: 2\r\n\r\nok",
        "a".repeat(600_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid status line", b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nok".to_vec()),
        ("garbage", b"hello there\r\n\r\n".to_vec()),
        ("conflicting Content-Length", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec()),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\ncontent-length: 2\r\n\r\nok".to_vec()),
        ("oversized head", oversized.into_bytes()),
        ("unrequested 101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec()),
    ];
    for (name, bytes) in cases {
        let (_backend, proxy) = proxy_to(script(&bytes, true), "").await;
        let ans = get(&client(), proxy.addr(), "/").await;
        assert_eq!(ans.status, 502, "{name}: {}", ans.body);
        assert_eq!(ans.body, "502 Bad Gateway\n", "{name}");
    }
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_is_reframed() {
    let (_backend, proxy) = proxy_to(
        script(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        "",
    )
    .await;
    let c = client();
    for _ in 0..3 {
        let ans = get(&c, proxy.addr(), "/").await;
        assert_eq!(ans.status, 200);
        assert_eq!(ans.body, "hello");
        assert!(
            !ans.headers.contains_key("content-length"),
            "{:?}",
            ans.headers
        );
    }
}

#[tokio::test]
async fn a_flood_of_1xx_ends_at_the_response_timeout() {
    let (backend, proxy) =
        proxy_to(RawMode::InformationalFlood, "response_timeout = \"500ms\"").await;
    let ans = get(&client(), proxy.addr(), "/").await;
    assert_eq!(ans.status, 504);
    // The flooding connection is closed once the request is answered: it must not go on
    // consuming rproxy's CPU.
    wait_for("rproxy to close the flooding connection", || {
        backend.open.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn a_body_cut_short_reaches_the_client_cut_short() {
    // Content-Length framing: fewer bytes than promised, then the backend closes.
    let (_b1, proxy) = proxy_to(
        script(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-this",
            true,
        ),
        "",
    )
    .await;
    let resp = client()
        .get(format!("http://{}/", proxy.addr()).parse().expect("uri"))
        .await
        .expect("head");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "a cut body must not look complete"
    );

    // Chunked framing: no final chunk. The raw client sees no `0\r\n\r\n` and a closed
    // connection.
    let (_b2, proxy) = proxy_to(
        script(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            true,
        ),
        "",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let all = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        !text.contains("\r\n0\r\n\r\n"),
        "the client was told the body was complete: {text:?}"
    );
}

#[tokio::test]
async fn extra_bytes_after_an_answer_never_reach_another_request() {
    // Each answer is followed by a second, unasked-for "response".
    let (backend, proxy) = proxy_to(
        script(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
            false,
        ),
        "",
    )
    .await;
    let c = client();
    for i in 0..5 {
        let ans = get(&c, proxy.addr(), &format!("/{i}")).await;
        assert_eq!(ans.status, 200, "request {i}");
        assert_eq!(ans.body, "ok", "request {i} got another request's answer");
    }
    // A connection that carried extra bytes is never reused.
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        5
    );
}
