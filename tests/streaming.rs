//! Bodies stream through rproxy in both directions with back-pressure: large uploads and
//! downloads pass while rproxy's resident memory stays small.
//!
//! The 1 GiB run is ignored by default (it takes a while in a debug build); run it with
//! `cargo test --release --test streaming -- --ignored`.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use common::*;

const RSS_LIMIT_KIB: u64 = 64 * 1024;

async fn download(proxy: &Proxy, bytes: u64) {
    let resp = client()
        .get(
            format!("http://{}/download/{bytes}", proxy.addr())
                .parse()
                .expect("uri"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.expect("frame").data_ref() {
            assert!(d.iter().all(|b| *b == b'x'), "content intact");
            got += d.len() as u64;
        }
    }
    assert_eq!(got, bytes);
}

async fn upload(proxy: &Proxy, backend: &Backend, bytes: u64) {
    let stream = byte_stream(b'u', 256 * 1024, bytes);
    let c: Client<_, http_body_util::combinators::BoxBody<Bytes, Infallible>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{}/upload", proxy.addr()))
        .header("content-length", bytes)
        .body(StreamBody::new(stream).boxed())
        .expect("request");
    let resp = c.request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-body-len"], bytes.to_string().as_str());
    assert_eq!(backend.last().body_len, bytes);
}

async fn both_ways(bytes: u64) {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    download(&proxy, bytes).await;
    upload(&proxy, &b, bytes).await;
    let peak = proxy.peak_rss_kib();
    eprintln!("{} MiB each way: rproxy peak RSS {} KiB", bytes >> 20, peak);
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB for {bytes} bytes each way"
    );
}

#[tokio::test]
async fn sixty_four_mib_each_way_in_bounded_memory() {
    both_ways(64 << 20).await;
}

#[tokio::test]
#[ignore = "slow: 1 GiB each way; run with cargo test --release --test streaming -- --ignored"]
async fn one_gib_each_way_in_bounded_memory() {
    both_ways(1 << 30).await;
}
