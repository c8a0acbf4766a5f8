//! TLS to backends: a backend serving HTTPS with a certificate from a test CA is verified for
//! `server_name` (and its health checks pass over TLS); a name the certificate does not carry
//! is refused (502, and the checks fail); `insecure_skip_verify` accepts it with a warning.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use common::certs::Ca;
use common::*;

/// An HTTPS backend answering `https-backend`: HTTP/1.1, or HTTP/2 by ALPN when `h2`.
async fn https_backend(cert: &Path, key: &Path, h2: bool) -> SocketAddr {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("read cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("pem");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let mut config = config;
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let version = format!("{:?}", req.version());
                    hyper::Response::builder()
                        .header("x-backend", "https-backend")
                        .header("x-version", version)
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    });
    addr
}

fn config(backend: SocketAddr, tls: &str) -> String {
    format!(
        "{}[upstreams.app.health_check]\npath = \"/\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
        config_with(
            &format!("\"{backend}\""),
            &format!("tls = {tls}\nmax_fails = 0")
        )
    )
}

#[tokio::test]
async fn backends_are_verified_by_name_against_the_ca() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("app", &["app.internal"]);
    std::fs::write(ca.path("ca.pem"), &ca.pem).expect("write CA");
    let backend = https_backend(&cert, &key, false).await;
    let ca_path = ca.path("ca.pem").display().to_string();

    let good = Proxy::start(&with_admin(&config(
        backend,
        &format!("{{ ca = \"{ca_path}\", server_name = \"app.internal\" }}"),
    )));
    let ans = get(&client(), good.addr(), "/").await;
    assert_eq!((ans.status.as_u16(), ans.backend()), (200, "https-backend"));

    let wrong = Proxy::start(&with_admin(&config(
        backend,
        &format!("{{ ca = \"{ca_path}\", server_name = \"other.internal\" }}"),
    )));
    // The checks fail on the certificate (the same backend passes them when verified for the
    // name it has), and a request is refused, not sent in the clear.
    wrong
        .wait_for_backend_state("app", backend, "unhealthy")
        .await;
    assert_eq!(
        wrong.backend_status("app", backend).await["last_check"],
        "fail"
    );
    let ans = get(&client(), wrong.addr(), "/").await;
    assert_eq!(ans.status, 502);
    assert_eq!(
        wrong.backend_status("app", backend).await["errors"],
        1,
        "the request failed at the backend"
    );

    let insecure = Proxy::start(&config(backend, "{ insecure_skip_verify = true }"));
    // The warning is the behaviour under test here: no metric says "not verified".
    insecure
        .wait_for_log(&["insecure_skip_verify", "NOT verified"])
        .await;
    let ans = get(&client(), insecure.addr(), "/").await;
    assert_eq!(ans.status, 200);
    // Verified checks pass: a few of them, and not one failure or departure.
    let passed = backend_series(
        "rproxy_health_checks_total",
        "app",
        backend,
        ",result=\"pass\"",
    );
    good.wait_for_metric(&passed, |n| n >= 3.0).await;
    let m = good.scrape().await;
    for series in [
        backend_series(
            "rproxy_health_checks_total",
            "app",
            backend,
            ",result=\"fail\"",
        ),
        backend_series(
            "rproxy_backend_state_changes_total",
            "app",
            backend,
            ",to=\"down\"",
        ),
    ] {
        assert_eq!(metric(&m, &series), Some(0.0), "{series} in {m}");
    }
    assert_eq!(good.backend_status("app", backend).await["state"], "up");
}

#[tokio::test]
async fn a_missing_ca_file_is_a_config_error() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("u.toml");
    let backend = "127.0.0.1:9".parse().expect("addr");
    std::fs::write(&path, config(backend, "{ ca = \"nope.pem\" }")).expect("write");
    let out = rproxy_check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("upstreams.app.tls: cannot read the CA file")
            && stderr.contains("nope.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_h2_pool_negotiates_http2_over_tls() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("grpc", &["grpc.internal"]);
    std::fs::write(ca.path("ca.pem"), &ca.pem).expect("write CA");
    let backend = https_backend(&cert, &key, true).await;
    let tls = format!(
        "{{ ca = \"{}\", server_name = \"grpc.internal\" }}\nh2 = true",
        ca.path("ca.pem").display()
    );
    let proxy = Proxy::start(&config(backend, &tls));
    let ans = get(&client(), proxy.addr(), "/").await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.headers["x-version"], "HTTP/2.0", "ALPN chose h2");
}
