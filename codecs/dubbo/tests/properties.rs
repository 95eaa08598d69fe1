//! Property tests: the reader skips and reads back whatever the writer produces;
//! decode(encode(m)) keeps metadata and bytes; truncation gives "need more bytes";
//! arbitrary bytes never panic.

mod common;

use bytes::{Bytes, BytesMut};
use common::{codec, decode_one, encode};
use meta_protocol::{Codec, MessageKind, Metadata};
use metaproxy_dubbo::frames::{parse_request, parse_response, Args, RequestFrame, ResponseFrame};
use metaproxy_dubbo::hessian2::{Reader, Value, Writer};
use proptest::prelude::*;

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,40}",
        1 => any::<String>(),
        1 => ("[a-z\u{4E00}-\u{4E10}\u{1F600}-\u{1F610}]", 30_000usize..70_000)
            .prop_map(|(c, n)| c.repeat(n / c.encode_utf16().count() / 2)),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::Int),
        (-300_000i32..300_000).prop_map(Value::Int),
        any::<i64>().prop_map(Value::Long),
        (-300_000i64..300_000).prop_map(Value::Long),
        any::<f64>()
            .prop_filter("NaN never equals", |d| !d.is_nan())
            .prop_map(Value::Double),
        (-40_000i32..40_000, 0u8..4)
            .prop_map(|(i, s)| Value::Double(f64::from(i) / [1.0, 10.0, 1000.0, 3.0][s as usize])),
        any::<i64>().prop_map(Value::Date),
        (-1_000_000i64..1_000_000).prop_map(|m| Value::Date(m * 60_000)),
        arb_string().prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..2000).prop_map(Value::Binary),
        (0usize..100_000).prop_map(|n| Value::Binary(vec![0xab; n])),
        (0u32..4).prop_map(Value::Ref),
    ]
}

fn arb_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![Just(None), "[a-z.]{1,20}".prop_map(Some)]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            (arb_type(), prop::collection::vec(inner.clone(), 0..10))
                .prop_map(|(ty, items)| Value::List { ty, items }),
            (arb_type(), prop::collection::vec(inner.clone(), 0..10))
                .prop_map(|(ty, items)| Value::FixedList { ty, items }),
            (
                arb_type(),
                prop::collection::vec((inner.clone(), inner.clone()), 0..6)
            )
                .prop_map(|(ty, entries)| Value::Map { ty, entries }),
            (
                prop_oneof![
                    Just("com.a.A".to_string()),
                    Just("com.a.B".to_string()),
                    "[a-z]{1,5}"
                ],
                prop::collection::vec(inner, 0..5)
            )
                .prop_map(|(class, vals)| Value::Object {
                    fields: vals
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (format!("f{i}"), v))
                        .collect(),
                    class,
                }),
        ]
    })
}

fn arb_attachments() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof![
                "[a-z-]{1,10}",
                Just("interface".to_string()),
                Just("method".to_string()),
                Just("group".to_string()),
                "\\PC{1,8}"
            ],
            arb_string(),
        ),
        0..8,
    )
}

/// What the metadata of a request is (the rule in the crate's README): body fields,
/// then string attachments.
fn expected_metadata(
    interface: &str,
    method: &str,
    version: &str,
    group: Option<&str>,
    atts: &[(String, String)],
) -> Metadata {
    let mut md = Metadata::new();
    md.set("interface".into(), interface.into());
    md.set("method".into(), method.into());
    md.set("version".into(), version.into());
    // RequestFrame writes path, interface, version, group, then the extras; body fields
    // win over attachments, and among attachments a later duplicate wins (as in the
    // HashMap a Java peer reads them into).
    md.set("path".into(), interface.into());
    if let Some(g) = group {
        md.set("group".into(), g.into());
    }
    for (k, v) in atts {
        if !matches!(k.as_str(), "interface" | "method" | "version") {
            md.set(k.as_str().into(), v.as_str().into());
        }
    }
    md
}

