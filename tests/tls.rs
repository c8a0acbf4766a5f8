//! HTTPS through the real binary with certificates made by the test (rcgen): the certificate
//! chosen by SNI as the client sees it, ALPN h2 and http/1.1, a certificate swapped by SIGHUP
//! seen by the next handshake, a bad key refused with the old certificate kept, Secure sticky
//! cookies, X-Forwarded-Proto, the handshake timeout and redirect_https.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use common::certs::Ca;
use common::*;

/// Connects with SNI `name`; returns the stream, the certificate the server showed, and ALPN.
async fn handshake(
    ca: &Ca,
    addr: std::net::SocketAddr,
    name: &str,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Vec<u8>,
    Option<Vec<u8>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let server_name = ServerName::try_from(name.to_string()).expect("name");
    let tls = tokio::time::timeout(DEADLINE, ca.client(alpn).connect(server_name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a certificate");
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    (tls, cert, alpn)
}

/// One GET over an established TLS stream, as HTTP/1.1 or HTTP/2.
async fn get_over(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    h2: bool,
    host: &str,
) -> (u16, http::HeaderMap, String) {
    let req = http::Request::get(format!("https://{host}/"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h1 response")
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn https_config(certs: &str, upstream: &str, extra_listener: &str) -> String {
    format!(
        "[listeners.https]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nheader_timeout = \"500ms\"\ntls = {certs}\n{extra_listener}\n[upstreams.app]\nservers = [{upstream}]\n"
    )
}

/// `tls = { cert, key }`: one certificate for every name.
fn single(cert: &Path, key: &Path) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

fn entry(cert: &Path, key: &Path, hosts: &str) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\", hosts = [{hosts}] }}",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_picks_the_protocol() {
    let ca = Ca::new();
    let (a_cert, a_key, a_der) = ca.leaf("a", &["a.example"]);
    let (w_cert, w_key, w_der) = ca.leaf("wild", &["*.b.example"]);
    let backend = Backend::start("app").await;
    let certs = format!(
        "{{ certs = [{}, {}] }}",
        entry(&a_cert, &a_key, "\"a.example\""),
        entry(&w_cert, &w_key, "\"*.b.example\"")
    );
    let proxy = Proxy::start(&https_config(&certs, &format!("\"{}\"", backend.addr), ""));
    let addr = proxy.addr();

    let (_, cert, _) = handshake(&ca, addr, "a.example", &[b"http/1.1"]).await;
    assert_eq!(cert, a_der, "the exact name's certificate");
    let (tls, cert, alpn) = handshake(&ca, addr, "x.b.example", &[b"http/1.1"]).await;
    assert_eq!(cert, w_der, "the wildcard's certificate");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, headers, body) = get_over(tls, false, "x.b.example").await;
    assert_eq!((status, body.as_str()), (200, "app"));
    assert_eq!(headers["x-backend"], "app");
    let seen = backend.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    let (tls, _, alpn) = handshake(&ca, addr, "a.example", &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (status, _, body) = get_over(tls, true, "a.example").await;
    assert_eq!((status, body.as_str()), (200, "app"));
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_a_bad_key_keeps_the_old_one() {
    let ca = Ca::new();
    let (cert, key, first_der) = ca.leaf("site", &["a.example"]);
    let backend = Backend::start("app").await;
    let certs = single(&cert, &key);
    let proxy = Proxy::start(&with_admin(&https_config(
        &certs,
        &format!("\"{}\"", backend.addr),
        "",
    )));
    let addr = proxy.addr();
    let (_, seen, _) = handshake(&ca, addr, "a.example", &[]).await;
    assert_eq!(seen, first_der);

    // A renewed certificate in the same files: the next handshake shows it.
    let (_, _, renewed_der) = ca.leaf("site", &["a.example"]);
    assert_ne!(renewed_der, first_der);
    assert!(proxy.reload().await, "the reload succeeded");
    let (_, seen, _) = handshake(&ca, addr, "a.example", &[]).await;
    assert_eq!(seen, renewed_der, "the new certificate after SIGHUP");

    // A key that belongs to another certificate: the reload is refused, the old one stays.
    let (_, other_key, _) = ca.leaf("other", &["a.example"]);
    std::fs::copy(&other_key, &key).expect("copy key");
    assert!(!proxy.reload().await, "the reload is refused");
    // For the reason `rproxy -t` gives for the same files.
    let out = rproxy_check(&proxy.config_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("listeners.https.tls")
            && stderr.contains("does not match the certificate"),
        "{stderr}"
    );
    let (tls, seen, _) = handshake(&ca, addr, "a.example", &[]).await;
    assert_eq!(seen, renewed_der, "the old certificate is kept");
    assert_eq!(get_over(tls, false, "a.example").await.0, 200);
}

#[tokio::test]
async fn a_bad_key_at_start_is_a_clear_error() {
    let ca = Ca::new();
    let (cert, _, _) = ca.leaf("site", &["a.example"]);
    let (_, other_key, _) = ca.leaf("other", &["a.example"]);
    let config_path = ca.path("bad.toml");
    std::fs::write(
        &config_path,
        https_config(&single(&cert, &other_key), "\"127.0.0.1:1\"", ""),
    )
    .expect("write");
    let out = std::process::Command::new(rproxy_bin())
        .arg("-t")
        .arg("-c")
        .arg(&config_path)
        .output()
        .expect("run rproxy -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.toml:5:7: listeners.https.tls: the key in")
            && stderr.contains("does not match the certificate"),
        "{stderr}"
    );
    std::fs::write(
        &config_path,
        https_config(
            "{ cert = \"missing.pem\", key = \"missing.key\" }",
            "\"127.0.0.1:1\"",
            "",
        ),
    )
    .expect("write");
    let out = rproxy_check(&config_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the certificate") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sticky_cookies_are_secure_over_tls_and_a_plain_listener_redirects() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("site", &["a.example"]);
    let backend = Backend::start("app").await;
    let certs = single(&cert, &key);
    let plain = "[listeners.plain]\nlisten = \"127.0.0.1:0\"\nredirect_https = true\n";
    let config = format!(
        "{}[upstreams.app.sticky]\ncookie = \"route\"\n",
        https_config(&certs, &format!("\"{}\"", backend.addr), plain)
    );
    let proxy = Proxy::start(&config);
    let https = proxy.listeners["https"][0];
    let (tls, _, _) = handshake(&ca, https, "a.example", &[]).await;
    let (status, headers, _) = get_over(tls, false, "a.example").await;
    assert_eq!(status, 200);
    let cookie = headers["set-cookie"].to_str().expect("ascii");
    assert!(
        cookie.starts_with("route=") && cookie.contains("; Secure"),
        "{cookie}"
    );

    // The plain listener sends every request to the same URL over https, on the https port.
    let plain = proxy.listeners["plain"][0];
    let req = http::Request::post(format!("http://{plain}/cart?id=3"))
        .header("host", "a.example:8080")
        .body(Full::new(Bytes::from_static(b"x")))
        .expect("request");
    let ans = send(&client(), req).await;
    assert_eq!(ans.status, 308);
    assert_eq!(
        ans.headers["location"],
        format!("https://a.example:{}/cart?id=3", https.port()).as_str()
    );
    assert_eq!(backend.requests(), 1, "the redirect reached no backend");
}

#[tokio::test]
async fn a_client_stalling_in_the_handshake_is_closed() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("site", &["a.example"]);
    let certs = single(&cert, &key);
    let proxy = Proxy::start(&https_config(&certs, "\"127.0.0.1:1\"", ""));
    let mut stalled = TcpStream::connect(proxy.addr()).await.expect("connect");
    // Half a ClientHello's record header, then nothing: closed after header_timeout (500ms).
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03])
        .await
        .expect("write");
    let closed =
        tokio::time::timeout(Duration::from_secs(10), closed_by_server(&mut stalled)).await;
    assert!(
        matches!(closed, Ok(true)),
        "the stalled handshake was not closed"
    );
}

#[tokio::test]
async fn curl_reaches_the_site_as_a_user_would() {
    // curl is on every machine this runs on; say so rather than pass silently without it.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is not installed");
    }
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("site", &["a.example"]);
    std::fs::write(ca.path("ca.pem"), &ca.pem).expect("write CA");
    let backend = Backend::start("app").await;
    let certs = single(&cert, &key);
    let proxy = Proxy::start(&https_config(&certs, &format!("\"{}\"", backend.addr), ""));
    let port = proxy.addr().port();
    for version in ["--http1.1", "--http2"] {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "--max-time", "10", version, "--cacert"])
            .arg(ca.path("ca.pem"))
            .arg("--resolve")
            .arg(format!("a.example:{port}:127.0.0.1"))
            .arg("-w")
            .arg(" %{http_version}")
            .arg(format!("https://a.example:{port}/"));
        // Off the runtime thread: the backend answers on it meanwhile.
        let out = tokio::task::spawn_blocking(move || curl.output())
            .await
            .expect("join")
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = if version == "--http2" {
            "app 2"
        } else {
            "app 1.1"
        };
        assert_eq!(stdout, want, "{version}");
    }
}

