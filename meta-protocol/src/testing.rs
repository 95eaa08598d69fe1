//! Checks for codec authors' tests (the `testing` feature).
//!
//! Each check drives a codec the way the runtime does (decode after every read until
//! `Ok(None)`, one codec per connection) and panics with a description of the first
//! difference, so it reads like an `assert!` in a test. Feed them golden frames, frames
//! built by a property test, or the input of a fuzz target:
//!
//! ```
//! # use meta_protocol::*;
//! # use bytes::{BufMut, BytesMut};
//! # struct Line;
//! # impl Codec for Line {
//! #     fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
//! #         let Some(end) = src.iter().position(|&b| b == b'\n') else { return Ok(None) };
//! #         let frame = src.split_to(end + 1).freeze();
//! #         Ok(Some(Message::new(MessageKind::Request, frame.len() as u64, frame)))
//! #     }
//! #     fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
//! #         dst.put_slice(msg.frame()); Ok(())
//! #     }
//! #     fn encode_local_reply(&mut self, _: &ReplyContext, _: &LocalReply<'_>, _: &mut BytesMut)
//! #         -> Result<(), EncodeError> { Ok(()) }
//! # }
//! use meta_protocol::testing::{check_decode_any_split, check_no_panic};
//!
//! let messages = check_decode_any_split(|| Line, b"one\ntwo\nthree\n");
//! assert_eq!(messages.len(), 3);
//! check_no_panic(|| Line, b"\xff\x00no newline");
//! ```

use bytes::BytesMut;

use crate::codec::Codec;
use crate::message::Message;

/// At most this many bytes of a stream are tried with every pair of split points (the
/// number of pairs grows with the square of the length); longer streams are tried with
/// every single split point and every chunk size.
pub const PAIR_SPLIT_LIMIT: usize = 128;

/// What two decodes of the same bytes must agree on: everything a codec sets.
fn describe(msg: &Message) -> String {
    format!(
        "kind {:?}, id {}, status {:?}, wire {:?}, name {:?}, layout {:?}, metadata {:?}, frame {:02x?}",
        msg.kind(),
        msg.request_id(),
        msg.status(),
        msg.wire(),
        &**msg.name(),
        msg.layout_words(),
        msg.metadata(),
        &msg.frame()[..],
    )
}

/// Feeds `chunks` to a fresh codec, decoding after each as the runtime does; returns the
/// messages and the bytes left over, or the decode error's text.
fn decode_chunks<C: Codec>(
    codec: &mut C,
    chunks: impl IntoIterator<Item = impl AsRef<[u8]>>,
) -> Result<(Vec<Message>, usize), String> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk.as_ref());
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    assert!(
                        buf.len() < before,
                        "decode returned a message without consuming any bytes: {}",
                        describe(&msg)
                    );
                    out.push(msg);
                }
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok((out, buf.len()))
}

fn assert_same(expected: &[Message], got: Result<(Vec<Message>, usize), String>, how: &str) {
    let got = match got {
        Ok((got, 0)) => got,
        Ok((_, left)) => panic!("{how}: {left} bytes were left undecoded"),
        Err(e) => panic!("{how}: decode failed: {e}"),
    };
    assert_eq!(
        got.len(),
        expected.len(),
        "{how}: decoded {} messages, expected {}",
        got.len(),
        expected.len()
    );
    for (i, (a, b)) in expected.iter().zip(&got).enumerate() {
        let (a, b) = (describe(a), describe(b));
        assert_eq!(a, b, "{how}: message {i} differs");
    }
}

/// Decodes `stream` (one or more complete frames, back to back) whole, then again split
/// in every way a socket might deliver it: at every single point, at every pair of
/// points (streams up to [`PAIR_SPLIT_LIMIT`] bytes), and in chunks of every size. Every
/// way must give the same messages (kind, id, status, wire, name, layout, metadata and
/// frame) and leave no byte undecoded. A fresh codec from `new_codec` serves each way.
///
/// Returns the messages of the whole-stream decode. Panics on the first difference.
pub fn check_decode_any_split<C: Codec>(
    mut new_codec: impl FnMut() -> C,
    stream: &[u8],
) -> Vec<Message> {
    let expected = match decode_chunks(&mut new_codec(), [stream]) {
        Ok((messages, 0)) => messages,
        Ok((_, left)) => panic!("whole stream: {left} bytes were left undecoded"),
        Err(e) => panic!("whole stream: decode failed: {e}"),
    };
    let n = stream.len();
    for at in 0..=n {
        let got = decode_chunks(&mut new_codec(), [&stream[..at], &stream[at..]]);
        assert_same(&expected, got, &format!("split at {at}"));
    }
    if n <= PAIR_SPLIT_LIMIT {
        for a in 1..n {
            for b in a + 1..n {
                let parts = [&stream[..a], &stream[a..b], &stream[b..]];
                let got = decode_chunks(&mut new_codec(), parts);
                assert_same(&expected, got, &format!("split at {a} and {b}"));
            }
        }
    }
    for size in 1..n.max(1) {
        let got = decode_chunks(&mut new_codec(), stream.chunks(size));
        assert_same(&expected, got, &format!("chunks of {size} bytes"));
    }
    expected
}

/// Decodes arbitrary `bytes` whole and one byte at a time, as the runtime would, and
/// encodes every message that decodes: nothing may panic, and a decode that returns a
/// message must consume bytes (or the runtime would loop). Errors are fine; the first
/// one ends that pass, as it closes a connection. Meant for property tests and fuzz
/// targets.
pub fn check_no_panic<C: Codec>(mut new_codec: impl FnMut() -> C, bytes: &[u8]) {
    for bytewise in [false, true] {
        let mut codec = new_codec();
        let decoded = if bytewise {
            decode_chunks(&mut codec, bytes.chunks(1))
        } else {
            decode_chunks(&mut codec, [bytes])
        };
        if let Ok((messages, _)) = decoded {
            let mut out = BytesMut::new();
            for msg in &messages {
                let _ = codec.encode(msg, &mut out);
            }
        }
    }
}