fn sorted(md: &Metadata) -> Vec<(String, String)> {
    let mut v: Vec<_> = md
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn writer_output_is_skipped_and_read_exactly(values in prop::collection::vec(arb_value(), 1..5)) {
        // One writer for the sequence: class definitions are shared across values.
        let mut buf = BytesMut::new();
        {
            let mut w = Writer::new(&mut buf);
            for v in &values {
                w.write_value(v);
            }
        }
        let bytes = buf.freeze();
        let mut skip = Reader::new(&bytes);
        let mut read = Reader::new(&bytes);
        for v in &values {
            skip.skip_value().unwrap();
            let got = read.read_value().unwrap();
            prop_assert_eq!(&got, v);
            prop_assert_eq!(skip.position(), read.position());
        }
        prop_assert!(skip.is_at_end());
        // Every strict prefix fails to skip the whole sequence (never panics, never
        // claims to end early).
        for cut in [0, bytes.len() / 3, bytes.len().saturating_sub(1)] {
            if cut < bytes.len() {
                let b = bytes.slice(..cut);
                let mut r = Reader::new(&b);
                let all = values.iter().try_for_each(|_| r.skip_value());
                prop_assert!(all.is_err());
            }
        }
    }

    #[test]
    fn decode_encode_keeps_metadata_and_bytes(
        id in any::<u64>(),
        new_id in any::<u64>(),
        interface in "[a-zA-Z.]{1,40}|\\PC{1,10}",
        method in "[a-zA-Z]{1,20}|\\PC{1,5}",
        version in "[0-9.]{0,8}",
        group in prop::option::of("\\PC{0,10}"),
        atts in arb_attachments(),
        args in prop::collection::vec(arb_value(), 0..3),
        one_way in any::<bool>(),
        mutations in prop::collection::vec(("[a-z]{1,4}", "\\PC{0,12}"), 0..4),
    ) {
        let mut encoded = BytesMut::new();
        {
            let mut w = Writer::new(&mut encoded);
            for a in &args { w.write_value(a); }
        }
        let types = "Ljava/lang/Object;".repeat(args.len());
        let att_refs: Vec<(&str, &str)> = atts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let frame = RequestFrame {
            version: &version,
            group: group.as_deref(),
            attachments: &att_refs,
            args: Args::Encoded { types: &types, values: &encoded },
            one_way,
            ..RequestFrame::new(id, &interface, &method)
        }.encode();
        let mut msg = decode_one(&frame);
        prop_assert_eq!(msg.kind(), if one_way { MessageKind::OneWay } else { MessageKind::Request });
        prop_assert_eq!(msg.request_id(), id);
        let want = expected_metadata(&interface, &method, &version, group.as_deref(), &atts);
        prop_assert_eq!(sorted(msg.metadata()), sorted(&want));
        // No mutation: identical bytes; the new id in bytes 4..12 only.
        prop_assert_eq!(&encode(&msg)[..], &frame[..]);
        msg.set_request_id(new_id);
        let out = encode(&msg);
        prop_assert_eq!(&out[12..], &frame[12..]);
        prop_assert_eq!(&out[4..12], &new_id.to_be_bytes()[..]);
        let back = decode_one(&out);
        prop_assert_eq!(sorted(back.metadata()), sorted(&want));
        // Mutations: merged over the attachments, last one wins; arguments unchanged.
        for (k, v) in &mutations {
            msg.push_mutation(k.as_str().into(), v.as_str().into());
        }
        let mutated = encode(&msg);
        let back = decode_one(&mutated);
        for body_field in ["interface", "method", "version"] {
            prop_assert_eq!(back.metadata().get(body_field), want.get(body_field));
        }
        // Every mutation is visible (the last of a key wins), nothing else changed.
        for (k, _) in &mutations {
            let last = mutations.iter().rev().find(|(m, _)| m == k).map(|(_, v)| v.as_str());
            if !matches!(k.as_str(), "interface" | "method" | "version") {
                prop_assert_eq!(back.metadata().get(k), last);
            }
        }
        for (k, v) in want.iter() {
            if !mutations.iter().any(|(m, _)| m == k) {
                prop_assert_eq!(back.metadata().get(k), Some(v), "key {}", k);
            }
        }
        let p0 = parse_request(&frame).unwrap();
        let p1 = parse_request(&mutated).unwrap();
        prop_assert_eq!(p0.args, p1.args);
    }

    #[test]
    fn truncated_frames_need_more_bytes(
        args in prop::collection::vec(arb_value(), 0..3),
        atts in arb_attachments(),
        response in any::<bool>(),
    ) {
        let mut encoded = BytesMut::new();
        {
            let mut w = Writer::new(&mut encoded);
            for a in &args { w.write_value(a); }
        }
        let att_refs: Vec<(&str, &str)> = atts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut first = BytesMut::new();
        Writer::new(&mut first).write_value(args.first().unwrap_or(&Value::Null));
        let frame = if response {
            ResponseFrame::value(4, &first)
                .with_attachments(&att_refs).encode()
        } else {
            let types = "Ljava/lang/Object;".repeat(args.len());
            RequestFrame {
                attachments: &att_refs,
                args: Args::Encoded { types: &types, values: &encoded },
                ..RequestFrame::new(4, "svc", "m")
            }.encode()
        };
        let step = (frame.len() / 300).max(1);
        let mut c = codec();
        for cut in (0..frame.len()).step_by(step).chain(frame.len().saturating_sub(20)..frame.len()) {
            let mut buf = BytesMut::from(&frame[..cut]);
            prop_assert!(c.decode(&mut buf).unwrap().is_none(), "cut at {}", cut);
            prop_assert_eq!(buf.len(), cut);
        }
        let whole = decode_one(&frame);
        if response {
            let p = parse_response(&frame).unwrap();
            prop_assert_eq!(p.attachments.len(), atts.len());
            prop_assert_eq!(whole.kind(), MessageKind::Response);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..200),
        flags in any::<u8>(),
        status in any::<u8>(),
    ) {
        let mut frame = vec![0xda, 0xbb, flags, status, 0, 0, 0, 0, 0, 0, 0, 1];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let mut c = codec();
        let mut buf = BytesMut::from(&frame[..]);
        if let Ok(Some(m)) = c.decode(&mut buf) {
            // Whatever decodes, encodes back to the same bytes.
            let mut out = BytesMut::new();
            c.encode(&m, &mut out).unwrap();
            prop_assert_eq!(&out[..], &frame[..]);
        }
        let raw = Bytes::from(body);
        let _ = Reader::new(&raw).read_value();
        let _ = Reader::new(&raw).skip_value();
    }
}
