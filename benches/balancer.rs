//! Hot pure parts, measured alone: one pick per policy (round-robin with and without
//! ineligible peers, ip_hash, hash, consistent hash) at 2, 16 and 256 backends, a route lookup
//! among 1 and 500 hosts, and parsing the full example configuration.
//!
//!     cargo bench --bench balancer

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rproxy::balancer::{
    Balancer, ConsistentHash, IpHash, KeyHash, LeastConn, Loads, PickContext, RandomTwo, RoundRobin,
};

fn round_robin(c: &mut Criterion) {
    let ctx = PickContext {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        key: b"",
    };
    let mut group = c.benchmark_group("load_pick");
    for n in [2usize, 16, 256] {
        let rr = RoundRobin::new((0..n).map(|i| 1 + (i % 5) as u32));
        group.bench_with_input(BenchmarkId::new("all_eligible", n), &n, |b, _| {
            b.iter(|| black_box(rr.pick(&ctx, &|_| true)));
        });
        group.bench_with_input(BenchmarkId::new("every_third_down", n), &n, |b, _| {
            b.iter(|| black_box(rr.pick(&ctx, &|i| i % 3 != 0)));
        });
        let loads = || -> Loads {
            (0..n)
                .map(|i| Arc::new(AtomicU64::new((i % 4) as u64)))
                .collect()
        };
        let weights = || (0..n).map(|i| 1 + (i % 5) as u32).collect::<Vec<_>>();
        let lc = LeastConn::new(weights(), loads());
        group.bench_with_input(BenchmarkId::new("least_conn", n), &n, |b, _| {
            b.iter(|| black_box(lc.pick(&ctx, &|_| true)));
        });
        let r2 = RandomTwo::new(weights(), loads());
        group.bench_with_input(BenchmarkId::new("random_two", n), &n, |b, _| {
            b.iter(|| black_box(r2.pick(&ctx, &|_| true)));
        });
    }
    group.finish();
}

fn config_parse(c: &mut Criterion) {
    let text = include_str!("../config/upstream.toml");
    c.bench_function("config_parse_example", |b| {
        b.iter(|| {
            black_box(rproxy::config::parse(
                Path::new("upstream.toml"),
                black_box(text),
            ))
        });
    });
}

fn hashing(c: &mut Criterion) {
    let ctx = PickContext {
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        key: b"/items/12345?session=abcdef",
    };
    let mut group = c.benchmark_group("hash_pick");
    for n in [2usize, 16, 256] {
        let weights = || (0..n).map(|i| 1 + (i % 5) as u32);
        let names: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:3000", i / 250, i % 250))
            .collect();
        let ip = IpHash::new(weights());
        let plain = KeyHash::new(weights());
        let ring = ConsistentHash::new(names.iter().map(String::as_str).zip(weights()));
        group.bench_with_input(BenchmarkId::new("ip_hash", n), &n, |b, _| {
            b.iter(|| black_box(ip.pick(&ctx, &|_| true)));
        });
        group.bench_with_input(BenchmarkId::new("hash", n), &n, |b, _| {
            b.iter(|| black_box(plain.pick(&ctx, &|_| true)));
        });
        group.bench_with_input(BenchmarkId::new("consistent_hash", n), &n, |b, _| {
            b.iter(|| black_box(ring.pick(&ctx, &|_| true)));
        });
    }
    group.finish();
}

/// Routing with hundreds of host routes, each with a few path prefixes: a request's lookup
/// should cost about the same as with one route.
fn routing(c: &mut Criterion) {
    use rproxy::config::RouteConfig;
    use rproxy::router::RouteTable;
    let mut group = c.benchmark_group("route_lookup");
    for hosts in [1usize, 500] {
        let routes = (0..hosts).flat_map(|i| {
            ["/", "/api", "/api/v2", "/static/"].map(move |prefix| {
                (
                    RouteConfig {
                        host: Some(format!("site{i}.example.com")),
                        path_prefix: prefix.to_string(),
                        upstream: String::new(),
                        strip_prefix: false,
                        rate_limits: None,
                        headers: Default::default(),
                    },
                    i,
                )
            })
        });
        let table = RouteTable::new(routes, None);
        let host = format!("Site{}.example.com:443", hosts - 1);
        group.bench_with_input(BenchmarkId::from_parameter(hosts), &table, |b, table| {
            b.iter(|| std::hint::black_box(table.lookup(Some(&host), "/api/v2/users/7")));
        });
    }
    group.finish();
}

/// What every proxied request's head goes through: hop-by-hop headers out, forwarding headers
/// in (an untrusted client, the common case), on a typical browser-like head.
fn header_rewriting(c: &mut Criterion) {
    use http::{HeaderMap, HeaderValue, header};
    let head: HeaderMap = [
        (header::HOST, "app.example"),
        (header::USER_AGENT, "Mozilla/5.0 (X11; Linux x86_64)"),
        (header::ACCEPT, "text/html,application/xhtml+xml"),
        (header::ACCEPT_ENCODING, "gzip, br"),
        (header::COOKIE, "session=0123456789abcdef"),
        (header::CONNECTION, "keep-alive"),
    ]
    .into_iter()
    .map(|(name, value)| (name, HeaderValue::from_static(value)))
    .collect();
    let peer = "192.0.2.7:40000".parse().expect("address");
    c.bench_function("headers/rewrite_request_head", |b| {
        b.iter(|| {
            let mut h = head.clone();
            let present = rproxy::upstream::Present::of(&h);
            rproxy::upstream::remove_hop_by_hop(&mut h, present);
            black_box(rproxy::upstream::set_forwarding(
                &mut h,
                present,
                peer,
                &[],
                "http",
                rproxy::config::ForwardedHeaders::ALL,
            ));
            h
        });
    });
}

criterion_group!(
    benches,
    round_robin,
    hashing,
    config_parse,
    routing,
    header_rewriting
);
criterion_main!(benches);
