//! The codec against hand-built frames: metadata, kinds, errors, encode, mutations,
//! local replies.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use common::{
    codec, decode_one, encode, object_in_attachments, one_way_request, raw_request, request_header,
    typical_request,
};
use meta_protocol::testing::{check_decode_any_split, check_roundtrip};
use meta_protocol::{
    Codec, CodecContext, CodecError, CodecOptions, CodecRegistry, DecodeErrorKind, LocalReply,
    LocalReplyKind, Message, MessageKind, ReplyContext, ResponseStatus, Side,
    DEFAULT_MAX_FRAME_SIZE,
};
use metaproxy_dubbo::frames::{
    parse_request, parse_response, Args, RequestFrame, ResponseBody, ResponseFrame,
};
use metaproxy_dubbo::header::{status, Header, HEADER_LEN};
use metaproxy_dubbo::hessian2::{Value, Writer};
use metaproxy_dubbo::{DubboCodec, DubboCodecFactory};

#[test]
fn typical_request_metadata() {
    let frame = typical_request(11);
    let msg = decode_one(&frame);
    assert_eq!(msg.kind(), MessageKind::Request);
    assert_eq!(msg.request_id(), 11);
    let md = msg.metadata();
    assert_eq!(md.get("interface"), Some("com.example.DemoService"));
    assert_eq!(md.get("method"), Some("sayHello"));
    assert_eq!(md.get("version"), Some("1.0.0"));
    assert_eq!(md.get("group"), Some("blue"));
    assert_eq!(md.get("timeout"), Some("3000"));
    assert_eq!(md.get("user"), Some("alice"));
    assert_eq!(md.get("path"), Some("com.example.DemoService"));
    // Values slice the frame.
    let v = md.get_shared("user").unwrap();
    let f = msg.frame();
    let at = f.windows(5).position(|w| w == b"alice").unwrap();
    assert_eq!(v.as_bytes().as_ptr(), f[at..].as_ptr());
    assert_eq!(msg.reply_context().request_id, 11);
    assert!(!msg.reply_context().one_way);
}

#[test]
fn body_fields_win_over_attachments() {
    let frame = RequestFrame {
        attachments: &[("method", "evil"), ("interface", "other"), ("x", "1")],
        version: "2.0",
        ..RequestFrame::new(1, "com.a.B", "real")
    }
    .encode();
    let md = decode_one(&frame).metadata().clone();
    assert_eq!(md.get("method"), Some("real"));
    assert_eq!(md.get("interface"), Some("com.a.B"));
    assert_eq!(md.get("version"), Some("2.0"));
    assert_eq!(md.get("x"), Some("1"));
}

#[test]
fn non_string_attachments_are_skipped_and_typed_maps_accepted() {
    let frame = raw_request(0xc2, 5, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_null()
            .write_string("m");
        w.write_string("Ljava/util/Map;");
        w.write_value(&Value::Map {
            ty: None,
            entries: vec![(
                Value::str("k"),
                Value::List {
                    ty: None,
                    items: vec![Value::Int(1)],
                },
            )],
        });
        w.write_map_start(Some(metaproxy_dubbo::hessian2::TypeName::Name(
            "java.util.HashMap",
        )));
        w.write_string("num").write_int(5);
        w.write_int(7).write_string("intkey");
        w.write_string("group").write_string("g\u{1F600}");
        w.write_string("nested").write_value(&Value::Map {
            ty: None,
            entries: vec![],
        });
        w.write_end();
    });
    let msg = decode_one(&frame);
    let md = msg.metadata();
    assert_eq!(md.get("interface"), Some("svc"));
    assert_eq!(md.get("version"), None, "null version is absent");
    assert_eq!(md.get("group"), Some("g\u{1F600}"));
    assert_eq!(md.get("num"), None);
    assert_eq!(md.get("nested"), None);
    assert_eq!(md.len(), 3);
}

#[test]
fn class_definitions_are_shared_across_the_body() {
    // Two object arguments: the second uses the definition written with the first.
    let frame = raw_request(0xc2, 5, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("Lcom/a/P;Lcom/a/P;");
        let idx = w.write_class_def("com.a.P", &["x", "y"]);
        w.write_object_start(idx).write_int(1).write_string("a");
        w.write_object_start(idx).write_int(2).write_string("b");
        w.write_string_map([("user", "bob")]);
    });
    let msg = decode_one(&frame);
    assert_eq!(msg.metadata().get("user"), Some("bob"));
    let p = parse_request(&frame).unwrap();
    assert_eq!(p.args.len(), 2);
    assert_eq!(
        p.args[1],
        Value::Object {
            class: "com.a.P".into(),
            fields: vec![("x".into(), Value::Int(2)), ("y".into(), Value::str("b"))]
        }
    );
}

