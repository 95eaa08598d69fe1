//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as Envoy does.

use crate::hash::hash_bytes;

/// Lookup table size: a prime, much larger than any endpoint count we accept.
pub(crate) const MAGLEV_TABLE_SIZE: usize = 65_537;
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

#[derive(Debug)]
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// Builds the table: each endpoint walks its own permutation of the slots (offset
    /// and skip from its *address*), taking the next free one in turn; an endpoint of
    /// weight w takes a turn in w of every `max_weight` rounds, so slot counts are
    /// proportional to weights. `addresses` must be non-empty and shorter than the table.
    pub(crate) fn new(addresses: &[impl AsRef<str>], weights: &[u32]) -> Self {
        let m = MAGLEV_TABLE_SIZE as u64;
        let n = addresses.len().min(weights.len());
        let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
        if n == 0 {
            return Maglev {
                table: Box::new([]),
            };
        }
        struct Entry {
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            target: u64,
        }
        let mut entries: Vec<Entry> = addresses[..n]
            .iter()
            .zip(weights)
            .map(|(a, &w)| {
                let a = a.as_ref().as_bytes();
                Entry {
                    offset: hash_bytes(OFFSET_SEED, a) % m,
                    skip: hash_bytes(SKIP_SEED, a) % (m - 1) + 1,
                    next: 0,
                    weight: u64::from(w).max(1),
                    target: 0,
                }
            })
            .collect();
        let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1).max(1);
        let mut filled = 0usize;
        let mut round = 1u64;
        while filled < MAGLEV_TABLE_SIZE {
            for (i, e) in entries.iter_mut().enumerate() {
                if filled == MAGLEV_TABLE_SIZE {
                    break;
                }
                if round * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                loop {
                    let slot = ((e.offset + e.next * e.skip) % m) as usize;
                    e.next += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
            round += 1;
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// The endpoint for hash `h`.
    #[inline]
    pub(crate) fn lookup(&self, h: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        self.table.get((h % m) as usize).map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_counts_follow_weights() {
        let t = Maglev::new(&["a:1", "b:1", "c:1"], &[1, 2, 5]);
        let mut counts = [0usize; 3];
        for &i in t.table.iter() {
            counts[i as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), MAGLEV_TABLE_SIZE);
        let share = |i: usize| counts[i] as f64 / MAGLEV_TABLE_SIZE as f64;
        assert!((share(0) - 1.0 / 8.0).abs() < 0.002, "{counts:?}");
        assert!((share(1) - 2.0 / 8.0).abs() < 0.002, "{counts:?}");
        assert!((share(2) - 5.0 / 8.0).abs() < 0.002, "{counts:?}");
    }
}
