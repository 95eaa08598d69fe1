//! The invariants checked on every input by the cargo-fuzz target
//! (`fuzz/fuzz_targets/decode.rs`) and by the stable-Rust randomized harness
//! (`tests/fuzz_stable.rs`). Shared by `#[path]` inclusion.
//!
//! The first input byte picks the configuration (transport, protocol, a tiny or a
//! normal max_frame_size); the rest is the connection's bytes. For every decoded
//! message: it re-encodes with a new sequence id and a mutation and decodes again to
//! the same message; an echo reply and a local reply decode as responses to it. The
//! same bytes decoded head first (responses' metadata left for `decode_metadata`) give
//! the same messages once read.

use bytes::BytesMut;
use meta_protocol::{Codec, LocalReply, LocalReplyKind, Message, MessageKind, ResponseStatus};
use metaproxy_thrift::frames;
use metaproxy_thrift::{split_wire, Protocol, ThriftCodec, Transport};

/// Runs every check on one input; panics on a violated invariant. Returns how many
/// messages were decoded (and checked).
pub fn check(data: &[u8]) -> usize {
    let Some((&sel, rest)) = data.split_first() else {
        return 0;
    };
    let transport = match sel & 3 {
        0 => None,
        1 => Some(Transport::Framed),
        2 => Some(Transport::Unframed),
        _ => Some(Transport::Header),
    };
    let protocol = match (sel >> 2) & 3 {
        1 => Some(Protocol::Binary),
        2 => Some(Protocol::Compact),
        _ => None,
    };
    let max = if sel & 0x10 != 0 { 48 } else { 1 << 20 };
    let new_codec = || ThriftCodec::new(transport, protocol, max);
    // Feed in two steps when asked: what is undecidable on a prefix must wait.
    let split = if sel & 0x20 != 0 {
        rest.len() / 2
    } else {
        rest.len()
    };
    let decoded = decode_stream(&mut new_codec(), rest, split, check_message);
    check_head_first(
        rest,
        split,
        || new_codec().with_lazy_metadata(true),
        &decoded,
    );
    decoded.len()
}

/// Decodes `rest` again (fed as [`check`] fed it) with a codec that decodes responses
/// head first: it decodes every message the full decode did, each the same once read
/// with `decode_metadata`, and encodes, mutated while unread, to the same bytes. It may
/// decode more (a response whose unread tail is malformed); reading or encoding those
/// may fail but never panics.
fn check_head_first(
    rest: &[u8],
    split: usize,
    new_codec: impl Fn() -> ThriftCodec,
    eager: &[Message],
) {
    let mut codec = new_codec();
    let lazy = decode_stream(&mut codec, rest, split, |_, _| {});
    assert!(
        lazy.len() >= eager.len(),
        "head first decoded {} messages, in full {}",
        lazy.len(),
        eager.len()
    );
    for (i, mut msg) in lazy.into_iter().enumerate() {
        assert_eq!(
            msg.metadata_deferred(),
            msg.kind() == MessageKind::Response,
            "only responses are left partly unread"
        );
        let mutate = |m: &Message| {
            let mut m = m.clone();
            m.set_request_id(0x7fff_fff0);
            m.push_mutation("fuzz-key".into(), "fuzz-value".into());
            let mut out = BytesMut::new();
            codec.clone().encode(&m, &mut out).map(|()| out)
        };
        let unread = mutate(&msg);
        let read = new_codec().decode_metadata(&mut msg);
        let Some(full) = eager.get(i) else {
            continue;
        };
        read.expect("what decodes in full reads in full");
        assert!(!msg.metadata_deferred());
        assert_eq!(
            (msg.kind(), msg.request_id(), msg.status(), msg.wire()),
            (full.kind(), full.request_id(), full.status(), full.wire())
        );
        assert_eq!(msg.name(), full.name());
        assert_eq!(msg.metadata(), full.metadata());
        assert_eq!(msg.layout_words(), full.layout_words());
        assert_eq!(msg.frame(), full.frame());
        assert_eq!(
            unread.expect("a mutated unread message encodes"),
            mutate(full).expect("a mutated message encodes")
        );
    }
}

/// Decodes `rest` as a connection receives it, the first `split` bytes and then the
/// rest once the codec asks for more, up to 64 messages or the first error; each
/// message consumed exactly its frame's bytes and goes through `each` (with the codec)
/// before the next is decoded.
fn decode_stream(
    codec: &mut ThriftCodec,
    rest: &[u8],
    split: usize,
    mut each: impl FnMut(&mut ThriftCodec, &Message),
) -> Vec<Message> {
    let mut buf = BytesMut::from(rest);
    let mut pending = buf.split_off(split);
    let mut decoded = Vec::new();
    for _ in 0..64 {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(msg)) => {
                assert!(buf.len() < before, "a decoded message consumed bytes");
                assert_eq!(msg.frame().len(), before - buf.len());
                each(codec, &msg);
                decoded.push(msg);
            }
            Ok(None) if !pending.is_empty() => buf.unsplit(std::mem::take(&mut pending)),
            Ok(None) | Err(_) => break,
        }
    }
    decoded
}

fn check_message(codec: &mut ThriftCodec, msg: &Message) {
    let (t, p) = split_wire(msg.wire()).expect("decoded messages carry a thrift wire format");
    let fresh = || ThriftCodec::new(Some(t), Some(p), 1 << 24);

    // Re-encode with a new id (longer compact varint) and a mutation.
    let mut m2 = msg.clone();
    m2.set_request_id(0x7fff_fff0);
    m2.push_mutation("fuzz-key".into(), "fuzz-value".into());
    let mut out = BytesMut::new();
    codec
        .encode(&m2, &mut out)
        .expect("a decoded message re-encodes");
    let back = fresh()
        .decode(&mut out)
        .expect("re-encoded decodes")
        .expect("whole frame");
    assert!(out.is_empty(), "re-encoded frame decodes to its end");
    assert_eq!(back.request_id(), 0x7fff_fff0);
    assert_eq!(back.kind(), msg.kind());
    assert_eq!(back.name(), msg.name());
    assert_eq!(back.wire(), msg.wire());
    assert_eq!(back.status(), msg.status());
    assert_eq!(back.metadata().get("method"), msg.metadata().get("method"));
    assert_eq!(
        back.metadata().get("service"),
        msg.metadata().get("service")
    );
    if t == Transport::Header {
        assert_eq!(back.metadata().get("fuzz-key"), Some("fuzz-value"));
    }

    // Helpers never panic; an echo reply answers the call.
    let _ = frames::read_reply(msg);
    let _ = frames::call_payload(msg);
    let mut echo = BytesMut::new();
    if let Ok(true) = frames::echo_reply(msg, &mut echo) {
        let r = fresh()
            .decode(&mut echo)
            .expect("echo decodes")
            .expect("whole echo");
        assert_eq!(
            (r.kind(), r.request_id()),
            (MessageKind::Response, msg.request_id())
        );
    }

    // Local replies answer calls in their own format (the runtime never asks for one
    // to a one-way call).
    if msg.kind() == MessageKind::Request {
        let mut local = BytesMut::new();
        codec
            .encode_local_reply(
                &msg.reply_context(),
                &LocalReply::new(LocalReplyKind::Timeout, "t"),
                &mut local,
            )
            .expect("local reply encodes");
        let r = fresh()
            .decode(&mut local)
            .expect("local reply decodes")
            .expect("whole reply");
        assert_eq!(
            (r.kind(), r.status()),
            (MessageKind::Response, ResponseStatus::Error)
        );
        assert_eq!((r.request_id(), r.name()), (msg.request_id(), msg.name()));
    }
}
