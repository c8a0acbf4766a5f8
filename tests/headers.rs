//! Header rewriting seen from a real backend and a real client: forwarding headers, the
//! trusted-proxy rule, hop-by-hop removal both ways, Host handling, HTTP/2 to HTTP/1.1.

mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

fn text(h: &http::HeaderMap, name: &str) -> String {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("text"))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::test]
async fn forwarding_headers_are_set_and_forgeries_replaced() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let req = Request::get(format!("http://{}/path?q=1", proxy.addr()))
        .header("host", "shop.example:8080")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .body(Full::default())
        .expect("request");
    let ans = send(&client(), req).await;
    assert_eq!(ans.status, 200);
    let seen = b.last();
    assert_eq!(seen.uri, "/path?q=1");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        text(&seen.headers, "host"),
        "shop.example:8080",
        "Host passes through as sent"
    );
    assert_eq!(text(&seen.headers, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(text(&seen.headers, "x-real-ip"), "127.0.0.1");
    assert_eq!(text(&seen.headers, "x-forwarded-proto"), "http");
    assert_eq!(text(&seen.headers, "x-forwarded-host"), "shop.example:8080");
    assert!(!seen.headers.contains_key("forwarded"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let raw = raw_exchange(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Forwarded-For, X-Token\r\n\
          X-Token: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
          TE: trailers\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let seen = b.last();
    for gone in ["x-token", "keep-alive", "proxy-connection", "te", "upgrade"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the backend"
        );
    }
    assert_eq!(text(&seen.headers, "x-kept"), "yes");
    assert_eq!(
        text(&seen.headers, "x-forwarded-for"),
        "127.0.0.1",
        "naming X-Forwarded-For in Connection must not remove rproxy's own"
    );
    // The backend's answer named `x-private` in its Connection header: gone before the client.
    let lower = raw.to_ascii_lowercase();
    assert!(!lower.contains("x-private"), "{raw}");
    assert!(lower.contains("x-backend: b"));
}

#[tokio::test]
async fn trusted_proxies_extend_the_chain_and_name_the_real_client() {
    let b = Backend::start("b").await;
    let config = format!(
        "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n{}",
        config_with(&format!("\"{}\"", b.addr), "")
    );
    let proxy = Proxy::start(&config);
    let req = Request::get(format!("http://{}/", proxy.addr()))
        .header("x-forwarded-for", "203.0.113.5, 10.1.2.3")
        .header("x-forwarded-proto", "https")
        .body(Full::default())
        .expect("request");
    assert_eq!(send(&client(), req).await.status, 200);
    let seen = b.last();
    assert_eq!(
        text(&seen.headers, "x-forwarded-for"),
        "203.0.113.5, 10.1.2.3, 127.0.0.1"
    );
    assert_eq!(text(&seen.headers, "x-real-ip"), "203.0.113.5");
    assert_eq!(text(&seen.headers, "x-forwarded-proto"), "https");
}

#[tokio::test]
async fn http2_clients_reach_http11_backends_with_a_host_header() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let c = h2_client();
    for _ in 0..3 {
        let req = Request::post(format!("http://{}/h2?x=1", proxy.addr()))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("request");
        let ans = send(&c, req).await;
        assert_eq!(ans.status, 200);
        assert_eq!(ans.body, "b");
    }
    let seen = b.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri, "/h2?x=1");
    assert_eq!(text(&seen.headers, "host"), proxy.addr().to_string());
    assert_eq!(text(&seen.headers, "cookie"), "a=1; b=2");
    assert_eq!(seen.body_len, 5);
}

#[tokio::test]
async fn absolute_form_target_sets_host() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let raw = raw_exchange(
        proxy.addr(),
        b"GET http://site.example/abs?y=2 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let seen = b.last();
    assert_eq!(seen.uri, "/abs?y=2");
    assert_eq!(text(&seen.headers, "host"), "site.example");
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_rproxy_not_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let mut s = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write head");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("100 in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").await.expect("write body");
    let mut got = String::new();
    while !got.contains("\r\n\r\nb") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let seen = b.last();
    assert!(!seen.headers.contains_key("expect"));
    assert_eq!(seen.body_len, 5);
}

#[tokio::test]
async fn ipv6_and_ipv4_listen_addresses_on_one_listener() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let b = Backend::start("b").await;
    let config = format!(
        "[listeners.web]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\nupstream = \"app\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n",
        b.addr
    );
    let proxy = Proxy::start(&config);
    let addrs = &proxy.listeners["web"];
    assert_eq!(addrs.len(), 2);
    assert!(addrs.iter().any(|a| a.is_ipv6()) && addrs.iter().any(|a| a.is_ipv4()));
    for addr in addrs {
        assert_eq!(get(&client(), *addr, "/").await.status, 200, "via {addr}");
    }
    assert_eq!(text(&b.last().headers, "x-forwarded-for"), "::1");
}

