//! Smooth weighted round robin, precomputed so picks are one atomic increment.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest schedule kept; larger total weights (after dividing by their gcd) are
/// scaled down proportionally, each endpoint keeping at least one slot.
pub(crate) const MAX_SCHEDULE: u64 = 1 << 17;
/// Above this many steps (schedule length × endpoints) the exact nginx construction is
/// replaced by an earliest-deadline-first one (also smooth, O(len log n)).
const MAX_NGINX_WORK: u64 = 1 << 27;

#[derive(Debug)]
pub(crate) struct Schedule {
    pub(crate) order: Box<[u32]>,
    cursor: AtomicUsize,
}

impl Schedule {
    pub(crate) fn new(weights: &[u32]) -> Self {
        Schedule {
            order: build(weights).into_boxed_slice(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in schedule order (lock-free; shared by all threads).
    #[inline]
    pub(crate) fn next(&self) -> Option<usize> {
        let len = self.order.len();
        if len == 0 {
            return None;
        }
        let k = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        self.order.get(k).map(|&i| i as usize)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One period of the schedule.
fn build(weights: &[u32]) -> Vec<u32> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x) / g).collect();
    let mut total: u64 = w.iter().sum();
    if w.iter().all(|&x| x == w[0]) {
        // Equal weights: nginx gives plain index order.
        return (0..n as u32).collect();
    }
    if total > MAX_SCHEDULE {
        for x in w.iter_mut() {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
        total = w.iter().sum();
    }
    if total.saturating_mul(n as u64) <= MAX_NGINX_WORK {
        nginx(&w, total)
    } else {
        edf(&w, total)
    }
}

/// nginx's smooth weighted round robin: every step each endpoint's current weight
/// grows by its weight, the largest (first on ties) is chosen and loses the total.
fn nginx(w: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, c) in current.iter_mut().enumerate() {
            *c += w[i] as i64;
        }
        for i in 1..w.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

/// Earliest deadline first: endpoint i's k-th slot is due at (k + 1/2) / w_i.
fn edf(w: &[u64], total: u64) -> Vec<u32> {
    // Deadlines compared exactly as fractions via a common scale: (2k+1) * L / (2 w_i)
    // would need an lcm; instead compare (2k+1) / w_i by cross-multiplying in u128.
    #[derive(PartialEq, Eq)]
    struct Due {
        num: u64,
        den: u64,
        idx: u32,
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (u128::from(self.num) * u128::from(o.den))
                .cmp(&(u128::from(o.num) * u128::from(self.den)))
                .then(self.idx.cmp(&o.idx))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = w
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 0)
        .map(|(i, &x)| {
            Reverse(Due {
                num: 1,
                den: 2 * x,
                idx: i as u32,
            })
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while (order.len() as u64) < total {
        let Some(Reverse(mut d)) = heap.pop() else {
            break;
        };
        order.push(d.idx);
        d.num += 2;
        heap.push(Reverse(d));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_documented_sequence_for_5_1_1() {
        // nginx's smooth weighted round robin: {a:5, b:1, c:1} -> a a b a c a a.
        assert_eq!(build(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn gcd_is_divided_out_and_equal_weights_rotate() {
        assert_eq!(build(&[50, 10, 10]), build(&[5, 1, 1]));
        assert_eq!(build(&[3, 3, 3]), vec![0, 1, 2]);
    }

    #[test]
    fn huge_weights_are_scaled_and_keep_proportions() {
        let order = build(&[u32::MAX, u32::MAX / 2 + 1, 1]);
        let count = |i: u32| order.iter().filter(|&&x| x == i).count() as f64;
        assert!(order.len() as u64 <= MAX_SCHEDULE + 3);
        assert!((count(0) / count(1) - 2.0).abs() < 0.01);
        assert!(count(2) >= 1.0);
    }

    #[test]
    fn edf_is_proportional_and_spread() {
        let order = edf(&[3, 1], 8);
        assert_eq!(order.iter().filter(|&&x| x == 1).count(), 2);
        // Never two of endpoint 1 back to back.
        assert!(order.windows(2).all(|p| p != [1, 1]));
    }
}
