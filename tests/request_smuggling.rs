//! Malformed and ambiguous requests, spoken as raw bytes over `TcpStream`: for each, the
//! status rproxy answers, whether it closed the connection (or kept it in sync, proven by a
//! follow-up request on it), and exactly what the backend received. For every smuggling
//! vector the backend sees the requests the client meant, or none.

mod common;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

struct Case {
    name: &'static str,
    bytes: &'static [u8],
    status: u16,
    closed: bool,
    /// Request heads the backend must receive for this case.
    forwarded: usize,
}

const fn case(
    name: &'static str,
    bytes: &'static [u8],
    status: u16,
    closed: bool,
    forwarded: usize,
) -> Case {
    Case {
        name,
        bytes,
        status,
        closed,
        forwarded,
    }
}

const FOLLOW_UP: &[u8] = b"GET /follow-up HTTP/1.1\r\nHost: a\r\n\r\n";

const CASES: &[Case] = &[
    // Host
    case("no Host", b"GET / HTTP/1.1\r\n\r\n", 400, true, 0),
    case("two Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, true, 0),
    case("invalid Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, true, 0),
    case("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, true, 0),
    case("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", 200, true, 1),
    // Request target
    case("target without slash", b"GET admin HTTP/1.1\r\nHost: a\r\n\r\n", 400, false, 0),
    case("asterisk for GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, false, 0),
    case("fragment", b"GET /a#/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400, false, 0),
    case("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 200, false, 0),
    case("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405, true, 0),
    case("HTTP/0.9", b"GET /\r\n\r\n", 400, true, 0),
    case("HTTP/2.0 in text", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400, true, 0),
    case("HTTP/3.1", b"GET / HTTP/3.1\r\nHost: a\r\n\r\n", 400, true, 0),
    // Framing: the classic smuggling shapes, each with a request hidden in the body.
    case(
        "CL.TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        400, true, 0,
    ),
    case(
        "TE.CL",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n26\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n",
        400, true, 0,
    ),
    case(
        "TE chunked twice",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400, true, 0,
    ),
    case(
        "TE chunked on two lines",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400, true, 0,
    ),
    case(
        "TE gzip, chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400, true, 0,
    ),
    case("TE gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400, true, 0),
    case("TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, true, 0),
    case("TE with space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, true, 0),
    case("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true, 0),
    case("conflicting Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, true, 0),
    case("Content-Length list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400, true, 0),
    case("Content-Length +3", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400, true, 0),
    case("Content-Length hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400, true, 0),
    case("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, true, 0),
    case("NUL in a header", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400, true, 0),
    // Bodies that break half-way: the backend never gets a complete request.
    case("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400, true, 0),
    case("chunk with bare LF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", 400, true, 0),
    case(
        "chunk size overflow",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        400, true, 0,
    ),
    // Limits (the listener below: 1000-byte bodies, 2 KiB targets, 16 KiB heads, 50 headers).
    case("body over max_body_size", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413, true, 0),
];

fn proxy_for(backend: std::net::SocketAddr) -> Proxy {
    Proxy::start(&format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         max_body_size = 1000\nmax_uri_length = \"2k\"\nmax_header_size = \"16k\"\nmax_headers = 50\n\
         [upstreams.app]\nservers = [\"{backend}\"]\n"
    ))
}

fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| response.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn run(proxy: &Proxy, backend: &RawBackend, c: &Case) {
    backend.received.lock().expect("lock").clear();
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(c.bytes).await.expect("write");
    let answer = read_response(&mut s).await;
    assert_eq!(
        status_of(&answer),
        c.status,
        "{}: answered {answer:?}",
        c.name
    );
    if c.closed {
        assert!(
            closed_by_server(&mut s).await,
            "{}: connection left open",
            c.name
        );
    } else {
        // Still in sync: the next request on the same connection is answered normally.
        s.write_all(FOLLOW_UP).await.expect("write follow-up");
        let next = read_response(&mut s).await;
        assert_eq!(status_of(&next), 200, "{}: follow-up got {next:?}", c.name);
    }
    let expected = c.forwarded + usize::from(!c.closed);
    wait_for("the backend to receive what was forwarded", || {
        backend.request_heads() >= expected
    })
    .await;
    let seen = backend.received_text();
    assert_eq!(
        backend.request_heads(),
        expected,
        "{}: backend received {seen:?}",
        c.name
    );
    assert!(
        !seen.contains("smuggled"),
        "{}: a hidden request got through: {seen:?}",
        c.name
    );
}

#[tokio::test]
async fn every_malformed_or_ambiguous_request() {
    let backend = RawBackend::start(RawMode::Answer).await;
    let proxy = proxy_for(backend.addr);
    for c in CASES {
        run(&proxy, &backend, c).await;
    }
}

#[tokio::test]
async fn options_asterisk_is_answered_by_rproxy() {
    let backend = RawBackend::start(RawMode::Answer).await;
    let proxy = proxy_for(backend.addr);
    let answer = raw_exchange(proxy.addr(), b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("allow: get, head, post"),
        "{answer}"
    );
    assert_eq!(backend.request_heads(), 0);
}

#[tokio::test]
async fn limits_on_head_target_and_header_count() {
    let backend = RawBackend::start(RawMode::Answer).await;
    let proxy = proxy_for(backend.addr);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2100));
    let answer = raw_exchange(proxy.addr(), long_target.as_bytes()).await;
    assert_eq!(status_of(&answer), 414, "{answer}");
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17_000)
    );
    let answer = raw_exchange(proxy.addr(), big_head.as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    let many: String = (0..60).map(|i| format!("X-{i}: 1\r\n")).collect();
    let answer = raw_exchange(
        proxy.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_eq!(backend.request_heads(), 0);
}

#[tokio::test]
async fn headers_a_backend_could_misread_are_not_forwarded() {
    let backend = RawBackend::start(RawMode::Answer).await;
    let proxy = proxy_for(backend.addr);
    let answer = raw_exchange(
        proxy.addr(),
        b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nContent_Length: 99\r\n\
          Transfer_Encoding: chunked\r\nX_Forwarded_For: 6.6.6.6\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    wait_for("the request at the backend", || {
        backend.received_text().ends_with("hello")
    })
    .await;
    let seen = backend.received_text().to_ascii_lowercase();
    assert_eq!(seen.matches("content-length: 5\r\n").count(), 1, "{seen}");
    for gone in [
        "content_length",
        "transfer_encoding",
        "x_forwarded_for",
        "upgrade",
        "http2-settings",
        "6.6.6.6",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the backend: {seen}");
    }
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_cut_before_the_backend_gets_it_whole() {
    // A backend that reads whole bodies: it must never see a complete request.
    let backend = Backend::start("b").await;
    let proxy = Proxy::start(&format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nmax_body_size = 1000\n\
         [upstreams.app]\nservers = [\"{}\"]\n",
        backend.addr
    ));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"1F4\r\n");
        req.extend_from_slice(&[b'x'; 500]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).await.expect("write");
    let answer = read_response(&mut s).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(closed_by_server(&mut s).await);
    assert_eq!(
        backend.requests(),
        0,
        "the backend saw a complete over-limit request"
    );
}

#[tokio::test]
async fn a_chunked_body_broken_half_way_is_a_400_and_the_upstream_connection_is_dropped() {
    let backend = Backend::start("b").await;
    let proxy = proxy_for(backend.addr);
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .expect("first chunk");
    // Let the first chunk reach the backend before the broken one follows.
    wait_for("the upstream connection", || {
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    s.write_all(b"zz\r\nbroken\r\n").await.expect("bad chunk");
    let answer = read_response(&mut s).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(closed_by_server(&mut s).await);
    assert_eq!(backend.requests(), 0, "the backend saw a complete request");
    // The aborted upstream connection is not reused: the next request opens a new one.
    assert_eq!(get(&client(), proxy.addr(), "/").await.status, 200);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = RawBackend::start(RawMode::Answer).await;
    let proxy = proxy_for(backend.addr);
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(status_of(&read_response(&mut s).await), 200);
    assert_eq!(status_of(&read_response(&mut s).await), 200);
    assert_eq!(backend.request_heads(), 2);
}
