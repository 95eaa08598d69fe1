//! Responses decoded head first (`CodecContext::lazy_metadata`), on every transport x
//! protocol: what `decode` reads at once, what `decode_metadata` reads later (the same
//! as an eager decode), encoding with and without mutations, any split of the stream,
//! requests (never deferred) and a malformed tail (an error only once it is read).

use bytes::BytesMut;
use meta_protocol::testing::check_decode_any_split;
use meta_protocol::{
    Codec, CodecContext, DecodeError, DecodeErrorKind, Message, MessageKind, ResponseStatus,
    DEFAULT_MAX_FRAME_SIZE,
};
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{
    split_wire, wire_format, Protocol, ThriftCodec, ThriftLayout, ThriftOptions, Transport,
};

fn all() -> impl Iterator<Item = (Transport, Protocol)> {
    Transport::ALL
        .into_iter()
        .flat_map(|t| Protocol::ALL.into_iter().map(move |p| (t, p)))
}

/// Info headers of the responses below (written on the header transport only).
const HEADERS: &[(&str, &str)] = &[("tenant", "t1"), ("k", "v"), ("method", "spoof")];

/// A backend connection's codec, as the runtime makes it (`lazy`) or as a codec used on
/// its own is made.
fn upstream(t: Transport, p: Protocol, lazy: bool) -> ThriftCodec {
    let ctx = CodecContext::upstream(DEFAULT_MAX_FRAME_SIZE, wire_format(t, p));
    let ctx = if lazy { ctx.with_lazy_metadata() } else { ctx };
    ThriftCodec::for_connection(&ThriftOptions::default(), &ctx).expect("a thrift wire format")
}

/// A client connection's codec with `auto` options, as the runtime makes it.
fn downstream_lazy() -> ThriftCodec {
    let ctx = CodecContext::downstream(DEFAULT_MAX_FRAME_SIZE).with_lazy_metadata();
    ThriftCodec::for_connection(&ThriftOptions::default(), &ctx).expect("codec")
}

/// Every kind of response, each as one frame: a multiplexed reply, a plain reply with a
/// 5-byte compact sequence id, a declared exception with a negative id, a
/// TApplicationException.
fn responses(t: Transport, p: Protocol) -> Vec<BytesMut> {
    let spec = |name, seqid| FrameSpec::new(t, p, name, seqid).with_headers(HEADERS);
    let mut out = Vec::new();
    let mut b = BytesMut::new();
    frames::write_reply(&spec("Store:get", 3), b"value", &mut b).unwrap();
    out.push(b.split());
    frames::write_reply(&spec("get", 0x7fff_ffff), b"", &mut b).unwrap();
    out.push(b.split());
    frames::write_declared_exception(&spec("Store:put", -5), 1, "nope", &mut b).unwrap();
    out.push(b.split());
    frames::write_app_exception_frame(&spec("Store:del", 9), 6, "boom", &mut b).unwrap();
    out.push(b.split());
    out
}

/// Decodes exactly one frame with `codec`.
fn decode_one(codec: &mut ThriftCodec, frame: &[u8]) -> Result<Message, DecodeError> {
    let mut buf = BytesMut::from(frame);
    let msg = codec.decode(&mut buf)?.expect("a whole frame");
    assert!(buf.is_empty(), "the frame is consumed");
    Ok(msg)
}

/// Everything a decode sets, for comparing two decodes.
fn describe(msg: &Message) -> String {
    format!(
        "kind {:?}, id {}, status {:?}, wire {:?}, name {:?}, layout {:?}, metadata {:?}, \
         deferred {}, frame {:02x?}",
        msg.kind(),
        msg.request_id(),
        msg.status(),
        msg.wire(),
        &**msg.name(),
        msg.layout::<ThriftLayout>(),
        msg.metadata(),
        msg.metadata_deferred(),
        &msg.frame()[..],
    )
}

fn encode(codec: &mut ThriftCodec, msg: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    codec.encode(msg, &mut out).expect("encodes");
    out
}

