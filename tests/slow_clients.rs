//! Slow and hostile clients at once: connections that send nothing, heads that trickle
//! (slowloris), bodies that trickle, clients that never read their response. Each is closed by
//! its timeout while a normal client keeps getting every request answered, and afterwards
//! rproxy holds no more file descriptors than it started with.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const IDLE: usize = 40;
const SLOWLORIS: usize = 40;
const BODY_TRICKLERS: usize = 20;
const NON_READERS: usize = 10;

/// Writes `chunk` every `every` until the server closes the connection.
async fn trickle(mut s: TcpStream, chunk: &'static [u8], every: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // a 408 or 400 on its way out
            },
            _ = tokio::time::sleep(every) => {
                if s.write_all(chunk).await.is_err() {
                    return true;
                }
            }
        }
    }
}

#[tokio::test]
async fn slow_clients_are_closed_and_normal_clients_served() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         header_timeout = \"500ms\"\nbody_timeout = \"500ms\"\nsend_timeout = \"500ms\"\n\
         keepalive_timeout = \"500ms\"\n\
         [upstreams.app]\nservers = [\"{}\"]\nkeepalive_timeout = \"300ms\"\n",
        log.display(),
        b.addr
    ));
    let addr = proxy.addr();
    let baseline = fd_count(proxy.pid());
    assert!(baseline > 0);

    let mut slow = Vec::new();
    for _ in 0..IDLE {
        let s = TcpStream::connect(addr).await.expect("connect");
        slow.push(tokio::spawn(trickle(s, b"", Duration::from_secs(3600))));
    }
    for _ in 0..SLOWLORIS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write");
        slow.push(tokio::spawn(trickle(
            s,
            b"X-a: b\r\n",
            Duration::from_millis(100),
        )));
    }
    for _ in 0..BODY_TRICKLERS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nx")
            .await
            .expect("write");
        slow.push(tokio::spawn(trickle(s, b"x", Duration::from_millis(800))));
    }
    let mut non_readers = Vec::new();
    for _ in 0..NON_READERS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /download/200000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        non_readers.push(s);
    }

    // Meanwhile a normal client is served without a single failure.
    let c = client();
    for i in 0..100 {
        let ans = get(&c, addr, &format!("/normal/{i}")).await;
        assert_eq!(ans.status, 200, "normal request {i}");
    }

    for task in slow {
        let closed = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("closed in time");
        assert!(closed.expect("task"));
    }
    // The non-readers are closed by the send timeout: the access log records each download
    // as cut short, and what the client can still read stops far short of the whole.
    wait_for("every non-reader's download to be cut", || {
        json_lines(&log)
            .iter()
            .filter(|l| l["target"] == "/download/200000000" && l["complete"] == false)
            .count()
            == NON_READERS
    })
    .await;
    for mut s in non_readers {
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let read = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("cut in time");
        assert!(
            got < 200_000_000,
            "a non-reading client got its whole download"
        );
    }
    drop(c);
    wait_for(
        "rproxy's file descriptors to return to the starting count",
        || fd_count(proxy.pid()) <= baseline,
    )
    .await;
}
