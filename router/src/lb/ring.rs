//! Ketama-style consistent-hash ring.

use crate::hash::hash_with_index;

/// Ring points per unit of endpoint weight (ketama's 160 per server).
pub(crate) const VNODES_PER_WEIGHT: u64 = 160;
/// The most points a ring holds; larger total weights get fewer points per weight unit.
pub(crate) const MAX_RING_POINTS: u64 = 1 << 20;
const RING_SEED: u64 = 0x7269_6e67_6861_7368; // "ringhash"

#[derive(Debug)]
pub(crate) struct Ring {
    /// Sorted point hashes.
    points: Box<[u64]>,
    /// `owners[i]` is the endpoint at `points[i]`.
    owners: Box<[u32]>,
    /// `lut[b]` = first point whose top bits are >= b (narrows the binary search).
    lut: Box<[u32]>,
    shift: u32,
}

impl Ring {
    /// Each endpoint gets `weight * 160` points hashed from its *address* and replica
    /// number, so the ring is the same whatever the endpoint's position in the list and
    /// an endpoint leaving moves only the keys it owned.
    pub(crate) fn new(addresses: &[impl AsRef<str>], weights: &[u32]) -> Self {
        let total_weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let per_weight = if total_weight.saturating_mul(VNODES_PER_WEIGHT) <= MAX_RING_POINTS {
            VNODES_PER_WEIGHT as f64
        } else {
            MAX_RING_POINTS as f64 / total_weight.max(1) as f64
        };
        let mut entries: Vec<(u64, u32)> = Vec::new();
        for (i, (addr, &w)) in addresses.iter().zip(weights).enumerate() {
            let count = ((f64::from(w) * per_weight).round() as u64).max(1);
            for j in 0..count {
                entries.push((
                    hash_with_index(RING_SEED, addr.as_ref().as_bytes(), j),
                    i as u32,
                ));
            }
        }
        entries.sort_unstable();
        let points: Box<[u64]> = entries.iter().map(|e| e.0).collect();
        let owners: Box<[u32]> = entries.iter().map(|e| e.1).collect();
        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, 16);
        let shift = 64 - bits;
        let lut = (0..=(1u64 << bits))
            .map(|b| points.partition_point(|&p| (p >> shift) < b) as u32)
            .collect();
        Ring {
            points,
            owners,
            lut,
            shift,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// The position of the first point at or after `h` (wrapping to 0).
    #[inline]
    pub(crate) fn position(&self, h: u64) -> usize {
        let b = (h >> self.shift) as usize;
        let lo = self.lut.get(b).map_or(0, |&x| x as usize);
        let hi = self
            .lut
            .get(b + 1)
            .map_or(self.points.len(), |&x| x as usize);
        let pos = self
            .points
            .get(lo..hi)
            .map_or(hi, |s| lo + s.partition_point(|&p| p < h));
        if pos >= self.points.len() {
            0
        } else {
            pos
        }
    }

    /// The endpoint owning the point at `pos` (taken modulo the ring size).
    #[inline]
    pub(crate) fn owner(&self, pos: usize) -> Option<usize> {
        let len = self.owners.len();
        if len == 0 {
            return None;
        }
        self.owners.get(pos % len).map(|&o| o as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_agrees_with_a_plain_binary_search() {
        let ring = Ring::new(&["a:1", "b:2", "c:3"], &[1, 2, 3]);
        assert_eq!(ring.len(), 6 * 160);
        for i in 0..10_000u64 {
            let h = crate::hash::mix64(i);
            let want = ring.points.partition_point(|&p| p < h) % ring.points.len();
            assert_eq!(ring.position(h), want);
        }
        assert_eq!(
            ring.position(u64::MAX),
            ring.points.partition_point(|&p| p < u64::MAX) % ring.len()
        );
        assert_eq!(ring.position(0), 0);
    }
}
