//! Unit tests of every algorithm over in-memory backends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;

pub(super) fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let addr = format!("127.0.0.1:{}", 3000 + i).parse().expect("addr");
            Arc::new(Backend {
                slow_start: Some(Duration::from_secs(10)),
                ..Backend::for_tests(addr, w)
            })
        })
        .collect()
}

fn counts(b: &Balancer, bs: &[Arc<Backend>], n: usize, ctx: PickContext) -> Vec<usize> {
    let mut c = vec![0; bs.len()];
    for _ in 0..n {
        let i = b.pick(bs, &ctx).expect("a backend");
        c[i] += 1;
        // A request starts and ends there (what least_conn's tree hears of).
        bs[i].stats.begin();
        bs[i].stats.end();
    }
    c
}

#[test]
fn round_robin_cycles_and_skips_down_and_excluded() {
    let bs = backends(&[1, 1, 1]);
    let b = Balancer::new(Algorithm::RoundRobin, &bs);
    assert_eq!(
        counts(&b, &bs, 300, PickContext::default()),
        vec![100, 100, 100]
    );
    bs[1].stats.up.store(false, Ordering::Relaxed);
    assert_eq!(counts(&b, &bs, 300, PickContext::default())[1], 0);
    let ctx = PickContext {
        exclude: 0b001,
        ..Default::default()
    };
    assert_eq!(counts(&b, &bs, 10, ctx), vec![0, 0, 10]);
    bs[2].stats.up.store(false, Ordering::Relaxed);
    assert_eq!(b.pick(&bs, &ctx), None);
}

#[test]
fn weighted_round_robin_is_exact_and_smooth() {
    let bs = backends(&[3, 1]);
    let b = Balancer::new(Algorithm::WeightedRoundRobin, &bs);
    assert_eq!(
        counts(&b, &bs, 4000, PickContext::default()),
        vec![3000, 1000]
    );
    // Smooth: never more than three in a row of the heavy backend.
    let seq: Vec<usize> = (0..40)
        .map(|_| b.pick(&bs, &PickContext::default()).expect("pick"))
        .collect();
    assert!(seq.windows(4).all(|w| w.contains(&1)), "{seq:?}");
}

#[test]
fn least_conn_prefers_fewest_in_flight_per_weight() {
    let bs = backends(&[1, 1, 2]);
    let b = Balancer::new(Algorithm::LeastConn, &bs);
    bs[0].stats.active.store(5, Ordering::Relaxed);
    bs[0].stats.load_hook.notify();
    bs[1].stats.active.store(2, Ordering::Relaxed);
    bs[1].stats.load_hook.notify();
    bs[2].stats.active.store(4, Ordering::Relaxed); // (4+1)/2 = 2.5 < 3
    assert_eq!(b.pick(&bs, &PickContext::default()), Some(2));
    // Ties rotate instead of always hitting the first backend.
    let even = backends(&[1, 1, 1]);
    let b = Balancer::new(Algorithm::LeastConn, &even);
    assert_eq!(
        counts(&b, &even, 300, PickContext::default()),
        vec![100, 100, 100]
    );
}

#[test]
fn p2c_with_two_backends_always_takes_the_idle_one() {
    let bs = backends(&[1, 1]);
    let b = Balancer::new(Algorithm::P2c, &bs);
    bs[0].stats.active.store(10, Ordering::Relaxed);
    bs[0].stats.load_hook.notify();
    assert_eq!(counts(&b, &bs, 200, PickContext::default()), vec![0, 200]);
}