#[test]
fn chunked_and_surrogate_strings_are_decoded() {
    let long = "\u{4E2D}".repeat(40_000);
    let frame = raw_request(0xc2, 5, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("");
        w.write_map_start(None);
        w.write_string("long").write_string(&long);
        // U+1F600 written as a modified-UTF-8 surrogate pair, as Java does.
        w.write_string("emoji");
        w.write_raw(b"\x02\xed\xa0\xbd\xed\xb8\x80");
        w.write_end();
    });
    let msg = decode_one(&frame);
    assert_eq!(msg.metadata().get("long"), Some(long.as_str()));
    assert_eq!(msg.metadata().get("emoji"), Some("\u{1F600}"));
}

/// The body's three fields read the same whatever string form the consumer chose: the
/// short and medium ASCII forms take the codec's fast path, and a null, a non-ASCII or a
/// chunked string takes the general reader, from the same place.
#[test]
fn body_fields_read_the_same_in_every_string_form() {
    let medium = "org.apache.dubbo.demo.".repeat(3);
    type Form = fn(&mut Writer<'_>, &str);
    let plain: Form = |w, s| {
        w.write_string(s);
    };
    // Two chunks: all but the last character, then the last.
    let chunked: Form = |w, s| {
        let last = s.char_indices().last().map_or(0, |(i, _)| i);
        let (head, tail) = s.split_at(last);
        w.write_raw(&[0x52, 0, head.chars().count() as u8]);
        w.write_raw(head.as_bytes());
        w.write_string(tail);
    };
    for (form, name) in [(plain, "plain"), (chunked, "chunked")] {
        for interface in ["svc", medium.as_str(), "s\u{e9}rvice"] {
            for version in [None, Some("1.0.0"), Some("v\u{e9}")] {
                let frame = raw_request(0xc2, 9, |w| {
                    w.write_string("2.0.2");
                    form(w, interface);
                    match version {
                        Some(v) => form(w, v),
                        None => {
                            w.write_null();
                        }
                    }
                    form(w, "sayHello");
                    w.write_string("");
                    w.write_map_start(None);
                    w.write_string("x").write_string("1");
                    w.write_end();
                });
                let msg = decode_one(&frame);
                let md = msg.metadata();
                let case = format!("{name} {interface:?} {version:?}");
                assert_eq!(md.get("interface"), Some(interface), "{case}");
                assert_eq!(md.get("version"), version, "{case}");
                assert_eq!(md.get("method"), Some("sayHello"), "{case}");
                assert_eq!(md.get("x"), Some("1"), "{case}: the attachments follow");
                assert_eq!(encode(&msg), frame, "{case}: encodes back unchanged");
            }
        }
    }
}

/// The runtime, not the codec, keeps one-way requests unanswered: the codec only has to
/// say which requests are one-way.
#[test]
fn one_way_requests_are_marked_one_way() {
    let frame = one_way_request(3);
    let msg = decode_one(&frame);
    assert_eq!(msg.kind(), MessageKind::OneWay);
    let ctx = msg.reply_context();
    assert!(ctx.one_way);
}

/// The checks offered to codec authors, on the reference codec: a stream of every kind
/// decodes the same however it is split, and requests and responses survive an id
/// rewrite to the edges of the 31-bit range.
#[test]
fn streams_decode_the_same_in_any_split_and_ids_round_trip() {
    let one_way = one_way_request(3);
    let mut heartbeat = BytesMut::new();
    codec().encode_heartbeat(4, &mut heartbeat).unwrap();
    let stream = [&typical_request(1)[..], &one_way[..], &heartbeat[..]].concat();
    let kinds: Vec<MessageKind> = check_decode_any_split(codec, &stream)
        .iter()
        .map(|m| m.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            MessageKind::Request,
            MessageKind::OneWay,
            MessageKind::Heartbeat
        ]
    );
    check_roundtrip(codec, &typical_request(1));
    check_roundtrip(codec, &one_way);
    let upstream = || DubboCodec::new(Side::Upstream, meta_protocol::DEFAULT_MAX_FRAME_SIZE);
    let attachments = [("x-trace", "t1")];
    let response = ResponseFrame {
        attachments: Some(&attachments[..]),
        ..ResponseFrame::string(1, "hello")
    }
    .encode();
    let m = check_roundtrip(upstream, &response);
    assert_eq!(m.metadata().get("x-trace"), Some("t1"));
    check_decode_any_split(upstream, &response);
}

