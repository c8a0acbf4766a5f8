//! WebSockets through the real binary (tokio-tungstenite on both ends): messages both ways,
//! the tunnel pinned by the sticky cookie set on the 101, unharmed by a SIGHUP, and closed
//! after `websocket_idle_timeout` without traffic.

mod common;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `text` and returns the answer.
async fn round_trip(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Text(answer)))) => answer.to_string(),
        other => panic!("no answer to {text:?}: {other:?}"),
    }
}

fn config(a: SocketAddr, b: SocketAddr, weight: u32) -> String {
    with_admin(&format!(
        "{}websocket_idle_timeout = \"1s\"\n[upstreams.app.sticky]\ncookie = \"route\"\n",
        config_with(
            &format!(r#"{{ addr = "{a}", weight = {weight} }}, "{b}""#),
            ""
        )
    ))
}

#[tokio::test]
async fn a_websocket_is_sticky_survives_a_reload_and_closes_when_idle() {
    let (one, two) = (
        websocket_echo_backend("one").await,
        websocket_echo_backend("two").await,
    );
    let proxy = Proxy::start(&config(one, two, 1));
    let url = format!("ws://{}/chat", proxy.addr());

    let (mut ws, resp) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket through rproxy");
    assert_eq!(resp.status(), 101);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("cookie")
        .to_string();
    let answer = round_trip(&mut ws, "hello").await;
    let first = answer.split(':').next().expect("name").to_string();
    assert!(answer == format!("{first}: hello"), "{answer}");

    // With the cookie, every new WebSocket reaches the same backend.
    for i in 0..4 {
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut()
            .insert("cookie", cookie.parse().expect("header"));
        let (mut pinned, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("pinned websocket");
        assert_eq!(
            round_trip(&mut pinned, &format!("m{i}")).await,
            format!("{first}: m{i}")
        );
    }

    // A reload (a weight change) leaves the open tunnel alone.
    assert!(proxy.reload_with(&config(one, two, 3)).await, "reloaded");
    assert_eq!(
        round_trip(&mut ws, "after reload").await,
        format!("{first}: after reload")
    );

    // Then silence: after websocket_idle_timeout (1s) rproxy closes the tunnel; not sooner.
    let silent_since = std::time::Instant::now();
    let closed = tokio::time::timeout(DEADLINE, ws.next()).await;
    let idle = silent_since.elapsed();
    assert!(
        matches!(
            closed,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_))))
        ),
        "{closed:?}"
    );
    assert!(
        idle >= std::time::Duration::from_millis(900),
        "closed after {idle:?} of silence"
    );
}
