//! A small, stable 64-bit hash for request keys, ring points and maglev permutations.
//!
//! Stable means: the same bytes give the same hash on every platform, in every process
//! and across restarts, so sticky routing and consistent hashing agree between proxy
//! instances. (The route index uses `ahash` with random keys instead: it only needs to
//! be fast and collision-resistant within one process.)

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// MurmurHash3's 64-bit finalizer: a bijective avalanche mix.
#[inline]
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    h
}

/// Folds `bytes` into the running state `h` (length-delimited, so `"ab","c"` and
/// `"a","bc"` differ when chained).
#[inline]
pub(crate) fn absorb(mut h: u64, bytes: &[u8]) -> u64 {
    h = (h ^ (bytes.len() as u64).wrapping_mul(K2)).wrapping_mul(K1);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        h = (h ^ mix64(w ^ K2)).rotate_left(29).wrapping_mul(K1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        let w = u64::from_le_bytes(w);
        h = (h ^ mix64(w ^ K1)).rotate_left(29).wrapping_mul(K2);
    }
    h
}

/// The stable hash of `bytes` under `seed`.
#[inline]
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    mix64(absorb(seed ^ K1, bytes))
}

/// The stable hash of `bytes` followed by a number (ring points: address + replica).
#[inline]
pub(crate) fn hash_with_index(seed: u64, bytes: &[u8], index: u64) -> u64 {
    let h = absorb(seed ^ K1, bytes);
    mix64((h ^ mix64(index.wrapping_add(K2))).wrapping_mul(K1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_hash_and_different_inputs_differ() {
        assert_eq!(hash_bytes(0, b"user-1"), hash_bytes(0, b"user-1"));
        assert_ne!(hash_bytes(0, b"user-1"), hash_bytes(0, b"user-2"));
        assert_ne!(hash_bytes(0, b"user-1"), hash_bytes(1, b"user-1"));
        assert_ne!(hash_bytes(0, b""), hash_bytes(0, b"\0"));
        assert_ne!(hash_with_index(0, b"a", 1), hash_with_index(0, b"a", 2));
    }

    #[test]
    fn chaining_is_length_delimited() {
        let a = absorb(absorb(0, b"ab"), b"c");
        let b = absorb(absorb(0, b"a"), b"bc");
        assert_ne!(mix64(a), mix64(b));
    }

    #[test]
    fn top_bits_are_balanced() {
        // Over many sequential keys, each of 16 top-bit buckets gets ~1/16.
        let mut counts = [0u32; 16];
        for i in 0..64_000u32 {
            counts[(hash_bytes(7, format!("key-{i}").as_bytes()) >> 60) as usize] += 1;
        }
        for c in counts {
            assert!((3_600..4_400).contains(&c), "bucket count {c}");
        }
    }
}