#[test]
fn events_heartbeats_and_go_away() {
    let ev = |flags: u8, body: &[u8]| {
        let mut b = BytesMut::new();
        Header {
            flags,
            status: 20,
            id: 9,
            body_len: body.len() as i32,
        }
        .write(&mut b);
        b.put_slice(body);
        decode_one(&b).kind()
    };
    assert_eq!(ev(0xe2, b"N"), MessageKind::Heartbeat);
    assert_eq!(ev(0xe2, b""), MessageKind::Heartbeat);
    assert_eq!(ev(0xa2, b"N"), MessageKind::Event);
    assert_eq!(ev(0xa2, b"\x01R"), MessageKind::GoAway);
    assert_eq!(ev(0xe2, b"\x01R"), MessageKind::GoAway);
    assert_eq!(ev(0xe2, b"\x01X"), MessageKind::Event);
    assert_eq!(ev(0x22, b"N"), MessageKind::Event);
}

#[test]
fn response_status_mapping() {
    let st = |f: Bytes| {
        let m = decode_one(&f);
        assert_eq!(m.kind(), MessageKind::Response);
        m.status()
    };
    let exc = [b'N'];
    assert_eq!(
        st(ResponseFrame::string(1, "v").encode()),
        ResponseStatus::Ok
    );
    assert_eq!(st(ResponseFrame::null(1).encode()), ResponseStatus::Ok);
    assert_eq!(
        st(ResponseFrame::exception(1, &exc).encode()),
        ResponseStatus::Exception
    );
    let att: &[(&str, &str)] = &[("a", "b")];
    assert_eq!(
        st(ResponseFrame::string(1, "v").with_attachments(att).encode()),
        ResponseStatus::Ok
    );
    assert_eq!(
        st(ResponseFrame::null(1).with_attachments(att).encode()),
        ResponseStatus::Ok
    );
    assert_eq!(
        st(ResponseFrame::exception(1, &exc)
            .with_attachments(att)
            .encode()),
        ResponseStatus::Exception
    );
    assert_eq!(
        st(ResponseFrame::error(1, 70, "boom").encode()),
        ResponseStatus::Error
    );
    // Unknown response type.
    let bad = Bytes::from_static(b"\xda\xbb\x02\x14\0\0\0\0\0\0\0\x01\0\0\0\x01\x99");
    let err = codec().decode(&mut BytesMut::from(&bad[..])).unwrap_err();
    assert!(matches!(err.kind, DecodeErrorKind::Malformed(_)));
    assert!(err.reply.is_none(), "responses are not answered");
    // The response type in the long int forms a writer may choose (`I` and `0xd4`
    // three-byte): the same status, and the attachments after it are found.
    for (form, status) in [
        (&b"I\0\0\0\x04"[..], ResponseStatus::Ok),
        (&b"I\0\0\0\x03"[..], ResponseStatus::Exception),
        (&b"\xd4\0\x04"[..], ResponseStatus::Ok),
    ] {
        let mut body = form.to_vec();
        body.extend_from_slice(if status == ResponseStatus::Ok {
            b"\x01v"
        } else {
            b"N"
        });
        body.extend_from_slice(b"H\x01a\x01bZ");
        let mut f = BytesMut::from(&b"\xda\xbb\x02\x14\0\0\0\0\0\0\0\x01"[..]);
        f.put_u32(body.len() as u32);
        f.put_slice(&body);
        let m = decode_one(&f);
        assert_eq!(m.status(), status, "{form:?}");
        assert_eq!(m.metadata().get("a"), Some("b"), "{form:?}");
    }
}

#[test]
fn partial_frames_need_more_bytes_and_frames_split_correctly() {
    let a = typical_request(1);
    let b = ResponseFrame::string(2, "ok").encode();
    let mut buf = BytesMut::new();
    buf.put_slice(&a);
    buf.put_slice(&b[..10]);
    let mut c = codec();
    assert_eq!(c.decode(&mut buf).unwrap().unwrap().request_id(), 1);
    assert!(c.decode(&mut buf).unwrap().is_none());
    assert_eq!(&buf[..], &b[..10], "partial frame left untouched");
    buf.put_slice(&b[10..]);
    assert_eq!(c.decode(&mut buf).unwrap().unwrap().request_id(), 2);
    assert!(buf.is_empty());
}

