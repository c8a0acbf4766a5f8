//! Layer 4's two ways of moving bytes, through the real binary with real TCP echo backends:
//! splice(2) inside the kernel (`splice = true`, the default) and the user-space copy
//! (`splice = false`). Both carry every byte in order on many connections at once and count
//! them, and a spliced connection holds a pipe only while bytes are in it. A backend on a Unix
//! socket is spliced too. (What happens when no pipe can be had is a unit test in
//! src/upstream/forward/splice.rs.)

mod common;

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};

use common::*;

/// A backend that echoes every byte back until the client half-closes, then closes.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    addr
}

/// The same echo on a Unix socket at `path`.
fn unix_echo_backend(path: &Path) {
    let listener = UnixListener::bind(path).expect("bind the Unix socket");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
}

/// One backend connection: every byte back, then the half-close passed on.
async fn echo(s: impl AsyncRead + AsyncWrite) {
    let (mut r, mut w) = tokio::io::split(s);
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

fn config(echo: impl Display, listener_extra: &str) -> String {
    format!(
        "workers = 2\n[log]\naccess = \"off\"\n[listeners.tcp]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n{listener_extra}\n[upstreams.app]\nservers = [\"{echo}\"]\n"
    )
}

/// `len` bytes that differ per connection and do not repeat with any short period, so a byte
/// lost, repeated, reordered or carried over from another connection shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` through `s` while reading the echo, half-closes, and returns all that came back.
async fn round_trip(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let send = tokio::spawn(async move {
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, r.read_to_end(&mut back))
        .await
        .expect("the echo in time")
        .expect("read the echo");
    send.await.expect("send");
    back
}

/// `connections` clients at once, each sending `len` bytes of its own through rproxy and
/// checking that the echo brings every one back in order.
async fn echo_at_once(proxy: &Proxy, connections: u64, len: usize, splice: impl Display) {
    let splice = splice.to_string();
    let runs: Vec<_> = (0..connections)
        .map(|i| {
            let (addr, splice) = (proxy.addr(), splice.clone());
            tokio::spawn(async move {
                let s = TcpStream::connect(addr).await.expect("connect");
                let sent = pattern(i + 1, len);
                let back = round_trip(s, sent.clone()).await;
                assert_eq!(back.len(), sent.len(), "splice = {splice}: bytes back");
                assert!(back == sent, "splice = {splice}: the echo differs");
            })
        })
        .collect();
    for run in runs {
        run.await.expect("connection");
    }
}

/// The pipes rproxy has open now.
fn pipes_of(proxy: &Proxy) -> usize {
    fds_of(proxy)
        .iter()
        .filter(|target| target.starts_with("pipe:"))
        .count()
}

/// What each of rproxy's open descriptors refers to.
fn fds_of(proxy: &Proxy) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .expect("read /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn every_byte_arrives_in_order_spliced_or_copied() {
    const CONNECTIONS: u64 = 8;
    const LEN: usize = 3 << 20;
    let echo = echo_backend().await;
    for splice in ["true", "false"] {
        let proxy = Proxy::start(&with_admin(&config(echo, &format!("splice = {splice}"))));
        echo_at_once(&proxy, CONNECTIONS, LEN, splice).await;
        // Counted when each connection ends, which is just after the client saw the end.
        let want = (CONNECTIONS * LEN as u64) as f64;
        for direction in ["up", "down"] {
            let series =
                format!("rproxy_tcp_bytes_total{{listener=\"tcp\",direction=\"{direction}\"}}");
            wait_until(&format!("{series} = {want}"), || async {
                metric(&proxy.scrape().await, &series) == Some(want)
            })
            .await;
        }
    }
}

#[tokio::test]
async fn a_spliced_connection_holds_a_pipe_only_while_bytes_move() {
    const CONNECTIONS: usize = 30;
    // Per thread: rproxy's cache of empty pipes (4), each two descriptors, on two workers.
    const MOST_CACHED_PIPE_FDS: usize = 2 * 4 * 2;
    let echo = echo_backend().await;
    for splice in [true, false] {
        let proxy = Proxy::start(&config(echo, &format!("splice = {splice}")));
        let before = pipes_of(&proxy);
        let mut open = Vec::new();
        for i in 0..CONNECTIONS {
            let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
            // Enough that reads fill the 64 KiB from which rproxy splices.
            let sent = pattern(i as u64, 512 * 1024);
            let mut back = vec![0u8; sent.len()];
            let (mut r, mut w) = s.split();
            let (wrote, read) = tokio::time::timeout(DEADLINE, async {
                tokio::join!(w.write_all(&sent), r.read_exact(&mut back))
            })
            .await
            .expect("the echo in time");
            wrote.expect("write");
            read.expect("read the echo");
            assert!(back == sent, "the echo differs");
            open.push(s);
        }
        // Thirty connections open and idle, each having moved bytes both ways.
        let added = pipes_of(&proxy).saturating_sub(before);
        if splice {
            assert!(added > 0, "splice = true moved bytes through pipes");
            assert!(
                added <= MOST_CACHED_PIPE_FDS,
                "{added} pipe descriptors held by {CONNECTIONS} idle connections"
            );
        } else {
            assert_eq!(added, 0, "splice = false makes no pipes");
        }
    }
}

#[tokio::test]
async fn a_unix_backend_is_spliced_too() {
    const CONNECTIONS: u64 = 4;
    const LEN: usize = 3 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("echo.sock");
    unix_echo_backend(&path);
    let echo = format!("unix:{}", path.display());
    for splice in [true, false] {
        let proxy = Proxy::start(&config(&echo, &format!("splice = {splice}")));
        let before = pipes_of(&proxy);
        echo_at_once(&proxy, CONNECTIONS, LEN, splice).await;
        // The pipes the chunks went through wait in the workers' caches.
        let added = pipes_of(&proxy).saturating_sub(before);
        assert_eq!(
            added > 0,
            splice,
            "splice = {splice}: {added} pipe descriptors after bulk through a Unix backend"
        );
    }
}
