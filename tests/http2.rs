//! HTTP/2 at the edge, spoken as raw frames where a well-behaved client library would not do
//! the damage: rapid-reset and CONTINUATION floods end with GOAWAY while other connections
//! keep working, the settings rproxy advertises are the documented ones, a client that
//! resets its stream cancels the request to the backend, and an idle connection is closed at
//! its keep-alive timeout even when the client does not cooperate.

mod common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const ACK: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://a/`: indexed :method GET, :scheme http, :path /, and :authority
/// as a literal without indexing.
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a']
}

/// Reads frames until one of `kind` arrives (returning its payload) or the connection ends.
async fn read_until(s: &mut TcpStream, kind: u8) -> Option<Vec<u8>> {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.ok()?;
            if head[3] == kind {
                return Some(payload);
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("server answered in time")
}

async fn open_h2(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    s
}

async fn h2_get_ok(addr: std::net::SocketAddr) {
    let ans = get(&h2_client(), addr, "/").await;
    assert_eq!(ans.status, 200);
}

#[tokio::test]
async fn advertised_settings_are_the_documented_ones() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let mut s = open_h2(proxy.addr()).await;
    let settings = read_until(&mut s, SETTINGS).await.expect("server settings");
    let mut values = std::collections::HashMap::new();
    for kv in settings.chunks(6) {
        values.insert(
            u16::from_be_bytes([kv[0], kv[1]]),
            u32::from_be_bytes([kv[2], kv[3], kv[4], kv[5]]),
        );
    }
    assert_eq!(
        values.get(&0x3),
        Some(&100),
        "MAX_CONCURRENT_STREAMS: {values:?}"
    );
    assert_eq!(
        values.get(&0x4),
        Some(&(256 * 1024)),
        "INITIAL_WINDOW_SIZE: {values:?}"
    );
    assert_eq!(
        values.get(&0x6),
        Some(&(32 * 1024)),
        "MAX_HEADER_LIST_SIZE: {values:?}"
    );
}

#[tokio::test]
async fn a_rapid_reset_flood_ends_with_goaway_and_does_not_reach_the_backend() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let mut s = open_h2(proxy.addr()).await;
    const STREAMS: u32 = 5_000;
    let mut flood = Vec::new();
    for i in 0..STREAMS {
        let id = 1 + 2 * i;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block()));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    // The server may close before the whole flood is written: that is the point.
    let _ = s.write_all(&flood).await;
    let goaway = read_until(&mut s, GOAWAY).await;
    let code = goaway
        .as_ref()
        .and_then(|p| p.get(4..8))
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    assert_eq!(
        code,
        Some(0xb),
        "GOAWAY with ENHANCE_YOUR_CALM, got {goaway:?}"
    );
    let reached = b.requests();
    assert!(
        reached < 100,
        "{reached} of {STREAMS} reset requests reached the backend"
    );
    // Other connections are unaffected.
    h2_get_ok(proxy.addr()).await;
}

#[tokio::test]
async fn a_continuation_flood_ends_with_goaway() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let mut s = open_h2(proxy.addr()).await;
    // A HEADERS frame that never ends, followed by endless CONTINUATION frames each adding a
    // literal header: the header list passes any limit.
    let mut writes = frame(HEADERS, 0, 1, &get_block());
    // Literal header without indexing: name "x", a 127-byte value (7-bit length 0x7f, then 0).
    let mut one = vec![0x00, 0x01, b'x', 0x7f, 0x00];
    one.extend(std::iter::repeat_n(b'v', 127));
    let continuation = frame(CONTINUATION, 0, 1, &one.repeat(100));
    for _ in 0..200 {
        writes.extend_from_slice(&continuation);
    }
    let _ = s.write_all(&writes).await;
    let goaway = read_until(&mut s, GOAWAY).await.expect("GOAWAY");
    assert_eq!(goaway[4..8], 0xbu32.to_be_bytes(), "ENHANCE_YOUR_CALM");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the flooding connection was not ended");
    assert_eq!(b.requests(), 0);
    h2_get_ok(proxy.addr()).await;
}

#[tokio::test]
async fn a_client_stream_reset_cancels_the_backend_request() {
    let backend = RawBackend::start(RawMode::Hold).await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", backend.addr), ""));
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/held", proxy.addr()))
        .body(Full::<Bytes>::default())
        .expect("request");
    let pending = sender.send_request(req);
    let pending = tokio::spawn(pending);
    wait_for("the request to reach the backend", || {
        backend.request_heads() == 1
    })
    .await;
    assert_eq!(backend.open.load(Ordering::SeqCst), 1);
    // Dropping the response future resets the stream.
    pending.abort();
    wait_for("rproxy to abandon the backend request", || {
        backend.open.load(Ordering::SeqCst) == 0
    })
    .await;
    // Only the stream ended: the client's connection is still usable.
    sender.ready().await.expect("connection still open");
}

/// One request on a raw HTTP/2 connection to a listener with a 300 ms keep-alive timeout, then
/// nothing: whether the connection ended with GOAWAY and a close within the deadline.
/// `answer_pings` plays a client library (the graceful close waits for a ping's answer).
async fn idle_connection_closes(answer_pings: bool) -> bool {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&format!(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nkeepalive_timeout = \"300ms\"\n[upstreams.app]\nservers = [\"{}\"]\n",
        b.addr
    ));
    let mut s = open_h2(proxy.addr()).await;
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .await
        .expect("request");
    read_until(&mut s, HEADERS).await.expect("a response");
    let ends = async {
        let mut goaway = false;
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return goaway;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return goaway;
            }
            match head[3] {
                GOAWAY => goaway = true,
                PING if answer_pings && head[4] & ACK == 0 => {
                    let _ = s.write_all(&frame(PING, ACK, 0, &payload)).await;
                }
                _ => {}
            }
        }
    };
    let closed = tokio::time::timeout(DEADLINE, ends).await;
    assert_eq!(b.requests(), 1);
    closed.unwrap_or(false)
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_keepalive_timeout() {
    assert!(idle_connection_closes(true).await);
}

#[tokio::test]
async fn a_client_that_ignores_the_closing_ping_is_cut() {
    // It would otherwise hold the expired connection for as long as it likes.
    assert!(idle_connection_closes(false).await);
}
