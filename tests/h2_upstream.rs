//! `h2 = true`: HTTP/2 (cleartext, prior knowledge) to the backends, for gRPC-style services.
//! Trailers pass through, `te: trailers` reaches the backend, health checks speak HTTP/2 too,
//! and many parallel streams from one HTTP/2 client are each balanced on their own.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use common::*;

/// What an HTTP/2 backend counted: requests, those with `te: trailers`, health checks.
#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    te: AtomicUsize,
    checks: AtomicUsize,
}

/// An HTTP/2-only backend answering `NAME` with a `grpc-status: 0` trailer.
async fn h2_backend(name: &'static str) -> (SocketAddr, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let counter = if req.uri().path() == "/health" {
                            &counts.checks
                        } else {
                            &counts.requests
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        if req.headers().get("te").is_some_and(|v| v == "trailers") {
                            counts.te.fetch_add(1, Ordering::SeqCst);
                        }
                        async move {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let frames = vec![
                                Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                                    name.as_bytes(),
                                ))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body = StreamBody::new(futures_util::stream::iter(frames));
                            hyper::Response::builder()
                                .header("x-backend", name)
                                .body(body)
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn trailers_pass_and_parallel_streams_spread() {
    let (a, a_counts) = h2_backend("a").await;
    let (b, b_counts) = h2_backend("b").await;
    let proxy = Proxy::start(&with_admin(&format!(
        "{}[upstreams.app.health_check]\npath = \"/health\"\ninterval = \"100ms\"\n",
        config_with(
            &format!("\"{a}\", \"{b}\""),
            "h2 = true\nbalance = \"least_conn\""
        )
    )));
    // The HTTP/2 health checks pass (none fails, no backend leaves rotation), and are counted.
    let c = h2_client();
    let req = hyper::Request::post(format!("http://{}/pkg.Service/Call", proxy.addr()))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let resp = tokio::time::timeout(DEADLINE, c.request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body");
    let trailers = body.trailers().cloned().expect("trailers passed through");
    assert_eq!(trailers["grpc-status"], "0");
    let te = a_counts.te.load(Ordering::SeqCst) + b_counts.te.load(Ordering::SeqCst);
    assert_eq!(te, 1, "te: trailers reached the backend");

    // 60 requests in parallel on the client's one HTTP/2 connection: each balanced alone.
    let mut all = Vec::new();
    for _ in 0..60 {
        let c = c.clone();
        let addr = proxy.addr();
        all.push(tokio::spawn(async move {
            get(&c, addr, "/").await.backend().to_string()
        }));
    }
    let mut seen = std::collections::HashMap::new();
    for t in all {
        *seen.entry(t.await.expect("request")).or_insert(0) += 1;
    }
    assert_eq!(seen.values().sum::<i32>(), 60);
    assert!(
        seen.get("a").copied().unwrap_or(0) >= 10 && seen.get("b").copied().unwrap_or(0) >= 10,
        "{seen:?}"
    );
    let requests =
        a_counts.requests.load(Ordering::SeqCst) + b_counts.requests.load(Ordering::SeqCst);
    assert_eq!(requests, 61);
    wait_for("HTTP/2 health checks on both backends", || {
        a_counts.checks.load(Ordering::SeqCst) >= 3 && b_counts.checks.load(Ordering::SeqCst) >= 3
    })
    .await;
    for backend in [a, b] {
        let passed = backend_series(
            "rproxy_health_checks_total",
            "app",
            backend,
            ",result=\"pass\"",
        );
        proxy.wait_for_metric(&passed, |n| n >= 3.0).await;
    }
    let m = proxy.scrape().await;
    for backend in [a, b] {
        for (name, extra) in [
            ("rproxy_health_checks_total", ",result=\"fail\""),
            ("rproxy_backend_state_changes_total", ",to=\"down\""),
        ] {
            let series = backend_series(name, "app", backend, extra);
            assert_eq!(
                metric(&m, &series),
                Some(0.0),
                "HTTP/2 health checks pass: {m}"
            );
        }
    }
}
