//! Golden frames produced by the Rust `thrift` crate (an independent implementation):
//! our decoder reads them, our writers produce the same bytes, and the crate reads what
//! we encode (rewritten sequence ids, local replies).

mod common;

use bytes::BytesMut;
use common::*;
use meta_protocol::{Codec, LocalReply, LocalReplyKind, MessageKind, ResponseStatus};
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{split_wire, Protocol, ThriftCodec, Transport};
use thrift::protocol::{
    TBinaryInputProtocol, TCompactInputProtocol, TInputProtocol, TMessageType, TType,
};

fn nested_args() -> Vec<(i16, V)> {
    let leaf = |i: i32| {
        V::Struct(vec![
            (1, V::I32(i)),
            (2, V::Binary(format!("leaf-{i}").into_bytes())),
            (3, V::Bool(i % 2 == 0)),
            (4, V::Double(i as f64 / 3.0)),
            (5, V::Uuid([i as u8; 16])),
        ])
    };
    let leaf_ty = Ty::Struct(vec![]);
    vec![
        (
            1,
            V::Struct(vec![
                (1, V::Binary(b"root".to_vec())),
                (2, V::List(leaf_ty.clone(), (0..20).map(leaf).collect())),
                (
                    3,
                    V::Map(
                        Ty::Binary,
                        leaf_ty,
                        (0..5)
                            .map(|i| (V::Binary(vec![b'k', i as u8]), leaf(i)))
                            .collect(),
                    ),
                ),
                (4, V::Set(Ty::I64, vec![V::I64(-1), V::I64(1 << 40)])),
                (
                    5,
                    V::List(Ty::Bool, vec![V::Bool(true), V::Bool(false), V::Bool(true)]),
                ),
                (
                    200,
                    V::Map(
                        Ty::I16,
                        Ty::List(Box::new(Ty::Bool)),
                        vec![(V::I16(-3), V::List(Ty::Bool, vec![V::Bool(false)]))],
                    ),
                ),
            ]),
        ),
        (2, V::I32(3)),
        (-7, V::I8(-1)),
    ]
}

fn proto_of(p: RsProto) -> Protocol {
    match p {
        RsProto::Compact => Protocol::Compact,
        _ => Protocol::Binary,
    }
}

fn input(p: RsProto, bytes: &[u8]) -> Box<dyn TInputProtocol + '_> {
    match p {
        RsProto::Compact => Box::new(TCompactInputProtocol::new(bytes)),
        RsProto::BinaryStrict => Box::new(TBinaryInputProtocol::new(bytes, true)),
        RsProto::BinaryOld => Box::new(TBinaryInputProtocol::new(bytes, false)),
    }
}

#[test]
fn thrift_crate_calls_decode_in_every_combination() {
    for framed in [true, false] {
        for p in RS_PROTOS {
            for (mt, kind) in [
                (TMessageType::Call, MessageKind::Request),
                (TMessageType::OneWay, MessageKind::OneWay),
            ] {
                let wire = rs_message(framed, p, "Store:put", mt, 0x1234_5678, &nested_args());
                let mut buf = BytesMut::from(&wire[..]);
                buf.extend_from_slice(&wire);
                let mut codec = ThriftCodec::new(None, None, 1 << 20);
                for _ in 0..2 {
                    let m = codec.decode(&mut buf).unwrap().expect("a whole message");
                    assert_eq!(m.frame().len(), wire.len(), "{framed} {p:?}");
                    assert_eq!(m.kind(), kind);
                    assert_eq!(m.request_id(), 0x1234_5678);
                    assert_eq!(m.metadata().get("method"), Some("put"));
                    assert_eq!(m.metadata().get("service"), Some("Store"));
                    let t = if framed {
                        Transport::Framed
                    } else {
                        Transport::Unframed
                    };
                    assert_eq!(split_wire(m.wire()), Some((t, proto_of(p))));
                }
                assert!(buf.is_empty());
            }
        }
    }
}