#[test]
fn a_lazy_response_reads_its_head_now_and_the_rest_as_an_eager_decode_does() {
    for (t, p) in all() {
        for frame in responses(t, p) {
            let eager = decode_one(&mut upstream(t, p, false), &frame).unwrap();
            assert!(!eager.metadata_deferred(), "{t:?}/{p:?}: eager");
            assert!(eager.metadata().get("method").is_some());
            let mut lazy = decode_one(&mut upstream(t, p, true), &frame).unwrap();

            // What forwarding needs is there at once.
            assert!(lazy.metadata_deferred(), "{t:?}/{p:?}: lazy");
            assert_eq!(lazy.kind(), MessageKind::Response);
            assert_eq!(lazy.request_id(), eager.request_id());
            assert_eq!(lazy.status(), eager.status());
            assert_eq!(lazy.wire(), eager.wire());
            assert_eq!(
                lazy.layout::<ThriftLayout>(),
                eager.layout::<ThriftLayout>()
            );
            // The rest is not.
            assert_eq!(lazy.metadata().get("method"), None, "{t:?}/{p:?}");
            assert!(lazy.metadata().is_empty(), "{t:?}/{p:?}");
            assert!(lazy.name().is_empty());

            // Read by another codec instance (the runtime uses the client's), one that
            // is neither lazy nor of this transport: the message alone suffices.
            let mut other = ThriftCodec::new(None, None, DEFAULT_MAX_FRAME_SIZE);
            other.decode_metadata(&mut lazy).unwrap();
            assert!(!lazy.metadata_deferred());
            assert_eq!(describe(&lazy), describe(&eager), "{t:?}/{p:?}");
            if t == Transport::Header {
                assert_eq!(lazy.metadata().get("tenant"), Some("t1"));
            }
            // A second call changes nothing; so does a call on an eager message.
            other.decode_metadata(&mut lazy).unwrap();
            assert_eq!(describe(&lazy), describe(&eager));
            let mut again = eager.clone();
            other.decode_metadata(&mut again).unwrap();
            assert_eq!(describe(&again), describe(&eager));
        }
        // The status of every kind of response is read at once.
        let statuses: Vec<ResponseStatus> = responses(t, p)
            .iter()
            .map(|f| decode_one(&mut upstream(t, p, true), f).unwrap().status())
            .collect();
        assert_eq!(
            statuses,
            [
                ResponseStatus::Ok,
                ResponseStatus::Ok,
                ResponseStatus::Exception,
                ResponseStatus::Error
            ],
            "{t:?}/{p:?}"
        );
    }
}

#[test]
fn a_lazy_response_encodes_to_the_bytes_of_an_eager_one_with_and_without_mutations() {
    for (t, p) in all() {
        for frame in responses(t, p) {
            // The client connection's codec encodes responses.
            let mut client = ThriftCodec::new(Some(t), Some(p), DEFAULT_MAX_FRAME_SIZE);
            let eager = decode_one(&mut upstream(t, p, false), &frame).unwrap();
            let lazy = decode_one(&mut upstream(t, p, true), &frame).unwrap();
            assert!(lazy.metadata_deferred());

            // As they are, and with ids whose compact varints are longer or shorter.
            assert_eq!(encode(&mut client, &lazy), frame, "{t:?}/{p:?}");
            for id in [1u64, 300, 0x7fff_ffff] {
                let (mut l, mut e) = (lazy.clone(), eager.clone());
                l.set_request_id(id);
                e.set_request_id(id);
                assert_eq!(
                    encode(&mut client, &l),
                    encode(&mut client, &e),
                    "{t:?}/{p:?} {id}"
                );
            }

            // Mutated while unread.
            let (mut l, mut e) = (lazy.clone(), eager.clone());
            for m in [&mut l, &mut e] {
                m.set_request_id(77);
                m.push_mutation("tenant".into(), "t2".into());
                m.push_mutation("added".into(), "yes".into());
            }
            let mutated = encode(&mut client, &l);
            assert_eq!(mutated, encode(&mut client, &e), "{t:?}/{p:?}: mutated");
            assert!(
                l.metadata_deferred(),
                "encode reads a copy, not the message"
            );
            let back = decode_one(&mut upstream(t, p, false), &mutated).unwrap();
            assert_eq!(back.request_id(), 77);
            assert_eq!(back.name(), eager.name());
            assert_eq!(back.status(), eager.status());
            if t == Transport::Header {
                assert_eq!(back.metadata().get("tenant"), Some("t2"));
                assert_eq!(back.metadata().get("added"), Some("yes"));
                assert_eq!(back.metadata().get("k"), Some("v"));
                assert_ne!(mutated, encode(&mut client, &eager_with_id(&eager, 77)));
            } else {
                assert_eq!(mutated, encode(&mut client, &eager_with_id(&eager, 77)));
            }

            // Read first, then encoded: the same bytes again.
            client.decode_metadata(&mut l).unwrap();
            assert_eq!(encode(&mut client, &l), mutated, "{t:?}/{p:?}: read");
        }
    }
}

fn eager_with_id(msg: &Message, id: u64) -> Message {
    let mut m = msg.clone();
    m.set_request_id(id);
    m
}

#[test]
fn lazy_responses_decode_the_same_in_any_split() {
    for (t, p) in all() {
        let mut stream = BytesMut::new();
        for frame in responses(t, p) {
            stream.extend_from_slice(&frame);
        }
        let eager = check_decode_any_split(|| upstream(t, p, false), &stream);
        for new_codec in [
            &(|| upstream(t, p, true)) as &dyn Fn() -> ThriftCodec,
            &downstream_lazy,
        ] {
            let lazy = check_decode_any_split(new_codec, &stream);
            assert_eq!(lazy.len(), eager.len(), "{t:?}/{p:?}");
            for (mut l, e) in lazy.into_iter().zip(&eager) {
                assert!(l.metadata_deferred(), "{t:?}/{p:?}");
                new_codec().decode_metadata(&mut l).unwrap();
                assert_eq!(describe(&l), describe(e), "{t:?}/{p:?}");
            }
        }
    }
}

