//! The codec.

use bytes::{BufMut, BytesMut};
use meta_protocol::{
    Codec, CodecCapabilities, CodecContext, CodecError, CodecFactory, CodecOptions,
    ConfiguredProtocol, DecodeError, EncodeError, FrameLayout, LayoutWords, LocalReply,
    LocalReplyKind, Message, MessageKind, ReplyContext, ResponseStatus,
};

/// Bytes before the headers: length, kind, status, id, header count.
pub const HEAD_LEN: usize = 16;

const KIND_REQUEST: u8 = 0;
const KIND_ONE_WAY: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_HEARTBEAT: u8 = 3;
const KIND_HEARTBEAT_REPLY: u8 = 4;

/// Response status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// A result.
    Ok = 0,
    /// An application exception.
    Exception = 1,
    /// The proxy found no route.
    NoRoute = 10,
    /// The upstream failed.
    UpstreamFailure = 11,
    /// The route timeout elapsed.
    Timeout = 12,
    /// The cluster is overloaded.
    Overloaded = 13,
    /// The request could not be decoded.
    BadRequest = 14,
    /// A filter's rate limit refused the request.
    RateLimited = 15,
    /// A filter's access rule refused the request.
    Forbidden = 16,
}

impl Status {
    /// The status for a local reply of `kind`.
    pub fn for_local_reply(kind: LocalReplyKind) -> Status {
        match kind {
            LocalReplyKind::NoRoute => Status::NoRoute,
            LocalReplyKind::UpstreamFailure => Status::UpstreamFailure,
            LocalReplyKind::Timeout => Status::Timeout,
            LocalReplyKind::Overloaded => Status::Overloaded,
            LocalReplyKind::BadRequest => Status::BadRequest,
            LocalReplyKind::RateLimited => Status::RateLimited,
            LocalReplyKind::Forbidden => Status::Forbidden,
        }
    }
}

/// Creates [`KvCodec`]s; registered as `kv`.
///
/// Options: `multiplexing: "false"` tells the runtime that replies cannot be matched by
/// id, so each upstream connection carries one request at a time (default `"true"`).
#[derive(Debug, Default, Clone, Copy)]
pub struct KvCodecFactory;

impl CodecFactory for KvCodecFactory {
    fn name(&self) -> &str {
        "kv"
    }

    fn configure(&self, options: &CodecOptions) -> Result<Box<dyn ConfiguredProtocol>, CodecError> {
        let mut caps = CodecCapabilities::default();
        for (key, value) in options {
            match key.as_str() {
                "multiplexing" => {
                    caps.multiplexing = value.parse().map_err(|_| CodecError::InvalidOption {
                        key: key.clone(),
                        message: format!("expected true or false, got {value:?}"),
                    })?
                }
                _ => return Err(CodecError::UnknownOption(key.clone())),
            }
        }
        Ok(Box::new(KvProtocol { caps }))
    }
}

/// The kv protocol configured for one listener.
#[derive(Debug, Clone, Copy)]
struct KvProtocol {
    caps: CodecCapabilities,
}

impl ConfiguredProtocol for KvProtocol {
    fn capabilities(&self) -> CodecCapabilities {
        self.caps
    }

    fn new_codec(&self, ctx: &CodecContext) -> Result<Box<dyn Codec>, CodecError> {
        Ok(Box::new(KvCodec::new(ctx.max_frame_size)))
    }
}

/// Where a kv frame's sections are, recorded by decode for encode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvLayout {
    /// Offset of the body: the end of the headers.
    pub headers_end: u32,
}

impl FrameLayout for KvLayout {
    fn to_words(self) -> LayoutWords {
        LayoutWords::new([self.headers_end, 0, 0, 0, 0, 0])
    }

    fn from_words(words: LayoutWords) -> Self {
        KvLayout {
            headers_end: words.words()[0],
        }
    }
}

/// One connection's codec. Stateless apart from the size limit.
#[derive(Debug, Clone)]
pub struct KvCodec {
    max_frame_size: usize,
}

impl KvCodec {
    /// A codec rejecting frames larger than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        KvCodec { max_frame_size }
    }
}

