//! `kvline`: the kv protocol's text twin, one frame per line. It shows how to frame a
//! protocol that has no length header: a frame ends at `\n`, the codec remembers how far
//! it has already scanned so a frame arriving in many reads is scanned once (not once
//! per read, which would be quadratic), and a line longer than `max_frame_size` is an
//! error as soon as that many bytes are buffered without a newline.
//!
//! A frame is space-separated ASCII tokens ending in `\n`:
//!
//! | frame | meaning |
//! |---|---|
//! | `> <id> <method> [key=value ...]` | request; `method` and every pair are metadata |
//! | `! <id> <method> [key=value ...]` | one-way request |
//! | `< <id> <status> [key=value ...]` | response; status `ok`, `exception`, anything else is an error |
//! | `? <id>` | heartbeat; answered `. <id>` |
//!
//! Ids are decimal `u64`. Values cannot hold spaces; a local reply is
//! `< <id> <reason> message=<text>` with the text's `%`, space, CR and LF escaped as
//! `%25`, `%20`, `%0D` and `%0A`.

use bytes::{BufMut, BytesMut};
use meta_protocol::{
    reject_options, Codec, CodecContext, CodecError, CodecFactory, CodecOptions,
    ConfiguredProtocol, DecodeError, EncodeError, FrameLayout, LayoutWords, LocalReply, Message,
    MessageKind, MetaStr, ReplyContext, ResponseStatus,
};

/// Creates [`LineCodec`]s; registered as `kvline`. Accepts no options.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineCodecFactory;

impl CodecFactory for LineCodecFactory {
    fn name(&self) -> &str {
        "kvline"
    }

    fn configure(&self, options: &CodecOptions) -> Result<Box<dyn ConfiguredProtocol>, CodecError> {
        reject_options(options)?;
        Ok(Box::new(|ctx: &CodecContext| -> Box<dyn Codec> {
            Box::new(LineCodec::new(ctx.max_frame_size))
        }))
    }
}

/// Where a line's parts are: recorded by decode, read by encode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineLayout {
    /// Offset of the space after the id.
    pub id_end: u32,
    /// Offset of the first `key=value` pair (the newline's offset when there is none).
    pub pairs_start: u32,
}

impl FrameLayout for LineLayout {
    fn to_words(self) -> LayoutWords {
        LayoutWords::new([self.id_end, self.pairs_start, 0, 0, 0, 0])
    }

    fn from_words(words: LayoutWords) -> Self {
        let [id_end, pairs_start, ..] = words.words();
        LineLayout {
            id_end,
            pairs_start,
        }
    }
}

/// One connection's `kvline` codec.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_frame_size: usize,
    /// Bytes at the front of the buffer already known to hold no newline.
    scanned: usize,
}

impl LineCodec {
    /// A codec refusing lines longer than `max_frame_size` bytes (newline included).
    pub fn new(max_frame_size: usize) -> Self {
        LineCodec {
            max_frame_size,
            scanned: 0,
        }
    }
}