/// Request ids [`check_roundtrip`] rewrites to: the edges of the 31-bit range the
/// runtime uses upstream.
pub const REWRITTEN_IDS: [u64; 4] = [0, 1, 0x7fff_fffe, 0x7fff_ffff];

/// Decodes `frame` (exactly one frame), rewrites its id to each of [`REWRITTEN_IDS`],
/// encodes it with one codec and decodes the result with another: the copy must carry
/// the new id and otherwise decode as the original did (kind, status, wire, name and
/// metadata). Returns the original message. Panics on the first difference.
pub fn check_roundtrip<C: Codec>(mut new_codec: impl FnMut() -> C, frame: &[u8]) -> Message {
    let (mut messages, left) = decode_chunks(&mut new_codec(), [frame])
        .unwrap_or_else(|e| panic!("the frame does not decode: {e}"));
    assert_eq!(left, 0, "{left} bytes of the frame were left undecoded");
    assert_eq!(
        messages.len(),
        1,
        "expected one frame, got {}",
        messages.len()
    );
    let original = messages.remove(0);
    for id in REWRITTEN_IDS {
        let mut msg = original.clone();
        msg.set_request_id(id);
        let mut wire = BytesMut::new();
        new_codec()
            .encode(&msg, &mut wire)
            .unwrap_or_else(|e| panic!("id {id}: encode failed: {e}"));
        let (mut back, left) = decode_chunks(&mut new_codec(), [&wire[..]])
            .unwrap_or_else(|e| panic!("id {id}: the encoded frame does not decode: {e}"));
        assert_eq!(left, 0, "id {id}: {left} encoded bytes left undecoded");
        assert_eq!(back.len(), 1, "id {id}: encode wrote {} frames", back.len());
        let back = back.remove(0);
        assert_eq!(back.request_id(), id, "id {id}: the new id was not written");
        let same = |m: &Message| {
            format!(
                "kind {:?}, status {:?}, wire {:?}, name {:?}, metadata {:?}",
                m.kind(),
                m.status(),
                m.wire(),
                &**m.name(),
                m.metadata()
            )
        };
        assert_eq!(same(&back), same(&original), "id {id}: the copy differs");
    }
    original
}

/// A small deterministic random number generator (xorshift64*) for stable fuzz
/// harnesses: mutate valid frames with it and feed them to [`check_no_panic`]. The same
/// seed gives the same sequence, so a failing run is reproduced from its seed.
#[derive(Clone, Debug)]
pub struct FuzzRng(u64);

impl FuzzRng {
    /// A generator started from `seed` (0 is replaced by 1: xorshift never leaves 0).
    pub fn new(seed: u64) -> Self {
        FuzzRng(seed.max(1))
    }

    /// The next 64 random bits.
    #[allow(
        clippy::should_implement_trait,
        reason = "a generator, not an iterator: it never ends"
    )]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, EncodeError, LocalReply, MessageKind, ReplyContext};
    use bytes::BufMut;

    /// Frames are `<id byte> <text> \n`.
    #[derive(Default)]
    struct Lines {
        /// Bytes already scanned for the newline.
        scanned: usize,
        /// A deliberate bug: forget where the scan stopped and restart one byte too far.
        skip_bug: bool,
    }

    impl Codec for Lines {
        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
            let from = if self.skip_bug {
                self.scanned + 1
            } else {
                self.scanned
            };
            let Some(end) = src
                .get(from..)
                .and_then(|s| s.iter().position(|&b| b == b'\n'))
            else {
                self.scanned = src.len();
                return Ok(None);
            };
            self.scanned = 0;
            let frame = src.split_to(from + end + 1).freeze();
            if frame.len() < 2 {
                return Err(DecodeError::malformed("no id"));
            }
            Ok(Some(Message::new(
                MessageKind::Request,
                u64::from(frame[0]),
                frame,
            )))
        }

        fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
            dst.put_u8(msg.request_id() as u8);
            dst.put_slice(&msg.frame()[1..]);
            Ok(())
        }

        fn encode_local_reply(
            &mut self,
            _: &ReplyContext,
            _: &LocalReply<'_>,
            _: &mut BytesMut,
        ) -> Result<(), EncodeError> {
            Ok(())
        }
    }

    #[test]
    fn a_correct_codec_passes_every_split() {
        let messages = check_decode_any_split(Lines::default, b"1abc\n2\n3defgh\n");
        let ids: Vec<u64> = messages.iter().map(Message::request_id).collect();
        assert_eq!(ids, [u64::from(b'1'), u64::from(b'2'), u64::from(b'3')]);
    }

    #[test]
    #[should_panic(expected = "split at")]
    fn a_codec_that_loses_its_place_is_caught() {
        let buggy = || Lines {
            skip_bug: true,
            ..Lines::default()
        };
        check_decode_any_split(buggy, b"1abc\n2\n3defgh\n");
    }

    #[test]
    fn arbitrary_bytes_are_tolerated() {
        check_no_panic(Lines::default, b"\n\n\xff\x00x");
    }

    #[test]
    #[should_panic(expected = "new id was not written")]
    fn an_id_that_does_not_fit_is_caught() {
        // The toy writes the id as one byte, so 0x7fff_fffe comes back as 0xfe.
        check_roundtrip(Lines::default, b"1abc\n");
    }
}
