//! Smooth weighted round robin (nginx): the order of one full weight cycle, computed once.

/// One cycle of nginx's smooth weighted round robin: each step adds every weight to its
/// current value, picks the largest, and subtracts the total from it. Weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
pub fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total.max(0) as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_example_has_no_bursts() {
        let names: String = smooth_sequence(&[5, 1, 1])
            .iter()
            .map(|&i| (b'a' + i as u8) as char)
            .collect();
        assert_eq!(names, "aabacaa");
    }

    #[test]
    fn proportions_are_exact_per_cycle() {
        let seq = smooth_sequence(&[3, 1, 2]);
        assert_eq!(seq.len(), 6);
        for (i, w) in [3, 1, 2].iter().enumerate() {
            assert_eq!(seq.iter().filter(|&&x| x as usize == i).count(), *w);
        }
    }
}