#[test]
fn header_errors() {
    let mut c = codec();
    // Bad magic is reported from the first byte.
    let err = c.decode(&mut BytesMut::from(&b"G"[..])).unwrap_err();
    assert!(matches!(err.kind, DecodeErrorKind::BadMagic(_)));
    // Too large, from the header alone: no body bytes present.
    let mut small = DubboCodec::new(Side::Downstream, 1024);
    let mut hdr = request_header(0xc2, 77, 5000);
    let err = small.decode(&mut hdr).unwrap_err();
    assert_eq!(
        err.kind,
        DecodeErrorKind::FrameTooLarge {
            size: 5016,
            max: 1024
        }
    );
    assert_eq!(err.reply.as_ref().map(|r| r.request_id), Some(77));
    // Negative body length.
    let mut hdr = request_header(0xc2, 78, -1);
    let err = c.decode(&mut hdr).unwrap_err();
    assert!(matches!(err.kind, DecodeErrorKind::Malformed(_)));
    assert_eq!(err.reply.map(|r| r.request_id), Some(78));
    // Another serialization.
    let mut hdr = request_header(0xc6, 79, 1);
    let err = c.decode(&mut hdr).unwrap_err();
    match &err.kind {
        DecodeErrorKind::Unsupported(m) => {
            assert!(m.contains("fastjson") && m.contains("hessian2"))
        }
        k => panic!("unexpected {k:?}"),
    }
    assert_eq!(err.reply.map(|r| r.request_id), Some(79));
}

#[test]
fn body_errors_carry_the_reply_context() {
    let bad_desc = raw_request(0xc2, 12, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("Lcom/Unterminated");
    });
    let err = codec()
        .decode(&mut BytesMut::from(&bad_desc[..]))
        .unwrap_err();
    assert!(matches!(err.kind, DecodeErrorKind::Malformed(_)), "{err}");
    let ctx = err.reply.unwrap();
    assert_eq!((ctx.request_id, ctx.one_way), (12, false));

    let mut deep = vec![0x79u8; 200];
    deep.push(b'N');
    let bomb = raw_request(0x82, 13, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("Ljava/util/List;").write_raw(&deep);
        w.write_string_map([]);
    });
    let err = codec().decode(&mut BytesMut::from(&bomb[..])).unwrap_err();
    assert!(matches!(err.kind, DecodeErrorKind::TooDeep(_)));
    assert!(err.reply.unwrap().one_way);

    // Argument count says 2, body has 1 then the map: the map is taken as an argument
    // and the body ends early.
    let short = raw_request(0xc2, 14, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("II").write_int(1);
    });
    assert!(codec().decode(&mut BytesMut::from(&short[..])).is_err());
}

#[test]
fn encode_forwards_bytes_and_rewrites_only_the_id() {
    let frame = typical_request(5);
    let mut msg = decode_one(&frame);
    assert_eq!(encode(&msg), frame);
    msg.set_request_id(0x1122_3344_5566_7788);
    let out = encode(&msg);
    assert_eq!(out.len(), frame.len());
    assert_eq!(&out[..4], &frame[..4]);
    assert_eq!(&out[4..12], &0x1122_3344_5566_7788u64.to_be_bytes());
    assert_eq!(&out[12..], &frame[12..]);
}

#[test]
fn request_mutation_rewrites_only_the_attachments() {
    let frame = typical_request(5);
    let mut msg = decode_one(&frame);
    msg.push_mutation("user".into(), "mallory".into());
    msg.push_mutation("x-route".into(), "first".into());
    msg.push_mutation("x-route".into(), "beta".into());
    msg.set_request_id(6);
    let out = encode(&msg);
    let back = decode_one(&out);
    assert_eq!(back.request_id(), 6);
    assert_eq!(back.metadata().get("user"), Some("mallory"));
    assert_eq!(back.metadata().get("x-route"), Some("beta"));
    assert_eq!(back.metadata().get("group"), Some("blue"));
    assert_eq!(
        back.metadata().get("interface"),
        Some("com.example.DemoService")
    );
    // Everything before the attachments map is unchanged.
    let map_at = metaproxy_dubbo::DubboLayout::of(&msg)
        .attachments
        .unwrap()
        .0;
    assert_eq!(&out[12..16], &((out.len() - 16) as u32).to_be_bytes());
    assert_eq!(&out[16..map_at], &frame[16..map_at]);
    let p = parse_request(&out).unwrap();
    assert_eq!(p.attachments.iter().filter(|(k, _)| k == "user").count(), 1);
    assert_eq!(
        p.attachments.iter().filter(|(k, _)| k == "x-route").count(),
        1
    );
    assert_eq!(p.args, parse_request(&frame).unwrap().args);
}

