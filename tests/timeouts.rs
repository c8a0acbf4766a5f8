//! Client and upstream timeouts: a silent or slow client cannot hold a connection, an idle
//! keep-alive connection is closed after its own timeout (not the header timeout), and a
//! stalled body on either side ends the exchange.

mod common;

use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// Reads until the server closes, as text.
async fn text_until_closed(s: &mut TcpStream) -> String {
    String::from_utf8_lossy(&read_until_closed(s).await).into_owned()
}

fn listener_config(
    backend: std::net::SocketAddr,
    listener_extra: &str,
    upstream_extra: &str,
) -> String {
    format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n{listener_extra}\n\
         [upstreams.app]\nservers = [\"{backend}\"]\n{upstream_extra}\n"
    )
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&listener_config(b.addr, "header_timeout = \"300ms\"", ""));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(text_until_closed(&mut s).await, "");
}

#[tokio::test]
async fn a_half_sent_request_head_is_closed_after_the_header_timeout() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&listener_config(b.addr, "header_timeout = \"300ms\"", ""));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    text_until_closed(&mut s).await;
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn idle_keepalive_uses_its_own_timeout_not_the_header_timeout() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&listener_config(
        b.addr,
        "header_timeout = \"200ms\"\nkeepalive_timeout = \"1500ms\"",
        "",
    ));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let started = std::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Well past the 200 ms header timeout the idle connection is still open ...
    let early = tokio::time::timeout(Duration::from_millis(600), s.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "idle connection closed by the header timeout"
    );
    // ... and it still serves a request.
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then the keep-alive timeout closes it.
    text_until_closed(&mut s).await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&listener_config(b.addr, "body_timeout = \"300ms\"", ""));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let answer = text_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// The response timeout bounds the wait for the head only: a body slower than it but within
/// the body timeout arrives whole.
#[tokio::test]
async fn a_body_slower_than_the_response_timeout_but_within_the_body_timeout_arrives_whole() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&listener_config(
        b.addr,
        "",
        "response_timeout = \"300ms\"\nbody_timeout = \"5s\"",
    ));
    let client = client();
    // Twice: the second request's attempt waits on a timer the first one left.
    for _ in 0..2 {
        let resp = client
            .get(
                format!("http://{}/late-body/900", proxy.addr())
                    .parse()
                    .expect("uri"),
            )
            .await
            .expect("response head");
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
            .await
            .expect("body in time")
            .expect("the whole body, not cut");
        assert_eq!(&body.to_bytes()[..], b"firstrest");
    }
}

#[tokio::test]
async fn a_stalled_response_body_is_cut() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&listener_config(b.addr, "", "body_timeout = \"300ms\""));
    let body = stalled_body(&client(), proxy.addr()).await;
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("cut in time");
    assert!(
        rest.is_err(),
        "the client sees an incomplete response, not a clean end"
    );
}
