//! The name of a call as it was on the wire, kept for the reply.

use std::fmt;
use std::ops::{Deref, Range};

use bytes::Bytes;

use crate::MetaStr;

/// Names up to this many bytes are kept inline, without a reference to the frame (23:
/// the most that keeps a [`CallName`] as small as a [`MetaStr`], 32 bytes).
pub const INLINE_CALL_NAME: usize = 23;

/// A call's on-wire name (Thrift's `Service:method`), kept with every request in flight
/// so that a local reply can answer with it.
///
/// A name of up to [`INLINE_CALL_NAME`] bytes is copied inline: cloning and dropping it
/// touch no reference count. (A slice of the frame would cost an atomic increment and
/// decrement per copy, and a request's name is copied for every request in flight.) A
/// longer one is kept as a [`MetaStr`], a slice of the frame when built from one.
#[derive(Clone)]
pub struct CallName(Repr);

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; INLINE_CALL_NAME],
    },
    Shared(MetaStr),
}

impl CallName {
    /// The empty name; allocates nothing.
    pub const fn new() -> Self {
        CallName(Repr::Inline {
            len: 0,
            bytes: [0; INLINE_CALL_NAME],
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always UTF-8 that fit (see `inline`).
            Repr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Shared(s) => s,
        }
    }

    /// The name's bytes (UTF-8), without the check [`CallName::as_str`] makes: for
    /// comparing and scanning.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Shared(s) => s.as_bytes(),
        }
    }

    /// The name at `range` of `frame`: copied inline when it fits, else a slice of the
    /// frame (no copy). `None` when the range lies outside the frame or is not UTF-8.
    /// This is how a codec records a name it reads from a frame.
    pub fn from_frame(frame: &Bytes, range: Range<usize>) -> Option<Self> {
        let bytes = frame.get(range.clone())?;
        if bytes.len() <= INLINE_CALL_NAME {
            // Names are ASCII in practice: a word test first, the UTF-8 decode only
            // when it fails.
            if !crate::is_ascii(bytes) && std::str::from_utf8(bytes).is_err() {
                return None;
            }
            // A copy of fixed size (a few moves, no call) when the frame has the room:
            // the bytes past the name come from the same frame, and nothing reads
            // beyond `len`. At the frame's very end, the name alone.
            let Some(window) = frame.get(range.start..range.start + INLINE_CALL_NAME) else {
                return CallName::inline(bytes);
            };
            let mut inline = [0; INLINE_CALL_NAME];
            inline.copy_from_slice(window);
            return Some(CallName(Repr::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }));
        }
        MetaStr::try_from(frame.slice(range))
            .ok()
            .map(|s| CallName(Repr::Shared(s)))
    }

    /// `text` (UTF-8, checked by the caller) copied inline, when it fits.
    fn inline(text: &[u8]) -> Option<Self> {
        let mut bytes = [0; INLINE_CALL_NAME];
        bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(CallName(Repr::Inline {
            len: text.len() as u8,
            bytes,
        }))
    }
}

impl Default for CallName {
    fn default() -> Self {
        CallName::new()
    }
}

impl Deref for CallName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for CallName {
    /// Copied inline when short; a longer one is copied into a new [`MetaStr`].
    fn from(s: &str) -> Self {
        CallName::inline(s.as_bytes()).unwrap_or_else(|| CallName(Repr::Shared(MetaStr::from(s))))
    }
}

impl From<MetaStr> for CallName {
    /// Copied inline when short (the `MetaStr` is dropped); a longer one is kept.
    fn from(s: MetaStr) -> Self {
        CallName::inline(s.as_bytes()).unwrap_or(CallName(Repr::Shared(s)))
    }
}

impl PartialEq for CallName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CallName {}

