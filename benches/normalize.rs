//! The cost of path and Host normalization per request (`cargo bench --bench normalize`): a
//! whole request through `proxy::normalize::apply` when it is already normal (the common
//! case: a scan, no allocation) and when its path must be rewritten, and the path and Host
//! functions alone.

use std::hint::black_box;

use autolb::proxy::normalize;
use autolb::uri::{self, Policy};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const NORMAL: &str = "/api/v1/users/12345/orders?page=2&sort=desc";
const REWRITE: &str = "/api/v1/../v1/%75sers//12345/./orders?page=2&sort=desc";

fn request(target: &str) -> http::Request<()> {
    http::Request::get(target)
        .header("host", "shop.example.com:8080")
        .header("user-agent", "bench")
        .body(())
        .expect("request")
}

fn bench(c: &mut Criterion) {
    let policy = Policy::default();
    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements(1));
    group.bench_function("request_already_normal", |b| {
        let mut req = request(NORMAL);
        b.iter(|| black_box(normalize::apply(black_box(&mut req), &policy)))
    });
    group.bench_function("request_rewritten", |b| {
        b.iter_batched(
            || request(REWRITE),
            |mut req| black_box(normalize::apply(&mut req, &policy).map(|_| req)),
            criterion::BatchSize::SmallInput,
        )
    });
    let path = NORMAL.split('?').next().unwrap_or(NORMAL);
    group.bench_function("path_already_normal", |b| {
        b.iter(|| black_box(uri::path::normalize(black_box(path), &policy)))
    });
    group.bench_function("host_already_normal", |b| {
        b.iter(|| black_box(uri::host::authority(black_box(b"shop.example.com:8080"))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
