//! An ASCII test for the short strings frames carry (names, keys, values).

/// Whether every byte of `bytes` is ASCII, a word at a time. Frame strings are mostly a
/// few dozen bytes, where the standard library's check costs more in set-up and tests
/// the bytes below a word one by one: here the tail is one word that overlaps the last
/// whole one, so no byte is tested alone unless the string is shorter than four bytes.
/// Codecs use it to take a fast path for plain names (an ASCII string is UTF-8).
#[inline]
pub fn is_ascii(bytes: &[u8]) -> bool {
    fn word8(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        u64::from_ne_bytes(w)
    }
    fn word4(b: &[u8]) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[..4]);
        u32::from_ne_bytes(w)
    }
    let n = bytes.len();
    if n >= 8 {
        let mut wide = word8(&bytes[n - 8..]);
        for c in bytes.chunks_exact(8) {
            wide |= word8(c);
        }
        wide & 0x8080_8080_8080_8080 == 0
    } else if n >= 4 {
        (word4(bytes) | word4(&bytes[n - 4..])) & 0x8080_8080 == 0
    } else {
        bytes.iter().fold(0u8, |a, &b| a | b) < 0x80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_byte_is_seen_anywhere() {
        for len in 0..=40 {
            let mut s = vec![b'a'; len];
            assert!(is_ascii(&s));
            for i in 0..len {
                s[i] = 0x80;
                assert!(!is_ascii(&s), "len {len}, high byte at {i}");
                s[i] = 0xc3;
                assert!(!is_ascii(&s), "len {len}, lead byte at {i}");
                s[i] = b'a';
            }
        }
    }
}
