//! Hot pure parts, measured alone: one round-robin pick (with and without ineligible peers)
//! at 2, 16 and 256 backends, and parsing the full example configuration.
//!
//!     cargo bench --bench balancer

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rproxy::balancer::{Balancer, PickContext, RoundRobin};

fn round_robin(c: &mut Criterion) {
    let ctx = PickContext {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let mut group = c.benchmark_group("round_robin_pick");
    for n in [2usize, 16, 256] {
        let rr = RoundRobin::new((0..n).map(|i| 1 + (i % 5) as u32));
        group.bench_with_input(BenchmarkId::new("all_eligible", n), &n, |b, _| {
            b.iter(|| black_box(rr.pick(&ctx, &|_| true)));
        });
        group.bench_with_input(BenchmarkId::new("every_third_down", n), &n, |b, _| {
            b.iter(|| black_box(rr.pick(&ctx, &|i| i % 3 != 0)));
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

criterion_group!(benches, round_robin, config_parse);
criterion_main!(benches);