fn parse_id(token: &[u8]) -> Option<u64> {
    if token.is_empty() || token.len() > 20 || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

impl Codec for LineCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        // Scan only the bytes appended since the last call.
        let newline = src
            .get(self.scanned..)
            .and_then(|fresh| fresh.iter().position(|&b| b == b'\n'));
        let Some(at) = newline else {
            self.scanned = src.len();
            if src.len() > self.max_frame_size {
                return Err(DecodeError::too_large(
                    src.len() as u64,
                    self.max_frame_size,
                ));
            }
            return Ok(None);
        };
        let len = self.scanned + at + 1;
        self.scanned = 0;
        if len > self.max_frame_size {
            return Err(DecodeError::too_large(len as u64, self.max_frame_size));
        }
        let frame = src.split_to(len).freeze();
        let line = &frame[..len - 1];
        let mut tokens = line.split(|&b| b == b' ');
        let sigil = tokens.next().unwrap_or_default();
        let id_token = tokens.next().unwrap_or_default();
        let id = parse_id(id_token).ok_or_else(|| DecodeError::malformed("bad request id"))?;
        let id_end = 2 + id_token.len();
        let kind = match sigil {
            b">" => MessageKind::Request,
            b"!" => MessageKind::OneWay,
            b"<" => MessageKind::Response,
            b"?" => MessageKind::Heartbeat,
            b"." => MessageKind::Event,
            _ => return Err(DecodeError::malformed("unknown frame sigil")),
        };
        let bad = |what: &'static str| {
            DecodeError::malformed(what).with_reply(ReplyContext {
                request_id: id,
                one_way: kind == MessageKind::OneWay,
                ..ReplyContext::default()
            })
        };
        let mut msg = Message::new(kind, id, frame.clone());
        let word_end = match tokens.next() {
            None => id_end,
            Some(word) => {
                let (start, end) = (id_end + 1, id_end + 1 + word.len());
                let word = MetaStr::try_from(frame.slice(start..end))
                    .map_err(|_| bad("method is not UTF-8"))?;
                match kind {
                    MessageKind::Request | MessageKind::OneWay => {
                        msg.metadata_mut().set(MetaStr::from_static("method"), word)
                    }
                    _ => msg.set_status(match &*word {
                        "ok" => ResponseStatus::Ok,
                        "exception" => ResponseStatus::Exception,
                        _ => ResponseStatus::Error,
                    }),
                }
                end
            }
        };
        let pairs_start = (word_end + 1).min(len - 1);
        let mut at = pairs_start;
        for pair in tokens {
            let eq = pair
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| bad("a pair without '='"))?;
            let key =
                MetaStr::try_from(frame.slice(at..at + eq)).map_err(|_| bad("key is not UTF-8"))?;
            let value = MetaStr::try_from(frame.slice(at + eq + 1..at + pair.len()))
                .map_err(|_| bad("value is not UTF-8"))?;
            msg.metadata_mut().set(key, value);
            at += pair.len() + 1;
        }
        msg.set_layout(LineLayout {
            id_end: id_end as u32,
            pairs_start: pairs_start as u32,
        });
        Ok(Some(msg))
    }

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let frame = msg.frame();
        let layout: LineLayout = msg.layout();
        let (id_end, pairs_start) = (layout.id_end as usize, layout.pairs_start as usize);
        if !(2 <= id_end && id_end <= pairs_start && pairs_start < frame.len()) {
            return Err(EncodeError::Inconsistent("kvline layout".into()));
        }
        dst.reserve(frame.len() + 24);
        dst.put_slice(&frame[..2]);
        dst.put_slice(msg.request_id().to_string().as_bytes());
        let mutations = msg.mutations();
        if mutations.is_empty() {
            dst.put_slice(&frame[id_end..]);
            return Ok(());
        }
        // Keep the method (or status) word, then the pairs not overridden, then the
        // mutations (the last of a key wins).
        dst.put_slice(&frame[id_end..pairs_start]);
        let overridden = |k: &[u8]| mutations.iter().any(|(m, _)| m.as_bytes() == k);
        let mut first = pairs_start == frame.len() - 1 && frame[pairs_start - 1] != b' ';
        let mut put = |dst: &mut BytesMut, pair: &[&[u8]]| {
            if first {
                dst.put_u8(b' ');
                first = false;
            }
            for part in pair {
                dst.put_slice(part);
            }
            dst.put_u8(b' ');
        };
        for pair in frame[pairs_start..frame.len() - 1]
            .split(|&b| b == b' ')
            .filter(|p| !p.is_empty())
        {
            let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
            if !overridden(key) {
                put(dst, &[pair]);
            }
        }
        for (i, (k, v)) in mutations.iter().enumerate() {
            if mutations[i + 1..].iter().any(|(later, _)| later == k) {
                continue;
            }
            let plain = |s: &str| !s.bytes().any(|b| b == b' ' || b == b'\n' || b == b'\r');
            if !plain(k) || !plain(v) || k.contains('=') {
                return Err(EncodeError::Unsupported(
                    "kvline pairs cannot hold spaces, line breaks or '=' in keys".into(),
                ));
            }
            put(dst, &[k.as_bytes(), b"=", v.as_bytes()]);
        }
        // Replace the last separator with the newline.
        if dst.last() == Some(&b' ') {
            dst.truncate(dst.len() - 1);
        }
        dst.put_u8(b'\n');
        Ok(())
    }

    fn encode_local_reply(
        &mut self,
        ctx: &ReplyContext,
        reply: &LocalReply<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        dst.put_slice(b"< ");
        dst.put_slice(ctx.request_id.to_string().as_bytes());
        dst.put_u8(b' ');
        dst.put_slice(reply.kind.as_str().as_bytes());
        dst.put_slice(b" message=");
        for &b in reply.message.as_bytes() {
            match b {
                b'%' => dst.put_slice(b"%25"),
                b' ' => dst.put_slice(b"%20"),
                b'\r' => dst.put_slice(b"%0D"),
                b'\n' => dst.put_slice(b"%0A"),
                b => dst.put_u8(b),
            }
        }
        dst.put_u8(b'\n');
        Ok(())
    }

    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        dst.put_slice(format!(". {}\n", heartbeat.request_id()).as_bytes());
        Ok(())
    }

    fn encode_heartbeat(&mut self, id: u64, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        dst.put_slice(format!("? {id}\n").as_bytes());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meta_protocol::testing::{check_decode_any_split, check_no_panic, check_roundtrip};
    use meta_protocol::{LocalReplyKind, DEFAULT_MAX_FRAME_SIZE};
    use proptest::prelude::*;

    fn codec() -> LineCodec {
        LineCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }

    fn decode_all(bytes: &[u8]) -> Vec<Message> {
        check_decode_any_split(codec, bytes)
    }

    #[test]
    fn every_kind_decodes_in_any_split() {
        let messages = decode_all(
            b"> 1 add service=calc tenant=t1\n! 2 log\n< 1 ok\n< 3 exception why=x\n? 4\n. 4\n",
        );
        let summary: Vec<(MessageKind, u64)> = messages
            .iter()
            .map(|m| (m.kind(), m.request_id()))
            .collect();
        assert_eq!(
            summary,
            [
                (MessageKind::Request, 1),
                (MessageKind::OneWay, 2),
                (MessageKind::Response, 1),
                (MessageKind::Response, 3),
                (MessageKind::Heartbeat, 4),
                (MessageKind::Event, 4),
            ]
        );
        let md = messages[0].metadata();
        assert_eq!(
            (md.get("method"), md.get("service"), md.get("tenant")),
            (Some("add"), Some("calc"), Some("t1"))
        );
        assert_eq!(messages[3].status(), ResponseStatus::Exception);
        assert_eq!(messages[3].metadata().get("why"), Some("x"));
    }

    #[test]
    fn a_long_line_is_scanned_once() {
        let mut c = codec();
        let mut buf = BytesMut::from(&b"> 1 m k="[..]);
        for _ in 0..100 {
            buf.extend_from_slice(&[b'v'; 1000]);
            assert!(c.decode(&mut buf).unwrap().is_none());
            // The next call starts where this one stopped.
            assert_eq!(c.scanned, buf.len());
        }
        buf.extend_from_slice(b"\n");
        let m = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(m.metadata().get("k").map(str::len), Some(100_000));
        assert_eq!(c.scanned, 0);
    }

    #[test]
    fn a_line_without_an_end_is_refused_at_the_limit() {
        let mut c = LineCodec::new(64);
        let mut buf = BytesMut::from(&[b'x'; 64][..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"x");
        let e = c.decode(&mut buf).unwrap_err();
        assert!(matches!(
            e.kind,
            meta_protocol::DecodeErrorKind::FrameTooLarge { size: 65, max: 64 }
        ));
    }

    #[test]
    fn mutations_replace_and_add_pairs() {
        let mut m = decode_all(b"> 7 add a=1 b=2\n").remove(0);
        m.push_mutation("b".into(), "x".into());
        m.push_mutation("c".into(), "y".into());
        m.set_request_id(70);
        let mut out = BytesMut::new();
        codec().encode(&m, &mut out).unwrap();
        assert_eq!(&out[..], b"> 70 add a=1 b=x c=y\n");
        let mut m = decode_all(b"< 7 ok\n").remove(0);
        m.push_mutation("x-proxy".into(), "metaproxy".into());
        let mut out = BytesMut::new();
        codec().encode(&m, &mut out).unwrap();
        assert_eq!(&out[..], b"< 7 ok x-proxy=metaproxy\n");
    }

    #[test]
    fn local_reply_escapes_any_text() {
        let ctx = ReplyContext {
            request_id: 9,
            ..ReplyContext::default()
        };
        let reply = LocalReply::new(LocalReplyKind::NoRoute, "metaproxy: no route\n100% é");
        let mut out = BytesMut::new();
        codec().encode_local_reply(&ctx, &reply, &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "< 9 no_route message=metaproxy:%20no%20route%0A100%25%20é\n"
        );
        let m = decode_all(&out).remove(0);
        assert_eq!((m.request_id(), m.status()), (9, ResponseStatus::Error));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn generated_requests_round_trip(
            id in any::<u64>(),
            method in "[a-z]{1,8}",
            pairs in proptest::collection::vec(("[a-z]{1,5}", "[!-~&&[^=]]{0,6}"), 0..4),
        ) {
            let mut line = format!("> {id} {method}");
            for (k, v) in &pairs {
                line.push_str(&format!(" {k}={v}"));
            }
            line.push('\n');
            let m = check_roundtrip(codec, line.as_bytes());
            prop_assert_eq!(m.metadata().get("method"), Some(method.as_str()));
            decode_all(line.as_bytes());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            check_no_panic(codec, &bytes);
        }
    }
}