#[test]
fn our_call_frames_equal_the_thrift_crates() {
    for framed in [true, false] {
        for p in [RsProto::BinaryStrict, RsProto::Compact] {
            let payload = vec![0xa5u8; 300];
            let want = rs_message(
                framed,
                p,
                "echo",
                TMessageType::Call,
                -2,
                &[(1, V::Binary(payload.clone()))],
            );
            let t = if framed {
                Transport::Framed
            } else {
                Transport::Unframed
            };
            let mut got = BytesMut::new();
            frames::write_call(
                &FrameSpec::new(t, proto_of(p), "echo", -2),
                &payload,
                &mut got,
            )
            .unwrap();
            assert_eq!(&got[..], &want[..], "{t:?} {p:?}");
            let want = rs_message(
                framed,
                p,
                "echo",
                TMessageType::Reply,
                9,
                &[(0, V::Binary(payload.clone()))],
            );
            let mut got = BytesMut::new();
            frames::write_reply(
                &FrameSpec::new(t, proto_of(p), "echo", 9),
                &payload,
                &mut got,
            )
            .unwrap();
            assert_eq!(&got[..], &want[..], "{t:?} {p:?}");
        }
    }
}

#[test]
fn thrift_crate_reads_rewritten_messages() {
    for framed in [true, false] {
        for p in RS_PROTOS {
            let wire = rs_message(framed, p, "Calc:add", TMessageType::Call, 1, &nested_args());
            let mut codec = ThriftCodec::new(None, None, 1 << 20);
            let mut m = codec
                .decode(&mut BytesMut::from(&wire[..]))
                .unwrap()
                .unwrap();
            m.set_request_id(0x0fff_ffff);
            let mut out = BytesMut::new();
            codec.encode(&m, &mut out).unwrap();
            let body = if framed {
                let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
                assert_eq!(len, out.len() - 4);
                &out[4..]
            } else {
                &out[..]
            };
            let mut i = input(p, body);
            let id = i.read_message_begin().unwrap();
            assert_eq!(
                (id.name.as_str(), id.sequence_number),
                ("Calc:add", 0x0fff_ffff)
            );
            i.skip(TType::Struct).unwrap();
            i.read_message_end().unwrap();
        }
    }
}

#[test]
fn thrift_crate_reads_our_local_replies() {
    for framed in [true, false] {
        for p in [RsProto::BinaryStrict, RsProto::Compact] {
            let wire = rs_message(framed, p, "Store:put", TMessageType::Call, 42, &[]);
            let mut codec = ThriftCodec::new(None, None, 1 << 20);
            let m = codec
                .decode(&mut BytesMut::from(&wire[..]))
                .unwrap()
                .unwrap();
            for (kind, want) in [
                (
                    LocalReplyKind::NoRoute,
                    thrift::ApplicationErrorKind::UnknownMethod,
                ),
                (
                    LocalReplyKind::Timeout,
                    thrift::ApplicationErrorKind::InternalError,
                ),
                (
                    LocalReplyKind::BadRequest,
                    thrift::ApplicationErrorKind::ProtocolError,
                ),
            ] {
                let mut out = BytesMut::new();
                codec
                    .encode_local_reply(
                        &m.reply_context(),
                        &LocalReply::new(kind, "metaproxy says no"),
                        &mut out,
                    )
                    .unwrap();
                let body = if framed { &out[4..] } else { &out[..] };
                let mut i = input(p, body);
                let id = i.read_message_begin().unwrap();
                assert_eq!(id.message_type, TMessageType::Exception);
                assert_eq!((id.name.as_str(), id.sequence_number), ("Store:put", 42));
                let e = thrift::Error::read_application_error_from_in_protocol(&mut *i).unwrap();
                assert_eq!(e.kind, want);
                assert!(e.message.contains("metaproxy says no"), "{}", e.message);
            }
        }
    }
}

#[test]
fn thrift_crate_replies_have_status() {
    for framed in [true, false] {
        for p in RS_PROTOS {
            let ok = rs_message(
                framed,
                p,
                "put",
                TMessageType::Reply,
                5,
                &[(0, V::Binary(b"r".to_vec()))],
            );
            let void = rs_message(framed, p, "put", TMessageType::Reply, 5, &[]);
            let declared = rs_message(
                framed,
                p,
                "put",
                TMessageType::Reply,
                5,
                &[(1, V::Struct(vec![(1, V::Binary(b"x".to_vec()))]))],
            );
            let t = if framed {
                Transport::Framed
            } else {
                Transport::Unframed
            };
            let mut codec = ThriftCodec::new(Some(t), Some(proto_of(p)), 1 << 20);
            for (w, st) in [
                (ok, ResponseStatus::Ok),
                (void, ResponseStatus::Ok),
                (declared, ResponseStatus::Exception),
            ] {
                let m = codec.decode(&mut BytesMut::from(&w[..])).unwrap().unwrap();
                assert_eq!(
                    (m.kind(), m.status()),
                    (MessageKind::Response, st),
                    "{framed} {p:?}"
                );
            }
        }
    }
}