impl PartialEq<str> for CallName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for CallName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for CallName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CallName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_inline_and_long_ones_share_their_string() {
        let short = CallName::from("Calc:add");
        assert!(matches!(short.0, Repr::Inline { .. }));
        assert_eq!(&*short, "Calc:add");
        let exact = "a".repeat(INLINE_CALL_NAME);
        assert!(matches!(
            CallName::from(exact.as_str()).0,
            Repr::Inline { .. }
        ));

        let frame = Bytes::from("x".repeat(INLINE_CALL_NAME + 1));
        let long = CallName::from(MetaStr::try_from(frame.clone()).unwrap());
        match &long.0 {
            Repr::Shared(s) => assert_eq!(s.as_bytes().as_ptr(), frame.as_ptr(), "no copy"),
            Repr::Inline { .. } => panic!("too long to be inline"),
        }
        assert_eq!(long.len(), INLINE_CALL_NAME + 1);
    }

    #[test]
    fn a_name_read_from_a_frame_is_inline_when_short_and_a_slice_when_long() {
        let frame = Bytes::from(format!("..Calc:add..{}", "x".repeat(INLINE_CALL_NAME + 1)));
        let short = CallName::from_frame(&frame, 2..10).unwrap();
        assert!(matches!(short.0, Repr::Inline { .. }));
        assert_eq!(short, "Calc:add");
        let long = CallName::from_frame(&frame, 12..frame.len()).unwrap();
        match &long.0 {
            Repr::Shared(s) => assert_eq!(s.as_bytes().as_ptr(), frame[12..].as_ptr(), "no copy"),
            Repr::Inline { .. } => panic!("too long to be inline"),
        }
        assert!(
            CallName::from_frame(&frame, 2..frame.len() + 1).is_none(),
            "outside"
        );
        let bad = Bytes::from_static(b"\xff\xfe");
        assert!(CallName::from_frame(&bad, 0..2).is_none(), "not UTF-8");
        // Not ASCII but UTF-8: decoded, kept inline, the same bytes.
        let wide = Bytes::from("Calc:加法");
        let name = CallName::from_frame(&wide, 0..wide.len()).unwrap();
        assert_eq!(name.as_str(), "Calc:加法");
        assert_eq!(name.as_bytes(), wide.as_ref());
        assert_eq!(name, CallName::from("Calc:加法"));
    }

    #[test]
    fn every_short_length_reads_back_from_anywhere_in_a_frame() {
        // Names at the frame's start, middle and very end (where no fixed-size window
        // fits), of every inline length, compare equal to the same text.
        for len in 0..=INLINE_CALL_NAME {
            let name: String = (0..len).map(|i| char::from(b'a' + i as u8)).collect();
            for (before, after) in [(0, 30), (5, 30), (5, 0), (0, 0), (7, 3)] {
                let frame = Bytes::from(format!(
                    "{}{name}{}",
                    "<".repeat(before),
                    "\u{e9}".repeat(after)
                ));
                let got = CallName::from_frame(&frame, before..before + len).unwrap();
                assert_eq!(got, name.as_str(), "len {len} at {before}, {after} after");
                assert_eq!(got, CallName::from(name.as_str()));
            }
        }
    }

    #[test]
    fn multibyte_names_read_back_whole() {
        for name in [
            "",
            "名前:取得",
            "Svc:méthode",
            &"é".repeat(INLINE_CALL_NAME / 2),
        ] {
            let n = CallName::from(name);
            assert_eq!(n.as_str(), name);
            assert_eq!(CallName::from(MetaStr::from(name)), n);
        }
    }

    #[test]
    fn a_name_takes_no_more_room_than_a_shared_string() {
        assert_eq!(
            std::mem::size_of::<CallName>(),
            std::mem::size_of::<MetaStr>()
        );
    }

    #[test]
    fn a_clone_compares_equal_and_the_default_is_empty() {
        let n = CallName::from("Store:put");
        assert_eq!(n.clone(), n);
        assert_eq!(n, "Store:put");
        assert!(CallName::default().is_empty());
        assert_eq!(format!("{n} {n:?}"), "Store:put \"Store:put\"");
    }
}
