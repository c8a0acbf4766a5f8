//! Layer 4 (`protocol = "tcp"`) through the real binary with real TCP backends: spread by the
//! policy, failover on a refused backend, half-close, reset propagation, bulk transfer with
//! bounded memory, a TCP health check, PROXY protocol v1/v2 sent and accepted, an open
//! connection surviving SIGHUP, and the configuration checks.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// How a test backend treats each connection.
#[derive(Clone, Copy)]
enum Kind {
    /// Writes its name and a newline, then echoes.
    Named(&'static str),
    /// Reads to the end, then answers `got N` and closes.
    Sink,
    /// Reads a PROXY header line (v1) or block (v2), answers what it parsed, then echoes.
    ProxyAware,
    /// Reads a little, then resets the connection.
    Resetting,
    /// Writes `n` bytes while reading to the end, then answers nothing more and closes.
    Source(u64),
}

async fn backend(kind: Kind) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve(kind, &mut s).await;
            });
        }
    });
    addr
}

async fn serve(kind: Kind, s: &mut TcpStream) -> std::io::Result<()> {
    match kind {
        Kind::Named(name) => {
            s.write_all(format!("{name}\n").as_bytes()).await?;
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
        }
        Kind::Sink => {
            let mut all = Vec::new();
            s.read_to_end(&mut all).await?;
            s.write_all(format!("got {}", all.len()).as_bytes()).await?;
        }
        Kind::ProxyAware => {
            let mut first = [0u8; 12];
            s.read_exact(&mut first).await?;
            let parsed = if &first == b"\r\n\r\n\0\r\nQUIT\n" {
                let mut head = [0u8; 4];
                s.read_exact(&mut head).await?;
                let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await?;
                assert_eq!(head[1], 0x11, "TCP over IPv4");
                let ip = std::net::Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                let port = u16::from_be_bytes([body[8], body[9]]);
                format!("v2 {ip}:{port}")
            } else {
                let mut line = first.to_vec();
                while !line.ends_with(b"\r\n") {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    line.push(b[0]);
                }
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let f: Vec<&str> = text.split(' ').collect();
                format!("v1 {}:{}", f[2], f[4])
            };
            s.write_all(format!("{parsed}\n").as_bytes()).await?;
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
        }
        Kind::Resetting => {
            let mut buf = [0u8; 4];
            let _ = s.read(&mut buf).await?;
            socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO))?;
        }
        Kind::Source(n) => {
            let (mut r, mut w) = s.split();
            let write = async {
                let chunk = vec![7u8; 64 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    w.write_all(&chunk[..k]).await?;
                    left -= k as u64;
                }
                w.shutdown().await
            };
            let read = async {
                let mut sink = tokio::io::sink();
                tokio::io::copy(&mut r, &mut sink).await
            };
            let (written, read) = tokio::join!(write, read);
            written?;
            read?;
        }
    }
    Ok(())
}

fn tcp_config(servers: &str, listener_extra: &str, upstream_extra: &str) -> String {
    format!(
        "[log]\naccess = \"off\"\n[listeners.tcp]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n{listener_extra}\n[upstreams.app]\nservers = [{servers}]\n{upstream_extra}\n"
    )
}

async fn first_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while tokio::time::timeout(DEADLINE, s.read_exact(&mut b))
        .await
        .expect("in time")
        .is_ok()
    {
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[tokio::test]
async fn connections_spread_by_policy_and_skip_a_refused_backend() {
    let (a, b) = (
        backend(Kind::Named("a")).await,
        backend(Kind::Named("b")).await,
    );
    let dead = refused_addr();
    let proxy = Proxy::start(&tcp_config(
        &format!("\"{a}\", \"{dead}\", \"{b}\""),
        "",
        "",
    ));
    let mut names = Vec::new();
    let mut open = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        names.push(first_line(&mut s).await);
        open.push(s);
    }
    // Every connection reached a live backend; the refused one's turns went to the others.
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("a") + count("b"), 6, "{names:?}");
    assert!(count("a") >= 2 && count("b") >= 2, "{names:?}");
    // Echo through the tunnel.
    open[0].write_all(b"ping\n").await.expect("write");
    assert_eq!(first_line(&mut open[0]).await, "ping");

    let ip_hash = Proxy::start(&tcp_config(
        &format!("\"{a}\", \"{b}\""),
        "",
        "balance = \"ip_hash\"",
    ));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(ip_hash.addr()).await.expect("connect");
        seen.insert(first_line(&mut s).await);
    }
    assert_eq!(seen.len(), 1, "one client address, one backend: {seen:?}");
}