#[test]
fn requests_are_never_deferred() {
    for (t, p) in all() {
        let mut stream = BytesMut::new();
        let spec = |name, seqid| FrameSpec::new(t, p, name, seqid).with_headers(HEADERS);
        frames::write_call(&spec("Store:put", 5), b"payload", &mut stream).unwrap();
        frames::write_oneway(&spec("note", 6), b"x", &mut stream).unwrap();
        let eager = check_decode_any_split(|| upstream(t, p, false), &stream);
        for lazy in [
            check_decode_any_split(downstream_lazy, &stream),
            check_decode_any_split(|| upstream(t, p, true), &stream),
        ] {
            assert_eq!(lazy.len(), 2);
            for (l, e) in lazy.iter().zip(&eager) {
                assert!(!l.metadata_deferred(), "{t:?}/{p:?} {:?}", l.kind());
                assert!(l.metadata().get("method").is_some());
                assert_eq!(describe(l), describe(e), "{t:?}/{p:?}");
            }
        }
    }
}

/// `frame` with its name's `é` (the only 0xc3 byte) made invalid UTF-8.
fn break_name(mut frame: BytesMut) -> BytesMut {
    let at = frame.iter().position(|&b| b == 0xc3).expect("the é");
    frame[at] = 0xff;
    frame
}

#[test]
fn a_response_whose_name_is_not_utf8_decodes_lazily_and_fails_when_read() {
    for (t, p) in all() {
        let mut frame = BytesMut::new();
        frames::write_reply(
            &FrameSpec::new(t, p, "g\u{e9}t", 4).with_headers(HEADERS),
            b"ok",
            &mut frame,
        )
        .unwrap();
        let frame = break_name(frame);
        let eager = decode_one(&mut upstream(t, p, false), &frame).unwrap_err();
        assert!(
            matches!(eager.kind, DecodeErrorKind::Malformed(_)),
            "{t:?}/{p:?}: {eager}"
        );

        let mut lazy = decode_one(&mut upstream(t, p, true), &frame).unwrap();
        assert!(lazy.metadata_deferred());
        assert_eq!(
            (lazy.request_id(), lazy.status()),
            (4, ResponseStatus::Ok),
            "{t:?}/{p:?}"
        );
        // Nobody reads it: forwarded as the backend wrote it.
        let mut client = ThriftCodec::new(Some(t), Some(p), DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(encode(&mut client, &lazy), frame);

        let err = client.decode_metadata(&mut lazy).unwrap_err();
        assert_eq!(err.kind, eager.kind, "{t:?}/{p:?}: {err}");
        assert!(err.to_string().contains("UTF-8"), "{err}");
        assert!(lazy.metadata_deferred(), "still unread");

        // Mutations would be merged into headers: refused as the eager decode was.
        lazy.push_mutation("k".into(), "w".into());
        let mutated = client.encode(&lazy, &mut BytesMut::new());
        assert_eq!(mutated.is_err(), t == Transport::Header, "{t:?}/{p:?}");
    }
}

#[test]
fn a_response_whose_info_headers_are_malformed_decodes_lazily_and_fails_when_read() {
    for p in Protocol::ALL {
        let mut frame = BytesMut::new();
        frames::write_reply(
            &FrameSpec::new(Transport::Header, p, "get", 4).with_headers(&[("k", "v")]),
            b"ok",
            &mut frame,
        )
        .unwrap();
        // Protocol id and transform count (one byte each), then a key/value section
        // of one header: claim 127.
        assert_eq!(&frame[16..18], &[1, 1], "{p:?}");
        frame[17] = 0x7f;
        let eager = decode_one(&mut upstream(Transport::Header, p, false), &frame).unwrap_err();
        assert!(
            matches!(eager.kind, DecodeErrorKind::Malformed(_)),
            "{eager}"
        );

        let mut lazy = decode_one(&mut upstream(Transport::Header, p, true), &frame).unwrap();
        assert!(lazy.metadata_deferred());
        assert_eq!(lazy.request_id(), 4);
        let err = downstream_lazy().decode_metadata(&mut lazy).unwrap_err();
        assert_eq!(err.kind, eager.kind, "{p:?}: {err}");
        assert!(lazy.metadata_deferred(), "still unread");
        assert_eq!(
            split_wire(lazy.wire()),
            Some((Transport::Header, p)),
            "{p:?}"
        );
    }
}