#[tokio::test]
async fn a_request_id_is_sent_upstream_and_logged() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n{}",
        log.display(),
        config_with(&format!("\"{}\"", b.addr), "")
    ));
    // The access log's record of the request for `target`, once written.
    let record = |target: &'static str| {
        let log = log.clone();
        async move {
            let mut line = None;
            wait_for(&format!("{target} in the access log"), || {
                line = json_lines(&log).into_iter().find(|l| l["target"] == target);
                line.is_some()
            })
            .await;
            line.expect("found")
        }
    };
    let c = client();
    assert_eq!(get(&c, proxy.addr(), "/first").await.status, 200);
    let generated = text(&b.last().headers, "x-request-id");
    assert_eq!(generated.len(), 32, "{generated}");
    let first = record("/first").await;
    assert_eq!(
        (&first["status"], &first["request_id"]),
        (&200.into(), &generated.as_str().into())
    );

    let req = Request::get(format!("http://{}/second", proxy.addr()))
        .header("x-request-id", "client-chosen-42")
        .body(Full::default())
        .expect("request");
    assert_eq!(send(&c, req).await.status, 200);
    assert_eq!(text(&b.last().headers, "x-request-id"), "client-chosen-42");
    let second = record("/second").await;
    assert_eq!(
        (&second["status"], &second["request_id"]),
        (&200.into(), &"client-chosen-42".into())
    );
}

/// A listener that writes only `X-Forwarded-For` and makes no request ids, as an HAProxy
/// frontend with `option forwardfor` alone: the headers left out are neither written nor
/// passed on from a client that could have forged them, and a client's own id passes as sent
/// and is the one logged.
#[tokio::test]
async fn a_listener_can_write_fewer_forwarding_headers_and_no_request_id() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let config = config_with(&format!("\"{}\"", b.addr), "").replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nforwarded_headers = [\"X-Forwarded-For\"]\nrequest_id = false\n",
    );
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n{config}",
        log.display()
    ));
    let c = client();
    let req = Request::get(format!("http://{}/forged", proxy.addr()))
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-request-id", "client-7")
        .body(Full::default())
        .expect("request");
    assert_eq!(send(&c, req).await.status, 200);
    let seen = b.last();
    assert_eq!(text(&seen.headers, "x-forwarded-for"), "127.0.0.1");
    for gone in ["x-real-ip", "x-forwarded-proto", "x-forwarded-host"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the backend"
        );
    }
    assert_eq!(text(&seen.headers, "x-request-id"), "client-7");
    assert_eq!(text(&seen.headers, "host"), "shop.example");

    assert_eq!(get(&c, proxy.addr(), "/plain").await.status, 200);
    let seen = b.last();
    assert!(
        !seen.headers.contains_key("x-request-id"),
        "{:?}",
        seen.headers
    );
    assert_eq!(text(&seen.headers, "x-forwarded-for"), "127.0.0.1");

    let mut lines = Vec::new();
    wait_for("both requests in the access log", || {
        lines = json_lines(&log);
        lines.len() >= 2
    })
    .await;
    let id_of = |target: &str| {
        lines
            .iter()
            .find(|l| l["target"] == target)
            .map(|l| l["request_id"].clone())
    };
    assert_eq!(id_of("/forged"), Some("client-7".into()));
    assert_eq!(id_of("/plain"), Some(serde_json::Value::Null));
}

/// An HTTP/1.0 request may come without `Host`; it goes on as HTTP/1.1, which must carry
/// one, so the backend gets the backend's address (nginx's `$proxy_host`) instead of a 400.
#[tokio::test]
async fn an_http_1_0_request_without_host_reaches_the_backend_with_one() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let answer = raw_exchange(proxy.addr(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = b.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(text(&seen.headers, "host"), b.addr.to_string());
}