#[tokio::test]
async fn half_close_and_reset_pass_through() {
    let sink = backend(Kind::Sink).await;
    let proxy = Proxy::start(&tcp_config(&format!("\"{sink}\""), "", ""));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(&[1u8; 1000]).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut answer))
        .await
        .expect("in time")
        .expect("the rest of the answer after our half-close");
    assert_eq!(answer, "got 1000");

    let resetting = backend(Kind::Resetting).await;
    let proxy = Proxy::start(&tcp_config(&format!("\"{resetting}\""), "", ""));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"data").await.expect("write");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("in time");
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the backend's reset reaches the client as a reset: {read:?}"
    );
}

/// Sends `n` bytes up while the backend sends `n` down; returns the bytes received.
async fn both_ways(proxy: SocketAddr, n: u64) -> u64 {
    let s = TcpStream::connect(proxy).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let up = tokio::spawn(async move {
        let chunk = vec![3u8; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..k]).await.expect("write");
            left -= k as u64;
        }
        w.shutdown().await.expect("shutdown");
    });
    let mut sink = tokio::io::sink();
    let down = tokio::io::copy(&mut r, &mut sink).await.expect("read");
    up.await.expect("upload");
    down
}

#[tokio::test]
async fn bulk_both_ways_with_bounded_memory() {
    const N: u64 = 64 << 20;
    let source = backend(Kind::Source(N)).await;
    let proxy = Proxy::start(&tcp_config(&format!("\"{source}\""), "", ""));
    assert_eq!(both_ways(proxy.addr(), N).await, N);
    let rss = proxy.peak_rss_kib();
    eprintln!("64 MiB each way; rproxy peak RSS {rss} KiB");
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
}

#[tokio::test]
#[ignore = "1 GiB each way; run in release: cargo test --release --test tcp -- --ignored"]
async fn one_gib_each_way() {
    const N: u64 = 1 << 30;
    let source = backend(Kind::Source(N)).await;
    let proxy = Proxy::start(&tcp_config(&format!("\"{source}\""), "", ""));
    let started = std::time::Instant::now();
    assert_eq!(both_ways(proxy.addr(), N).await, N);
    eprintln!(
        "1 GiB each way in {:?}; rproxy peak RSS {} KiB",
        started.elapsed(),
        proxy.peak_rss_kib()
    );
}

#[tokio::test]
async fn a_tcp_health_check_takes_a_dead_backend_out() {
    let a = backend(Kind::Named("a")).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let doomed = listener.local_addr().expect("addr");
    let proxy = Proxy::start(&with_admin(&tcp_config(
        &format!("\"{a}\", \"{doomed}\""),
        "",
        "max_fails = 0\nhealth_check = { type = \"tcp\", interval = \"100ms\", fall = 2 }",
    )));
    drop(listener);
    // Passive health is off: only the checks can take it out.
    proxy
        .wait_for_backend_state("app", doomed, "unhealthy")
        .await;
    for _ in 0..4 {
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(first_line(&mut s).await, "a");
    }
}

#[tokio::test]
async fn proxy_protocol_is_sent_and_accepted() {
    let aware = backend(Kind::ProxyAware).await;
    for version in ["v1", "v2"] {
        let proxy = Proxy::start(&tcp_config(
            &format!("\"{aware}\""),
            &format!("proxy_protocol = \"{version}\""),
            "",
        ));
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        let me = s.local_addr().expect("local");
        assert_eq!(first_line(&mut s).await, format!("{version} {me}"));
        s.write_all(b"after the header\n").await.expect("write");
        assert_eq!(first_line(&mut s).await, "after the header");
    }
    // A load balancer in front sends v1: the backend learns the original client.
    let proxy = Proxy::start(&tcp_config(
        &format!("\"{aware}\""),
        "accept_proxy_protocol = true\nproxy_protocol = \"v2\"",
        "",
    ));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 4000 6432\r\nhello\n")
        .await
        .expect("write");
    assert_eq!(first_line(&mut s).await, "v2 203.0.113.7:4000");
    assert_eq!(first_line(&mut s).await, "hello");
    // Without a header it is refused.
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    s.write_all(b"no header here\r\n").await.expect("write");
    assert!(closed_by_server(&mut s).await);
}