#[test]
fn mutation_adds_a_map_when_the_request_has_none() {
    let frame = raw_request(0xc2, 8, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("I").write_int(3);
    });
    let mut msg = decode_one(&frame);
    assert_eq!(msg.metadata().get("method"), Some("m"));
    msg.push_mutation("k".into(), "v".into());
    let out = encode(&msg);
    assert_eq!(&out[16..frame.len()], &frame[16..]);
    assert_eq!(decode_one(&out).metadata().get("k"), Some("v"));
}

#[test]
fn response_mutations_only_where_attachments_exist() {
    let plain = ResponseFrame::string(1, "v").encode();
    let mut m = decode_one(&plain);
    m.push_mutation("k".into(), "v".into());
    assert_eq!(
        encode(&m),
        plain,
        "type 1 cannot carry attachments: ignored"
    );

    let att: &[(&str, &str)] = &[("a", "1"), ("k", "old")];
    let with = ResponseFrame::string(1, "v").with_attachments(att).encode();
    let mut m = decode_one(&with);
    assert_eq!(m.metadata().get("k"), Some("old"));
    m.push_mutation("k".into(), "new".into());
    let p = parse_response(&encode(&m)).unwrap();
    assert_eq!(p.response_type, Some(4));
    assert_eq!(p.value, Some(Value::str("v")));
    assert_eq!(
        p.attachments,
        vec![("a".into(), "1".into()), ("k".into(), "new".into())]
    );
}

#[test]
fn local_replies_are_dubbo_error_responses() {
    for (kind, status) in [
        (LocalReplyKind::NoRoute, 60),
        (LocalReplyKind::UpstreamFailure, 80),
        (LocalReplyKind::Timeout, 31),
        (LocalReplyKind::Overloaded, 100),
        (LocalReplyKind::BadRequest, 40),
    ] {
        let ctx = ReplyContext {
            request_id: 99,
            ..Default::default()
        };
        let mut out = BytesMut::new();
        let msg = "metaproxy: no route for com.example.Demo \u{4E2D}";
        codec()
            .encode_local_reply(&ctx, &LocalReply::new(kind, msg), &mut out)
            .unwrap();
        let frame = out.freeze();
        assert_eq!(frame[2], 0x02, "response, hessian2");
        let p = parse_response(&frame).unwrap();
        assert_eq!(p.header.status, status);
        assert_eq!(p.header.id, 99);
        assert_eq!(p.error.as_deref(), Some(msg));
        let m = decode_one(&frame);
        assert_eq!(m.status(), ResponseStatus::Error);
    }
}

#[test]
fn factory_is_named_dubbo_and_takes_no_options() {
    let mut reg = CodecRegistry::new();
    reg.register(Arc::new(DubboCodecFactory));
    let f = reg.get("dubbo").unwrap();
    let protocol = f.configure(&BTreeMap::new()).unwrap();
    assert!(protocol.capabilities().multiplexing);
    let ctx = CodecContext::upstream(100, Default::default());
    let mut c = protocol.new_codec(&ctx).unwrap();
    let mut big = BytesMut::new();
    Header {
        flags: 0x02,
        status: 20,
        id: 1,
        body_len: 200,
    }
    .write(&mut big);
    assert!(c.decode(&mut big).is_err());
    let opts: BTreeMap<String, String> = [("x".to_string(), "y".to_string())].into();
    assert_eq!(
        f.configure(&opts).err(),
        Some(CodecError::UnknownOption("x".into()))
    );
}

#[test]
fn response_body_variants_build_the_right_types() {
    let v = [0x91u8];
    for (body, t) in [
        (ResponseBody::Exception(&v[..]), 0),
        (ResponseBody::Value(&v[..]), 1),
        (ResponseBody::Null, 2),
    ] {
        let f = ResponseFrame {
            id: 1,
            status: 20,
            body,
            attachments: None,
        }
        .encode();
        assert_eq!(parse_response(&f).unwrap().response_type, Some(t));
        let f = ResponseFrame {
            id: 1,
            status: 20,
            body,
            attachments: Some(&[]),
        }
        .encode();
        assert_eq!(parse_response(&f).unwrap().response_type, Some(t + 3));
    }
}

#[test]
fn string_argument_requests_carry_the_string() {
    let f = RequestFrame {
        args: Args::String("hi \u{1F600}"),
        ..RequestFrame::new(1, "s", "m")
    }
    .encode();
    let p = parse_request(&f).unwrap();
    assert_eq!(p.args, vec![Value::str("hi \u{1F600}")]);
    let m = decode_one(&f);
    assert_eq!(m.metadata().get("method"), Some("m"));
}

