//! Route lookup and snapshot building at scale (`cargo bench --bench routes`): the cost of
//! choosing a pool with 1, 100 and 10,000 host+path routes for a request that matches the
//! first route, the last one, or none; and the cost of loading and compiling a config of
//! 10,000 routes and 5,000 backends (what a reload pays before its swap).

use std::hint::black_box;
use std::path::Path;

use autolb::runtime::{Inputs, Snapshot};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// A config with `routes` routes `{ host: tI.example, path_prefix: /api/I }` over `pools`
/// pools of `per_pool` backends, and a listener whose fallback pool is `p0`.
fn config(routes: usize, pools: usize, per_pool: usize) -> String {
    let mut y = String::from(
        "listeners:\n  - { name: web, listen: \"127.0.0.1:0\", protocol: http, pool: p0 }\nroutes:\n",
    );
    for i in 0..routes {
        y += &format!(
            "  - {{ host: t{i}.example, path_prefix: /api/{i}, pool: p{} }}\n",
            i % pools
        );
    }
    y += "pools:\n";
    for p in 0..pools {
        y += &format!("  p{p}:\n    backends:\n");
        for b in 0..per_pool {
            let n = p * per_pool + b;
            y += &format!(
                "      - {{ address: \"10.{}.{}.{}:8080\" }}\n",
                n / 65536,
                n / 256 % 256,
                n % 256
            );
        }
    }
    y
}

fn snapshot(routes: usize) -> Snapshot {
    let text = config(routes, 10, 1);
    let cfg = autolb::config::load_str(&text, Path::new("bench.yaml")).expect("config");
    Snapshot::build(&Inputs::new(cfg), None, 1)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [1usize, 100, 10_000] {
        let snap = snapshot(n);
        let last = n - 1;
        let cases = [
            ("first", "t0.example".to_owned(), "/api/0/users".to_owned()),
            (
                "last",
                format!("t{last}.example"),
                format!("/api/{last}/users"),
            ),
            (
                "none",
                "other.example".to_owned(),
                "/api/0/users".to_owned(),
            ),
        ];
        for (case, host, path) in cases {
            group.bench_with_input(BenchmarkId::new(case, n), &n, |b, _| {
                b.iter(|| black_box(snap.select(0, black_box(&host), black_box(&path))))
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_at_scale");
    group.sample_size(10);
    let text = config(10_000, 200, 25);
    group.bench_function("load_and_compile_10000_routes_5000_backends", |b| {
        b.iter(|| {
            let cfg = autolb::config::load_str(&text, Path::new("bench.yaml")).expect("config");
            black_box(Snapshot::build(&Inputs::new(cfg), None, 1))
        })
    });
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