#[test]
fn p2c_spreads_over_many_backends() {
    let bs = backends(&[1; 8]);
    let b = Balancer::new(Algorithm::P2c, &bs);
    let c = counts(&b, &bs, 8000, PickContext::default());
    assert!(c.iter().all(|&n| n > 500), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_avoids_the_slow_backend() {
    let bs = backends(&[1, 1]);
    let b = Balancer::new(Algorithm::PeakEwma, &bs);
    let now = tokio::time::Instant::now();
    bs[0].stats.record_latency(Duration::from_millis(400), now);
    bs[1].stats.record_latency(Duration::from_millis(2), now);
    assert_eq!(counts(&b, &bs, 100, PickContext::default()), vec![0, 100]);
    // In-flight load counts too: a fast backend with many requests loses to a slow idle one.
    bs[1].stats.active.store(500, Ordering::Relaxed);
    bs[1].stats.load_hook.notify();
    assert_eq!(b.pick(&bs, &PickContext::default()), Some(0));
}

#[test]
fn consistent_hash_is_stable_and_falls_back_without_a_key() {
    let bs = backends(&[1, 1, 1, 1]);
    let b = Balancer::new(Algorithm::ConsistentHash, &bs);
    for k in 0..100u64 {
        let ctx = PickContext {
            hash: Some(ring::hash_bytes(&k.to_le_bytes())),
            ..Default::default()
        };
        let first = b.pick(&bs, &ctx);
        assert!((0..10).all(|_| b.pick(&bs, &ctx) == first));
    }
    let c = counts(&b, &bs, 400, PickContext::default());
    assert_eq!(c, vec![100; 4]);
}

#[test]
fn random_follows_weights() {
    let bs = backends(&[3, 1]);
    let b = Balancer::new(Algorithm::Random, &bs);
    let c = counts(&b, &bs, 20_000, PickContext::default());
    let share = c[0] as f64 / 20_000.0;
    // Expected 0.75, standard deviation about 0.003.
    assert!((0.73..0.77).contains(&share), "{share}");
}

#[test]
fn disabled_backends_are_never_picked() {
    let mut bs = backends(&[1, 1]);
    Arc::get_mut(&mut bs[0]).expect("unique").disabled = true;
    for &alg in Algorithm::ALL {
        let b = Balancer::new(alg, &bs);
        assert_eq!(
            counts(&b, &bs, 50, PickContext::default()),
            vec![0, 50],
            "{alg:?}"
        );
    }
}

#[test]
fn panic_mode_uses_unhealthy_backends_but_never_disabled_ones() {
    let mut bs = backends(&[1, 1, 1]);
    Arc::get_mut(&mut bs[2]).expect("unique").disabled = true;
    bs[0].stats.up.store(false, Ordering::Relaxed);
    let b = Balancer::new(Algorithm::RoundRobin, &bs);
    assert_eq!(
        counts(&b, &bs, 100, PickContext::default()),
        vec![0, 100, 0]
    );
    let panic = PickContext {
        panic: true,
        ..Default::default()
    };
    let c = counts(&b, &bs, 100, panic);
    assert!(c[0] > 0 && c[1] > 0 && c[2] == 0, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_the_share_of_a_recovered_backend() {
    // Weighted algorithms: the ramping backend's share grows from ~10% of its weight.
    for alg in [
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConn,
        Algorithm::P2c,
        Algorithm::Random,
    ] {
        let bs = backends(&[1, 1]);
        let b = Balancer::new(alg, &bs);
        bs[1].stats.start_ramp();
        let share = |bs: &[Arc<Backend>]| {
            let mut n = 0;
            for _ in 0..4000 {
                let i = b.pick(bs, &PickContext::default()).expect("pick");
                // Hold every pick of the ramping backend as in flight for load-based ones.
                if i == 1 {
                    n += 1;
                }
                bs[i].stats.begin();
            }
            for x in bs.iter() {
                x.stats.active.store(0, Ordering::Relaxed);
                x.stats.load_hook.notify();
            }
            n as f64 / 4000.0
        };
        let early = share(&bs);
        tokio::time::advance(Duration::from_secs(5)).await;
        let middle = share(&bs);
        tokio::time::advance(Duration::from_secs(6)).await;
        let done = share(&bs);
        assert!(
            bs[1].ramp_factor().is_none(),
            "{alg:?}: ramp over after the window"
        );
        assert!(early < 0.15, "{alg:?}: early share {early}");
        // f = 0.5: weighted round robin keeps half of its turns (share 0.25), the others
        // halve its weight (share 1/3).
        assert!(
            (0.2..0.42).contains(&middle),
            "{alg:?}: middle share {middle}"
        );
        assert!((0.45..0.55).contains(&done), "{alg:?}: final share {done}");
    }
}

#[test]
fn least_conn_and_p2c_count_websockets_as_load() {
    let bs = backends(&[1, 1]);
    bs[0].stats.websockets.store(3, Ordering::Relaxed);
    bs[0].stats.load_hook.notify();
    bs[1].stats.active.store(1, Ordering::Relaxed);
    bs[1].stats.load_hook.notify();
    for alg in [Algorithm::LeastConn, Algorithm::P2c] {
        let b = Balancer::new(alg, &bs);
        assert_eq!(
            counts(&b, &bs, 20, PickContext::default()),
            vec![0, 20],
            "{alg:?}"
        );
    }
}
