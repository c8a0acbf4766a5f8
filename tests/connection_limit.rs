//! `max_connections`: past the limit, new connections wait in the accept queue (they are not
//! refused, and rproxy does not run out of descriptors), and they are served as soon as a slot
//! frees up.

mod common;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

#[tokio::test]
async fn connections_past_the_limit_wait_and_are_then_served() {
    let b = Backend::start("b").await;
    // Two listen sockets, one budget of three connections between them.
    let proxy = Proxy::start(&with_admin(&format!(
        "[listeners.web]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nupstream = \"app\"\n\
         max_connections = 3\n[upstreams.app]\nservers = [\"{}\"]\n",
        b.addr
    )));
    let status = proxy.status().await;
    let web = &status["listeners"][0];
    assert_eq!(
        (&web["name"], &web["max_connections"]),
        (&"web".into(), &3.into())
    );
    // Client connections open, from /metrics (and /status, below: an accept loop holds no
    // slot while it waits for a connection, so the two agree).
    let p = &proxy;
    let open = move || async move { p.metric("rproxy_connections_open{listener=\"web\"}").await };
    let addrs = proxy.listeners["web"].clone();
    assert_eq!(addrs.len(), 2);
    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(addrs[i % 2]).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    wait_until(
        "the listener's three slots to be taken",
        move || async move { open().await == 3.0 },
    )
    .await;
    assert_eq!(proxy.status().await["listeners"][0]["connections_open"], 3);

    // A fourth connection, on either socket, is accepted by the kernel but not served while
    // all slots are held.
    let mut waiting = TcpStream::connect(addrs[1]).await.expect("connect");
    waiting
        .write_all(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let early = tokio::time::timeout(Duration::from_millis(300), read_response(&mut waiting)).await;
    assert!(early.is_err(), "served past the connection limit");

    // One slot frees: the waiting connection is served.
    drop(held.pop());
    let answer = read_response(&mut waiting).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The freed slot went to the waiting connection, which is kept alive: three again. Once
    // it closes too, two.
    assert_eq!(open().await, 3.0);
    drop(waiting);
    wait_until("a slot to be free again", move || async move {
        open().await == 2.0
    })
    .await;
}