#[test]
fn every_prefix_of_valid_frames_needs_more_bytes() {
    let mut args = BytesMut::new();
    Writer::new(&mut args).write_value(&Value::Object {
        class: "com.a.P".into(),
        fields: vec![("s".into(), Value::String("\u{1F600}".repeat(20_000)))],
    });
    let frames = [
        typical_request(1),
        RequestFrame {
            args: Args::Encoded {
                types: "Lcom/a/P;",
                values: &args,
            },
            ..RequestFrame::new(2, "svc", "m")
        }
        .encode(),
        ResponseFrame::string(3, "v")
            .with_attachments(&[("k", "v")])
            .encode(),
        ResponseFrame::error(4, 60, "no route").encode(),
    ];
    for frame in frames {
        let mut c = codec();
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            assert!(c.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        // Fed one byte at a time into one buffer, the frame decodes exactly once.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in frame.iter() {
            buf.put_u8(*b);
            if let Some(m) = c.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].frame(), &frame);
    }
}

/// Found by cargo-fuzz: an attachments map holding an object whose class is defined in
/// the arguments cannot be walked on its own, so a mutation is appended after the
/// existing entries (one of them with the same key); the decoder must let the later
/// entry win, as Java does.
const FUZZ_DUPLICATE_KEY_AFTER_UNWALKABLE_MAP: &[&str] = &[
    "dabbc20000000000000000010000014305322e302e3210636f6d2e6578616d706c652e44656d6f05",
    "312e302e300463616c6c30314c6a6176612f7574696c2f4c6973743b4c6a6176612f7574696c2f4d",
    "61703b4c6a6176612f6c616e672f537472696e673b55025b784307636f6d2e612e50920178017360",
    "9102eda0bdedb88000000000000001648051915adabb4d116a6176612e7574696c2e486173684d61",
    "704c81000000000001000000000000000000000000005f00002fda07070707070606060606060606",
    "06060606060606060606060606060606060616060606060606060606060606060606060606060606",
    "06060606060606060606060606060606460606060606060606060606060606060606060606060606",
    "06060606060606782d66757a7a060606070003000007074b07000707070000eda0bdedb880609102",
    "eda0bdedb88051915adabb4d116a6176612e7574696c00000000",
];

#[test]
fn fuzz_regression_mutation_over_an_unwalkable_map_wins() {
    let frame: Vec<u8> = FUZZ_DUPLICATE_KEY_AFTER_UNWALKABLE_MAP
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
    let mut c = codec();
    let mut buf = BytesMut::from(&frame[..]);
    let mut msg = c.decode(&mut buf).unwrap().unwrap();
    msg.push_mutation("x-fuzz".into(), "v".into());
    let out = encode(&msg);
    assert_eq!(decode_one(&out).metadata().get("x-fuzz"), Some("v"));
}

/// A request for `svc` `m` version `1` with no arguments, whose attachments map
/// `entries` writes.
fn request_with_attachments(entries: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    raw_request(0xc2, 5, |w| {
        w.write_string("2.0.2")
            .write_string("svc")
            .write_string("1")
            .write_string("m");
        w.write_string("");
        w.write_map_start(None);
        entries(w);
        w.write_end();
    })
}

#[test]
fn later_duplicate_attachments_win_and_non_strings_remove() {
    let frame = request_with_attachments(|w| {
        w.write_string("k").write_string("first");
        w.write_string("k").write_string("second");
        w.write_string("n").write_string("string");
        w.write_string("n").write_int(3);
        w.write_string("method").write_string("not-the-body");
    });
    let md = decode_one(&frame).metadata().clone();
    assert_eq!(md.get("k"), Some("second"));
    assert_eq!(md.get("n"), None);
    assert_eq!(md.get("method"), Some("m"));
}

#[test]
fn a_map_that_turns_unusual_midway_reads_as_if_read_entry_by_entry() {
    // Plain entries first (the fast reader takes them), then a non-ASCII value: the
    // map is read again by the general reader, with nothing counted twice.
    let frame = request_with_attachments(|w| {
        w.write_string("a").write_string("1");
        w.write_string("interface").write_string("not-the-body");
        w.write_string("b").write_string("caf\u{e9}");
        w.write_string("a").write_string("2");
    });
    let msg = decode_one(&frame);
    let entries: Vec<_> = msg.metadata().iter().collect();
    assert_eq!(
        entries,
        [
            ("interface", "svc"),
            ("method", "m"),
            ("version", "1"),
            ("a", "2"),
            ("b", "caf\u{e9}")
        ]
    );
    // Re-encoded with a mutation, the map keeps every entry the general path keeps.
    let mut msg = msg;
    msg.push_mutation("a".into(), "3".into());
    let again = decode_one(&encode(&msg));
    assert_eq!(again.metadata().get("a"), Some("3"));
    assert_eq!(again.metadata().get("b"), Some("caf\u{e9}"));
}

