//! Weighted random choice over a fixed list in O(1) per draw (Vose's alias method, in
//! exact integer arithmetic), allocation-free.

use rand::Rng;

#[derive(Debug)]
pub(crate) struct WeightedSampler {
    /// Column `j` keeps itself when a draw in `0..total` is below `keep[j]`, else
    /// yields `alias[j]`. Every column holds exactly `total` units of weight.
    keep: Box<[u64]>,
    alias: Box<[u32]>,
    total: u64,
    /// All weights equal: a uniform index is enough.
    uniform: bool,
}

impl WeightedSampler {
    /// Builds the alias table. Weights are scaled by `n` so that each of the `n`
    /// columns holds exactly `total` units: draws are exactly proportional to weights.
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let uniform = weights.windows(2).all(|p| p[0] == p[1]);
        let mut keep = vec![total; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        if !uniform && total > 0 {
            let target = u128::from(total);
            let mut mass: Vec<u128> = weights.iter().map(|&w| u128::from(w) * n as u128).collect();
            let mut small: Vec<usize> = (0..n).filter(|&i| mass[i] < target).collect();
            let mut large: Vec<usize> = (0..n).filter(|&i| mass[i] >= target).collect();
            while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
                small.pop();
                keep[s] = mass[s] as u64; // < total, fits
                alias[s] = l as u32;
                mass[l] = mass[l] + mass[s] - target;
                if mass[l] < target {
                    large.pop();
                    small.push(l);
                }
            }
            // Whatever is left holds exactly `total` (integer arithmetic: no drift).
            for i in small.into_iter().chain(large) {
                keep[i] = total;
            }
        }
        WeightedSampler {
            keep: keep.into_boxed_slice(),
            alias: alias.into_boxed_slice(),
            total,
            uniform,
        }
    }

    /// A random index in proportion to the weights. The list must not be empty.
    #[inline]
    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let n = self.keep.len();
        let j = rng.random_range(0..n);
        if self.uniform || self.total == 0 {
            return j;
        }
        let keep = self.keep.get(j).copied().unwrap_or(self.total);
        if rng.random_range(0..self.total) < keep {
            j
        } else {
            self.alias.get(j).map_or(j, |&a| a as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    /// The exact probability of each index implied by the table.
    fn implied(s: &WeightedSampler) -> Vec<f64> {
        let n = s.keep.len() as f64;
        let mut p = vec![0.0; s.keep.len()];
        for j in 0..s.keep.len() {
            let own = s.keep[j] as f64 / s.total as f64;
            p[j] += own / n;
            p[s.alias[j] as usize] += (1.0 - own) / n;
        }
        p
    }

    #[test]
    fn table_is_exactly_proportional() {
        for weights in [
            &[1u32, 0, 3][..],
            &[5, 1, 1],
            &[u32::MAX, 1, 7, 7, 2],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        ] {
            let s = WeightedSampler::new(weights);
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            for (p, &w) in implied(&s).iter().zip(weights) {
                assert!((p - f64::from(w) / total).abs() < 1e-12, "{weights:?}");
            }
        }
    }

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