#[tokio::test]
async fn an_open_connection_survives_sighup() {
    let (a, b) = (
        backend(Kind::Named("a")).await,
        backend(Kind::Named("b")).await,
    );
    let proxy = Proxy::start(&with_admin(&tcp_config(&format!("\"{a}\""), "", "")));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(first_line(&mut s).await, "a");
    let reloaded = proxy
        .reload_with(&with_admin(&tcp_config(&format!("\"{b}\""), "", "")))
        .await;
    assert!(reloaded, "the reload succeeded");
    s.write_all(b"still here\n").await.expect("write");
    assert_eq!(first_line(&mut s).await, "still here");
    let mut fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(
        first_line(&mut fresh).await,
        "b",
        "new connections use the new config"
    );
}

#[tokio::test]
async fn http_only_settings_are_refused_on_tcp() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.toml");
    let check = |config: String| {
        std::fs::write(&path, config).expect("write");
        let out = rproxy_check(&path);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = check(tcp_config(
        "\"127.0.0.1:9\"",
        "max_headers = 10\nproxy_protocol = \"v3\"\nsplice = \"auto\"",
        "",
    ));
    for wanted in [
        "t.toml:7:15: listeners.tcp.max_headers: applies to HTTP listeners only",
        "listeners.tcp.proxy_protocol: `v3` is not \"v1\" or \"v2\"",
        "t.toml:9:10: listeners.tcp.splice:",
    ] {
        assert!(stderr.contains(wanted), "{wanted} in {stderr}");
    }
    let stderr = check(
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nsplice = false\n[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n".to_string(),
    );
    assert!(
        stderr.contains(
            "t.toml:4:10: listeners.web.splice: applies to protocol = \"tcp\" listeners only"
        ),
        "{stderr}"
    );
    let stderr = check(tcp_config(
        "\"127.0.0.1:9\"",
        "",
        "[upstreams.app.sticky]\ncookie = \"s\"",
    ));
    assert!(
        stderr.contains("t.toml:6:12: listeners.tcp.upstream: upstream `app` has sticky cookies, which needs HTTP"),
        "{stderr}"
    );
}

#[tokio::test]
async fn least_conn_counts_open_connections() {
    let (a, b) = (
        backend(Kind::Named("a")).await,
        backend(Kind::Named("b")).await,
    );
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        tcp_config(&format!("\"{a}\", \"{b}\""), "", "balance = \"least_conn\"")
    ));
    let mut first = TcpStream::connect(proxy.addr()).await.expect("connect");
    let x = first_line(&mut first).await;
    let mut second = TcpStream::connect(proxy.addr()).await.expect("connect");
    let y = first_line(&mut second).await;
    assert_ne!(x, y, "one open connection each");
    drop(second);
    // Once the closed one is counted out, its backend has 0 open against 1: it gets the next.
    let admin = proxy.admin_addr();
    let p = &proxy;
    let one_open_one_closed = move || async move {
        let status = p.status().await;
        let mut in_flight: Vec<u64> = status["upstreams"][0]["backends"]
            .as_array()
            .map(|all| all.iter().filter_map(|b| b["in_flight"].as_u64()).collect())
            .unwrap_or_default();
        in_flight.sort_unstable();
        in_flight == [0, 1]
    };
    wait_until(
        "the closed connection to be counted out: in_flight 0 and 1",
        one_open_one_closed,
    )
    .await;
    let status = get(&client(), admin, "/status").await.body;
    assert!(status.contains("\"protocol\": \"tcp\""), "{status}");
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            first_line(&mut s).await,
            y,
            "the backend with no open connection"
        );
        drop(s);
        // Wait until it is counted out again before the next one.
        wait_until(
            "the connection to be counted out again",
            one_open_one_closed,
        )
        .await;
    }
    first
        .write_all(b"x\n")
        .await
        .expect("the first is still open");
    assert_eq!(first_line(&mut first).await, "x");
    let metrics = scrape_admin(admin).await;
    for series in [
        "rproxy_tcp_connections_total{listener=\"tcp\",upstream=\"app\",backend=",
        "rproxy_tcp_connections_open{listener=\"tcp\"} 1",
        "rproxy_tcp_bytes_total{listener=\"tcp\",direction=\"down\"}",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}
