//! Balancer micro-benchmarks: the cost of one `pick` for every algorithm over 10 and 1000
//! backends (`cargo bench --bench balance`; `bench/run` runs it and tabulates ns per pick).
//!
//! The backends are built the way `src/balance/tests.rs` builds them: in memory, all usable,
//! with a spread of in-flight counts and weights so that the load-aware algorithms compare
//! real numbers, and consistent_hash looks up a different key on every pick.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use autolb::balance::{Balancer, PickContext};
use autolb::config::Algorithm;
use autolb::runtime::{Backend, BackendStats};
use autolb::upstream::ConnPool;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const ALGORITHMS: [(&str, Algorithm); 7] = [
    ("round_robin", Algorithm::RoundRobin),
    ("weighted_round_robin", Algorithm::WeightedRoundRobin),
    ("least_conn", Algorithm::LeastConn),
    ("p2c", Algorithm::P2c),
    ("peak_ewma", Algorithm::PeakEwma),
    ("consistent_hash", Algorithm::ConsistentHash),
    ("random", Algorithm::Random),
];

const SIZES: [usize; 2] = [10, 1000];

fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let address = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1);
            let addr: SocketAddr = address.parse().expect("address");
            let stats = Arc::new(BackendStats::default());
            // A little load everywhere, different per backend.
            stats.active.store((i * 7 % 13) as u64, Ordering::Relaxed);
            Arc::new(Backend {
                address,
                addr,
                weight: (i % 4 + 1) as u32,
                config_weight: (i % 4 + 1) as u32,
                disabled: false,
                mode: Default::default(),
                slow_start: None,
                stats,
                conns: Arc::new(ConnPool::new(addr, 1)),
            })
        })
        .collect()
}

/// Hash keys as `affinity` would produce them: spread over u64.
fn keys() -> Vec<u64> {
    (0..4096u64)
        .map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
        .collect()
}

fn pick(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("pick");
    group.throughput(Throughput::Elements(1));
    for (name, algorithm) in ALGORITHMS {
        for n in SIZES {
            let bs = backends(n);
            let balancer = Balancer::new(algorithm, &bs);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                let mut k = 0usize;
                b.iter(|| {
                    k = (k + 1) & (keys.len() - 1);
                    let ctx = PickContext {
                        hash: Some(keys[k]),
                        ..PickContext::default()
                    };
                    black_box(balancer.pick(black_box(&bs), &ctx))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