fn be_u16(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

impl Codec for KvCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len + 4 > self.max_frame_size {
            return Err(DecodeError::too_large(len as u64 + 4, self.max_frame_size));
        }
        if len < HEAD_LEN - 4 {
            return Err(DecodeError::malformed("frame shorter than its head"));
        }
        if src.len() < len + 4 {
            return Ok(None);
        }
        let frame = src.split_to(len + 4).freeze();
        let id = u64::from_be_bytes(frame[6..14].try_into().expect("8 bytes"));
        let kind = match frame[4] {
            KIND_REQUEST => MessageKind::Request,
            KIND_ONE_WAY => MessageKind::OneWay,
            KIND_RESPONSE => MessageKind::Response,
            KIND_HEARTBEAT => MessageKind::Heartbeat,
            KIND_HEARTBEAT_REPLY => MessageKind::Event,
            other => {
                let ctx = ReplyContext {
                    request_id: id,
                    ..Default::default()
                };
                return Err(DecodeError::malformed(format!("unknown kind {other}")).with_reply(ctx));
            }
        };
        let bad = |what: &'static str| {
            DecodeError::malformed(what).with_reply(ReplyContext {
                request_id: id,
                one_way: kind == MessageKind::OneWay,
                ..Default::default()
            })
        };
        let count = be_u16(&frame, 14).ok_or_else(|| bad("missing header count"))?;
        // The message owns the frame; the headers are read through a second handle on
        // it (a reference count, not a copy) and recorded as ranges of the frame.
        let mut msg = Message::new(kind, id, frame.clone());
        let mut at = HEAD_LEN;
        for _ in 0..count {
            let klen = be_u16(&frame, at).ok_or_else(|| bad("truncated header"))?;
            let key = frame
                .get(at + 2..at + 2 + klen)
                .ok_or_else(|| bad("truncated key"))?;
            at += 2 + klen;
            let vlen = be_u16(&frame, at).ok_or_else(|| bad("truncated header"))?;
            let value = frame
                .get(at + 2..at + 2 + vlen)
                .ok_or_else(|| bad("truncated value"))?;
            let (ks, vs) = (at - klen, at + 2);
            at += 2 + vlen;
            if std::str::from_utf8(key).is_err() || std::str::from_utf8(value).is_err() {
                return Err(bad("header is not UTF-8"));
            }
            // Checked UTF-8 above: set where they lie, without a slice of the frame each.
            msg.metadata_mut()
                .set_in_frame(ks..ks + klen, vs..vs + vlen);
        }
        msg.set_layout(KvLayout {
            headers_end: at as u32,
        });
        msg.set_status(match frame[5] {
            0 => ResponseStatus::Ok,
            1 => ResponseStatus::Exception,
            _ => ResponseStatus::Error,
        });
        Ok(Some(msg))
    }

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let frame = msg.frame();
        let headers_end = msg.layout::<KvLayout>().headers_end as usize;
        if frame.len() < HEAD_LEN || headers_end < HEAD_LEN || headers_end > frame.len() {
            return Err(EncodeError::Inconsistent("kv frame layout".into()));
        }
        if msg.mutations().is_empty() {
            dst.reserve(frame.len());
            dst.put_slice(&frame[..6]);
            dst.put_u64(msg.request_id());
            dst.put_slice(&frame[14..]);
            return Ok(());
        }
        // Rebuild the header section: existing headers not overridden, then mutations
        // (the last mutation of a key wins).
        let mutations = msg.mutations();
        let overridden = |k: &str| mutations.iter().any(|(mk, _)| &**mk == k);
        let start = dst.len();
        dst.put_u32(0);
        dst.put_slice(&frame[4..6]);
        dst.put_u64(msg.request_id());
        let count_at = dst.len();
        dst.put_u16(0);
        let mut count = 0u16;
        let mut put = |dst: &mut BytesMut, k: &str, v: &str| -> Result<(), EncodeError> {
            let (kl, vl) = (u16::try_from(k.len()), u16::try_from(v.len()));
            let (Ok(kl), Ok(vl)) = (kl, vl) else {
                return Err(EncodeError::TooLarge(k.len().max(v.len())));
            };
            dst.put_u16(kl);
            dst.put_slice(k.as_bytes());
            dst.put_u16(vl);
            dst.put_slice(v.as_bytes());
            count += 1;
            Ok(())
        };
        for (k, v) in msg.metadata().iter() {
            if !overridden(k) {
                put(dst, k, v)?;
            }
        }
        for (i, (k, v)) in mutations.iter().enumerate() {
            if !mutations[i + 1..].iter().any(|(later, _)| later == k) {
                put(dst, k, v)?;
            }
        }
        dst.put_slice(&frame[headers_end..]);
        let total = (dst.len() - start - 4) as u32;
        dst[start..start + 4].copy_from_slice(&total.to_be_bytes());
        dst[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
        Ok(())
    }

    fn encode_local_reply(
        &mut self,
        ctx: &ReplyContext,
        reply: &LocalReply<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        crate::frames::put_frame(
            dst,
            KIND_RESPONSE,
            Status::for_local_reply(reply.kind) as u8,
            ctx.request_id,
            &[],
            reply.message.as_bytes(),
        );
        Ok(())
    }

    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        crate::frames::put_frame(
            dst,
            KIND_HEARTBEAT_REPLY,
            0,
            heartbeat.request_id(),
            &[],
            b"",
        );
        Ok(())
    }

    fn encode_heartbeat(&mut self, id: u64, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        crate::frames::put_frame(dst, KIND_HEARTBEAT, 0, id, &[], b"");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames;
    use meta_protocol::testing::{check_decode_any_split, check_no_panic, check_roundtrip};
    use proptest::prelude::*;

    fn codec() -> KvCodec {
        KvCodec::new(1 << 20)
    }

    #[test]
    fn decodes_headers_as_metadata_sliced_from_the_frame() {
        let f = frames::request(7, &[("service", "calc"), ("method", "add")], b"1+2");
        let mut buf = BytesMut::from(&f[..]);
        let m = codec().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(m.kind(), MessageKind::Request);
        assert_eq!(m.request_id(), 7);
        assert_eq!(m.metadata().get("method"), Some("add"));
        let v = m.metadata().get("service").unwrap();
        let frame = m.frame();
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(range.contains(&(v.as_ptr() as usize)));
    }

    #[test]
    fn rejects_oversized_frame_from_the_header() {
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0, 0][..]);
        let e = KvCodec::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(
            e.kind,
            meta_protocol::DecodeErrorKind::FrameTooLarge { .. }
        ));
    }

    #[test]
    fn encode_rewrites_id_and_applies_mutations() {
        let f = frames::request(7, &[("a", "1"), ("b", "2")], b"body");
        let mut m = codec()
            .decode(&mut BytesMut::from(&f[..]))
            .unwrap()
            .unwrap();
        m.set_request_id(99);
        let mut out = BytesMut::new();
        codec().encode(&m, &mut out).unwrap();
        let back = codec().decode(&mut out.clone()).unwrap().unwrap();
        assert_eq!(back.request_id(), 99);
        assert_eq!(&out[14..], &f[14..]);
        m.push_mutation("b".into(), "x".into());
        m.push_mutation("c".into(), "y".into());
        m.push_mutation("c".into(), "z".into());
        let mut out = BytesMut::new();
        codec().encode(&m, &mut out).unwrap();
        let back = codec().decode(&mut out).unwrap().unwrap();
        assert_eq!(back.metadata().get("a"), Some("1"));
        assert_eq!(back.metadata().get("b"), Some("x"));
        assert_eq!(back.metadata().get("c"), Some("z"));
        assert_eq!(back.metadata().len(), 3);
        assert_eq!(frames::body(&back), b"body");
    }

    #[test]
    fn local_reply_is_a_response_with_status() {
        let ctx = ReplyContext {
            request_id: 5,
            ..Default::default()
        };
        let mut out = BytesMut::new();
        let reply = LocalReply::new(LocalReplyKind::Timeout, "too slow");
        codec().encode_local_reply(&ctx, &reply, &mut out).unwrap();
        let m = codec().decode(&mut out).unwrap().unwrap();
        assert_eq!(m.kind(), MessageKind::Response);
        assert_eq!(m.request_id(), 5);
        assert_eq!(frames::status(&m), Status::Timeout as u8);
        assert_eq!(frames::body(&m), b"too slow");
    }

    #[test]
    fn every_split_of_a_stream_decodes_the_same() {
        let stream = [
            frames::request(1, &[("service", "calc"), ("method", "add")], b"1+2"),
            frames::one_way(2, &[("service", "log")], b""),
            frames::heartbeat(3),
            frames::response(4, Status::Exception as u8, &[("k", "v")], b"boom"),
        ]
        .concat();
        let messages = check_decode_any_split(codec, &stream);
        let kinds: Vec<MessageKind> = messages.iter().map(Message::kind).collect();
        assert_eq!(
            kinds,
            [
                MessageKind::Request,
                MessageKind::OneWay,
                MessageKind::Heartbeat,
                MessageKind::Response
            ]
        );
        assert_eq!(messages[3].status(), ResponseStatus::Exception);
    }

    #[test]
    fn a_request_and_a_response_round_trip_with_a_rewritten_id() {
        let m = check_roundtrip(codec, &frames::request(7, &[("method", "add")], b"x"));
        assert_eq!(m.metadata().get("method"), Some("add"));
        let m = check_roundtrip(codec, &frames::response(7, 0, &[], b"3"));
        assert_eq!(m.kind(), MessageKind::Response);
    }

    fn header() -> impl Strategy<Value = (String, String)> {
        ("[a-z]{1,6}", "\\PC{0,8}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn generated_requests_decode_in_any_split_and_round_trip(
            id in any::<u64>(),
            headers in proptest::collection::vec(header(), 0..4),
            body in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let pairs: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let f = frames::request(id, &pairs, &body);
            let messages = check_decode_any_split(codec, &f);
            prop_assert_eq!(messages[0].request_id(), id);
            let m = check_roundtrip(codec, &f);
            for (k, _) in &headers {
                // The last of duplicate keys wins.
                let last = headers.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
                prop_assert_eq!(m.metadata().get(k), last);
            }
            prop_assert_eq!(frames::body(&m), &body[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            check_no_panic(codec, &bytes);
        }

        #[test]
        fn a_mangled_valid_frame_never_panics(cut in 0usize..64, flip in 0usize..64, bit in 0u8..8) {
            let mut f = frames::request(1, &[("k", "v"), ("method", "m")], b"0123456789").to_vec();
            let at = flip % f.len();
            f[at] ^= 1 << bit;
            f.truncate(f.len() - cut.min(f.len()));
            check_no_panic(codec, &f);
        }
    }
}