#[test]
fn response_attachments_in_the_common_shape_and_not() {
    for (value, expected) in [("plain", "plain"), ("\u{e9}t\u{e9}", "\u{e9}t\u{e9}")] {
        let frame = ResponseFrame::null(9)
            .with_attachments(&[("k", "v1"), ("tag", value), ("k", "v2")])
            .encode();
        let msg = decode_one(&frame);
        assert_eq!(msg.metadata().get("k"), Some("v2"));
        assert_eq!(msg.metadata().get("tag"), Some(expected));
        assert_eq!(msg.metadata().len(), 2);
    }
}

#[test]
fn mutation_over_a_map_with_an_object_of_an_argument_class() {
    // The map's object uses the class defined in the arguments: the entries cannot be
    // walked alone, so everything is kept and the mutation follows (and wins).
    let frame = object_in_attachments(5, "old");
    let mut msg = decode_one(&frame);
    assert_eq!(msg.metadata().get("user"), Some("old"));
    msg.push_mutation("user".into(), "new".into());
    let out = encode(&msg);
    assert_eq!(decode_one(&out).metadata().get("user"), Some("new"));
    let p = parse_request(&out).unwrap();
    assert_eq!(
        p.attachments.last(),
        Some(&("user".to_string(), "new".to_string()))
    );
}

/// Decodes `frame` with a codec that may leave response metadata unread, as the
/// runtime's upstream connections make them.
fn decode_lazy(frame: &[u8]) -> Result<Message, meta_protocol::DecodeError> {
    let ctx =
        CodecContext::upstream(DEFAULT_MAX_FRAME_SIZE, Default::default()).with_lazy_metadata();
    let mut c = meta_protocol::CodecFactory::configure(&DubboCodecFactory, &CodecOptions::new())
        .and_then(|p| p.new_codec(&ctx))
        .expect("codec");
    let mut buf = BytesMut::from(frame);
    let msg = c.decode(&mut buf)?.expect("whole frame");
    assert!(buf.is_empty(), "frame fully consumed");
    Ok(msg)
}

#[test]
fn lazy_responses_read_the_status_now_and_the_attachments_on_demand() {
    let att: &[(&str, &str)] = &[("backend", "v1"), ("tag", "\u{e9}t\u{e9}")];
    let mut exception = BytesMut::new();
    Writer::new(&mut exception).write_string("boom");
    for (frame, status) in [
        (
            ResponseFrame::string(3, "hello")
                .with_attachments(att)
                .encode(),
            ResponseStatus::Ok,
        ),
        (
            ResponseFrame::null(3).with_attachments(att).encode(),
            ResponseStatus::Ok,
        ),
        (
            ResponseFrame::exception(3, &exception)
                .with_attachments(att)
                .encode(),
            ResponseStatus::Exception,
        ),
    ] {
        let eager = decode_one(&frame);
        let mut lazy = decode_lazy(&frame).unwrap();
        assert!(lazy.metadata_deferred());
        assert_eq!(lazy.status(), status);
        assert_eq!(lazy.request_id(), 3);
        assert!(lazy.metadata().is_empty(), "nothing read yet");

        // Encoded as it is, unread: the same bytes as the eager message gives.
        lazy.set_request_id(77);
        let mut e = eager.clone();
        e.set_request_id(77);
        assert_eq!(encode(&lazy), encode(&e));

        // Mutated while unread: the codec finds the attachments itself.
        lazy.push_mutation("backend".into(), "v2".into());
        e.push_mutation("backend".into(), "v2".into());
        let mutated = encode(&lazy);
        assert_eq!(mutated, encode(&e));
        let p = parse_response(&mutated).unwrap();
        assert!(p.attachments.contains(&("backend".into(), "v2".into())));

        // Read on demand, by any codec of the protocol: what an eager decode reads.
        codec().decode_metadata(&mut lazy).unwrap();
        assert!(!lazy.metadata_deferred());
        assert_eq!(lazy.metadata(), eager.metadata());
        assert_eq!(lazy.metadata().get("tag"), Some("\u{e9}t\u{e9}"));
        assert_eq!(
            lazy.layout::<metaproxy_dubbo::DubboLayout>(),
            eager.layout::<metaproxy_dubbo::DubboLayout>()
        );
        assert_eq!(encode(&lazy), mutated);
        // A second call changes nothing.
        codec().decode_metadata(&mut lazy).unwrap();
        assert_eq!(lazy.metadata(), eager.metadata());
    }
}

