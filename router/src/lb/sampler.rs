//! Weighted random choice over a fixed list (O(log n) per draw, no allocation).

use rand::Rng;

#[derive(Debug)]
pub(crate) struct WeightedSampler {
    /// Running sums of the weights; `cumulative[i]` is the sum of weights `0..=i`.
    cumulative: Box<[u64]>,
    total: u64,
    /// All weights equal: a uniform index is enough.
    uniform: bool,
}

impl WeightedSampler {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        let uniform = weights.windows(2).all(|p| p[0] == p[1]);
        WeightedSampler {
            cumulative,
            total,
            uniform,
        }
    }

    /// A random index in proportion to the weights. The list must not be empty.
    #[inline]
    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let n = self.cumulative.len();
        if self.uniform {
            return rng.random_range(0..n);
        }
        let point = rng.random_range(0..self.total);
        self.cumulative
            .partition_point(|&c| c <= point)
            .min(n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn draws_follow_weights() {
        let s = WeightedSampler::new(&[1, 0, 3]);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[s.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0, "weight 0 never drawn");
        assert!((9_400..10_600).contains(&counts[0]), "{counts:?}");
    }
}
