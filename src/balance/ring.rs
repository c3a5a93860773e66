//! Ketama consistent-hash ring with a fixed seed: every node and every restart maps a key to
//! the same backend, and removing one of N backends moves only its own keys (about 1/N).

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The fixed seed shared by every autolb node (also used by `affinity` for keys).
pub const HASH_SEED: u64 = 0x6175_746f_6c62_2121; // "autolb!!"

/// Virtual nodes per unit of weight.
const POINTS_PER_WEIGHT: u32 = 160;

#[derive(Debug, Default)]
pub struct Ring {
    /// (point, backend index), sorted by point.
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// `backends`: (stable name, weight) in pool order. Points depend on the name only, so
    /// a backend's points stay put when others come and go.
    pub fn new(backends: &[(&str, u32)]) -> Ring {
        let mut points = Vec::new();
        for (idx, (name, weight)) in backends.iter().enumerate() {
            for v in 0..weight.saturating_mul(POINTS_PER_WEIGHT) {
                let label = format!("{name}#{v}");
                points.push((xxh3_64_with_seed(label.as_bytes(), HASH_SEED), idx as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points: points.into(),
        }
    }

    /// The first backend clockwise from `hash` for which `usable` holds.
    pub fn lookup(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < hash);
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| usable(i))
    }
}

/// Hash arbitrary key bytes with the ring's fixed seed.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, HASH_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_one_of_four_moves_about_a_quarter() {
        let names = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let four = Ring::new(&names.map(|n| (n, 1)));
        let three = Ring::new(&names[..3].iter().map(|n| (*n, 1)).collect::<Vec<_>>());
        let keys = 20_000u64;
        let mut moved = 0;
        for k in 0..keys {
            let h = hash_bytes(&k.to_le_bytes());
            let a = four.lookup(h, |_| true).map(|i| names[i]);
            let b = three.lookup(h, |_| true).map(|i| names[i]);
            if a != b {
                moved += 1;
                // Only keys of the removed backend move.
                assert_eq!(a, Some(names[3]));
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.15..0.35).contains(&share), "{share}");
    }

    #[test]
    fn skipping_an_unusable_backend_equals_removing_it() {
        let names = ["a:1", "b:1", "c:1"];
        let ring = Ring::new(&names.map(|n| (n, 1)));
        let two = Ring::new(&[("a:1", 1), ("b:1", 1)]);
        for k in 0..2_000u64 {
            let h = hash_bytes(&k.to_le_bytes());
            assert_eq!(ring.lookup(h, |i| i != 2), two.lookup(h, |_| true));
        }
    }
}