#[test]
fn lazy_responses_without_attachments_or_with_errors_are_read_at_once() {
    for frame in [
        ResponseFrame::string(4, "v").encode(),
        ResponseFrame::null(4).encode(),
        ResponseFrame::error(4, status::SERVICE_ERROR, "no").encode(),
    ] {
        let lazy = decode_lazy(&frame).unwrap();
        assert!(!lazy.metadata_deferred(), "nothing to defer");
        assert_eq!(lazy.status(), decode_one(&frame).status());
    }
}

#[test]
fn a_malformed_body_fails_when_it_is_read() {
    // A valid header and response type, then an attachments map that ends early.
    let good = ResponseFrame::string(6, "v")
        .with_attachments(&[("k", "v")])
        .encode();
    let mut bad = BytesMut::from(&good[..good.len() - 1]);
    let body_len = (bad.len() - HEADER_LEN) as u32;
    bad[12..16].copy_from_slice(&body_len.to_be_bytes());
    assert!(
        codec().decode(&mut bad.clone()).is_err(),
        "eager: a decode error"
    );
    let mut lazy = decode_lazy(&bad).unwrap();
    assert!(lazy.metadata_deferred());
    let err = codec().decode_metadata(&mut lazy).unwrap_err();
    assert!(err.to_string().contains("attachments"), "{err}");
    assert!(lazy.metadata_deferred(), "still unread");
}

#[test]
fn lazy_requests_carry_the_body_fields_and_read_the_rest_on_demand() {
    let caps = meta_protocol::CodecFactory::configure(&DubboCodecFactory, &CodecOptions::new())
        .unwrap()
        .capabilities();
    assert_eq!(caps.eager_keys, metaproxy_dubbo::EAGER_KEYS);

    let frame = typical_request(11);
    let eager = decode_one(&frame);
    let mut lazy = decode_lazy(&frame).unwrap();
    assert!(lazy.metadata_deferred());
    assert_eq!(lazy.kind(), MessageKind::Request);
    assert_eq!(lazy.reply_context(), eager.reply_context());
    for key in metaproxy_dubbo::EAGER_KEYS {
        assert!(eager.metadata().get(key).is_some(), "{key}");
        assert_eq!(lazy.metadata().get(key), eager.metadata().get(key), "{key}");
    }
    assert_eq!(lazy.metadata().len(), metaproxy_dubbo::EAGER_KEYS.len());
    assert_eq!(lazy.metadata().get("user"), None, "attachments wait");

    // Forwarded unread, then mutated unread: the bytes an eager decode gives.
    let mut e = eager.clone();
    lazy.set_request_id(5);
    e.set_request_id(5);
    assert_eq!(encode(&lazy), encode(&e));
    lazy.push_mutation("user".into(), "bob".into());
    e.push_mutation("user".into(), "bob".into());
    assert_eq!(encode(&lazy), encode(&e));

    // Read on demand: what an eager decode reads, layout included.
    codec().decode_metadata(&mut lazy).unwrap();
    assert!(!lazy.metadata_deferred());
    assert_eq!(lazy.metadata(), eager.metadata());
    assert_eq!(lazy.metadata().get("user"), Some("alice"));
    assert_eq!(
        lazy.layout::<metaproxy_dubbo::DubboLayout>(),
        eager.layout::<metaproxy_dubbo::DubboLayout>()
    );
    assert_eq!(encode(&lazy), encode(&e));
}

#[test]
fn lazy_requests_without_every_body_field_are_read_at_once_and_bad_tails_fail_later() {
    // No version in the body: an attachment may supply it, so all is read now.
    let frame = raw_request(0xc2, 3, |w| {
        w.write_string("2.0.2")
            .write_string("com.example.S")
            .write_null()
            .write_string("m")
            .write_string("")
            .write_string_map([("version", "9.9")]);
    });
    let lazy = decode_lazy(&frame).unwrap();
    assert!(!lazy.metadata_deferred());
    assert_eq!(lazy.metadata().get("version"), Some("9.9"));

    // A bad parameter-types string past the method: found when the rest is read.
    let bad = raw_request(0xc2, 4, |w| {
        w.write_string("2.0.2")
            .write_string("com.example.S")
            .write_string("1.0")
            .write_string("m")
            .write_string("Lbroken");
    });
    assert!(codec().decode(&mut BytesMut::from(&bad[..])).is_err());
    let mut lazy = decode_lazy(&bad).unwrap();
    assert!(lazy.metadata_deferred());
    assert_eq!(lazy.metadata().get("method"), Some("m"));
    let err = codec().decode_metadata(&mut lazy).unwrap_err();
    assert!(err.to_string().contains("parameter types"), "{err}");
}