#[tokio::test]
async fn resumption_works_and_an_expired_certificate_is_warned_about() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf_with("old", &["a.example"], |p| {
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 6, 30);
    });
    let certs = single(&cert, &key);
    let proxy = Proxy::start(&https_config(&certs, "\"127.0.0.1:1\"", ""));
    // The warning is the behaviour under test here: no metric or /status field carries a
    // certificate's dates.
    let line = proxy
        .wait_for_log(&["the certificate has expired", "2020-06-30"])
        .await;
    assert!(line.contains("old.pem"), "{line}");

    // A second connection with the same client resumes the first one's session.
    let (cert, key, _) = ca.leaf("site", &["a.example"]);
    let certs = single(&cert, &key);
    let proxy = Proxy::start(&https_config(&certs, "\"127.0.0.1:1\"", ""));
    let connector = ca.client(&[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
        let name = ServerName::try_from("a.example").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        kinds.push(tls.get_ref().1.handshake_kind());
        // Read the session ticket TLS 1.3 sends after the handshake, then close.
        let req = b"GET / HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut tls, req)
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer).await;
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

#[tokio::test]
async fn a_client_without_sni_gets_the_default_certificate() {
    let ca = Ca::new();
    // The first certificate is the default; this one also names 127.0.0.1, which a client
    // connecting by IP address (and so sending no SNI) verifies.
    let (d_cert, d_key, d_der) = ca.leaf("default", &["127.0.0.1", "default.example"]);
    let (a_cert, a_key, _) = ca.leaf("a", &["a.example"]);
    let certs = format!(
        "{{ certs = [{}, {}] }}",
        entry(&d_cert, &d_key, ""),
        entry(&a_cert, &a_key, "\"a.example\"")
    );
    let proxy = Proxy::start(&https_config(&certs, "\"127.0.0.1:1\"", ""));
    let (_, cert, _) = handshake(&ca, proxy.addr(), "127.0.0.1", &[]).await;
    assert_eq!(cert, d_der);
}
