//! Property tests: the skipper consumes exactly what the `thrift` crate wrote,
//! truncated frames are "need more bytes", arbitrary bytes never panic, and hostile
//! nesting stops at the depth limit.

mod common;

use bytes::BytesMut;
use common::*;
use meta_protocol::{Codec, DecodeErrorKind};
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{Protocol, ThriftCodec, Transport, MAX_DEPTH};
use proptest::prelude::*;
use thrift::protocol::TMessageType;

fn codecs() -> Vec<ThriftCodec> {
    let mut v = vec![ThriftCodec::new(None, None, 1 << 16)];
    for t in Transport::ALL {
        v.push(ThriftCodec::new(Some(t), None, 1 << 16));
        for p in Protocol::ALL {
            v.push(ThriftCodec::new(Some(t), Some(p), 1 << 16));
        }
    }
    v
}

fn rs_proto() -> impl Strategy<Value = RsProto> {
    prop_oneof![
        Just(RsProto::BinaryStrict),
        Just(RsProto::BinaryOld),
        Just(RsProto::Compact)
    ]
}

fn our_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..3,
        any::<bool>(),
        "[a-zA-Z:]{0,12}",
        any::<i32>(),
        prop::collection::vec(("[a-z]{1,6}", "[ -~]{0,10}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(t, compact, name, seqid, headers, payload)| {
            let t = Transport::ALL[t];
            let p = if compact {
                Protocol::Compact
            } else {
                Protocol::Binary
            };
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut b = BytesMut::new();
            frames::write_call(
                &FrameSpec::new(t, p, &name, seqid).with_headers(&h),
                &payload,
                &mut b,
            )
            .unwrap();
            b.to_vec()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// skip(write(v)) consumes exactly what was written: an unframed message (whose end
    /// is found only by skipping its struct) followed by other bytes.
    #[test]
    fn skip_consumes_exactly_what_was_written(p in rs_proto(), args in args_strategy(), seqid in any::<i32>()) {
        let wire = rs_message(false, p, "m", TMessageType::Call, seqid, &args);
        let mut buf = BytesMut::from(&wire[..]);
        buf.extend_from_slice(&[0x80, 0x01, 0x00]); // the start of a next message
        let mut codec = ThriftCodec::new(Some(Transport::Unframed), None, 1 << 20);
        let m = codec.decode(&mut buf).unwrap().expect("whole message");
        prop_assert_eq!(m.frame().len(), wire.len());
        prop_assert_eq!(&buf[..], &[0x80, 0x01, 0x00]);
        prop_assert_eq!(m.request_id(), seqid as u32 as u64);
    }

    /// Every strict prefix of a valid frame is "need more bytes", fed at once to a fresh
    /// codec or byte by byte to one codec; the whole frame decodes.
    #[test]
    fn truncation_is_need_more_bytes(
        frame in prop_oneof![
            our_frame(),
            (any::<bool>(), rs_proto(), args_strategy()).prop_map(|(f, p, a)| rs_message(f, p, "Svc:m", TMessageType::Call, 7, &a)),
        ],
    ) {
        for cut in 0..frame.len() {
            for (i, mut codec) in codecs().into_iter().enumerate() {
                let mut buf = BytesMut::from(&frame[..cut]);
                match codec.decode(&mut buf) {
                    Ok(None) => prop_assert_eq!(buf.len(), cut),
                    // A codec pinned to another transport/protocol may refuse early;
                    // the auto codec (index 0) never does.
                    Err(e) => prop_assert!(i != 0, "auto codec refused a prefix of {}: {}", cut, e),
                    Ok(Some(_)) => prop_assert!(false, "decoded a truncated frame at {}", cut),
                }
            }
        }
        let mut codec = ThriftCodec::new(None, None, 1 << 16);
        let mut buf = BytesMut::new();
        for (i, b) in frame.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = codec.decode(&mut buf).unwrap();
            prop_assert_eq!(r.is_some(), i + 1 == frame.len());
        }
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic, whatever the configuration.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for mut codec in codecs() {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match codec.decode(&mut buf) {
                    Ok(Some(m)) => {
                        let mut out = BytesMut::new();
                        let _ = codec.encode(&m, &mut out);
                        let _ = frames::read_reply(&m);
                        let _ = frames::echo_reply(&m, &mut out);
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Hostile nesting: a struct nested 10 000 deep in an unframed call is refused with
/// TooDeep, in both protocols, without exhausting the stack.
#[test]
fn hostile_nesting_hits_the_depth_limit() {
    for p in Protocol::ALL {
        let mut b = BytesMut::new();
        frames::write_call(&FrameSpec::new(Transport::Unframed, p, "m", 1), b"", &mut b).unwrap();
        b.truncate(b.len() - 1 - if p == Protocol::Binary { 5 + 2 } else { 1 + 1 }); // drop field 1 and stop
        for _ in 0..10_000 {
            match p {
                Protocol::Binary => b.extend_from_slice(&[12, 0, 1]),
                Protocol::Compact => b.extend_from_slice(&[0x1c]),
            }
        }
        let mut codec = ThriftCodec::new(Some(Transport::Unframed), Some(p), 1 << 20);
        let err = codec.decode(&mut b).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::TooDeep(MAX_DEPTH), "{p:?}");
        // ... and the error can be answered: the header was read.
        assert_eq!(err.reply.map(|r| r.request_id), Some(1));
    }
    // Lists of lists, too.
    let mut b = BytesMut::new();
    frames::write_call(
        &FrameSpec::new(Transport::Unframed, Protocol::Binary, "m", 1),
        b"",
        &mut b,
    )
    .unwrap();
    b.truncate(b.len() - 8);
    b.extend_from_slice(&[15, 0, 1]);
    for _ in 0..10_000 {
        b.extend_from_slice(&[15, 0, 0, 0, 1]);
    }
    let err = ThriftCodec::new(None, None, 1 << 20)
        .decode(&mut b)
        .unwrap_err();
    assert_eq!(err.kind, DecodeErrorKind::TooDeep(MAX_DEPTH));
}
