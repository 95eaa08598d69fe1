//! The `thrift` codec: factory, per-connection codec, decode, encode and local replies.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use meta_protocol::{
    CallName, Codec, CodecCapabilities, CodecContext, CodecError, CodecFactory, CodecOptions,
    ConfiguredProtocol, DecodeError, DecodeErrorKind, EncodeError, FrameLayout, LayoutWords,
    LocalReply, LocalReplyKind, Message, MessageKind, ReplyContext, ResponseStatus, Side,
    WellKnownKey,
};

use crate::format::{split_wire, wire_format, Protocol, ThriftOptions, Transport};
use crate::read::{
    first_field_id, for_each_info_header, mtype, read_msg_head, read_theader, skip_struct,
    sniff_protocol, strict_binary_head, Cursor, Fault, MsgHead, HEADER_MAGIC, HEADER_SECTION,
    MAX_DEPTH,
};
use crate::write::{varint_len, write_frame, write_header_section, ProtoWriter};

/// TApplicationException types the proxy sends in local replies (see the crate's
/// README for which reply uses which).
pub mod app_exception {
    /// 0: unknown; sent when a filter denies the request (`forbidden`).
    pub const UNKNOWN: i32 = 0;
    /// 1: no route matched the method.
    pub const UNKNOWN_METHOD: i32 = 1;
    /// 6: upstream failure, timeout, overload, or a filter's rate limit.
    pub const INTERNAL_ERROR: i32 = 6;
    /// 7: the request could not be decoded.
    pub const PROTOCOL_ERROR: i32 = 7;
}

/// Creates [`ThriftCodec`]s; registered as `thrift`.
///
/// Options: `transport: framed|unframed|header|auto` and `protocol:
/// binary|compact|auto` (defaults `auto`/`auto`). Capabilities: multiplexing always
/// (replies carry the sequence id); mutations only where the header transport can be
/// spoken, i.e. `transport: header`, and also `auto`, because an auto listener may
/// carry header-transport clients (on framed/unframed connections mutations are then
/// ignored at encode).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThriftCodecFactory;

impl ThriftCodecFactory {
    /// The factory.
    pub fn new() -> Self {
        ThriftCodecFactory
    }
}

impl CodecFactory for ThriftCodecFactory {
    fn name(&self) -> &str {
        "thrift"
    }

    fn configure(&self, options: &CodecOptions) -> Result<Box<dyn ConfiguredProtocol>, CodecError> {
        Ok(Box::new(ThriftOptions::parse(options)?))
    }
}

/// Thrift configured by a listener's options: multiplexing always (replies carry the
/// sequence id); mutations where the header transport can be spoken (`header` and
/// `auto`).
impl ConfiguredProtocol for ThriftOptions {
    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities {
            multiplexing: true,
            mutations: matches!(self.transport, None | Some(Transport::Header)),
            eager_keys: &[],
        }
    }

    fn new_codec(&self, ctx: &CodecContext) -> Result<Box<dyn Codec>, CodecError> {
        Ok(Box::new(ThriftCodec::for_connection(self, ctx)?))
    }
}

/// Where the parts of a Thrift message are in its frame, recorded on decode and read by
/// encode (and by [`crate::frames`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThriftLayout {
    /// Offset of the sequence id.
    pub seqid_at: u32,
    /// Length of the encoded sequence id: 4 (binary) or 1 to 5 (a compact varint).
    pub seqid_len: u32,
    /// Offset of the argument or result struct.
    pub body: u32,
    /// Offset of the message header (name, type, sequence id): 0 unframed, 4 framed,
    /// the end of the header section with the header transport.
    pub payload: u32,
    /// Header transport only: offset of the info headers (0 otherwise).
    pub info_start: u32,
}

impl FrameLayout for ThriftLayout {
    fn to_words(self) -> LayoutWords {
        LayoutWords::new([
            self.seqid_at,
            self.seqid_len,
            self.body,
            self.payload,
            self.info_start,
            0,
        ])
    }

    fn from_words(words: LayoutWords) -> Self {
        let [seqid_at, seqid_len, body, payload, info_start, _] = words.words();
        ThriftLayout {
            seqid_at,
            seqid_len,
            body,
            payload,
            info_start,
        }
    }
}

/// The Thrift codec for one connection.
///
/// Downstream, with `auto` options, the transport and protocol are detected from the
/// first frame and then kept for the connection. Upstream, the codec speaks exactly
/// the wire format given in [`CodecContext::wire`] (see [`ThriftCodec::for_connection`]).
#[derive(Clone, Debug)]
pub struct ThriftCodec {
    transport: Option<Transport>,
    protocol: Option<Protocol>,
    max_frame_size: usize,
    /// Unframed only: `src` must hold at least this many bytes before re-skipping.
    need: usize,
    /// Whether responses are decoded head first ([`ThriftCodec::with_lazy_metadata`]).
    lazy_metadata: bool,
}

impl ThriftCodec {
    /// A codec with fixed (or `None` = auto-detected) transport and protocol.
    pub fn new(
        transport: Option<Transport>,
        protocol: Option<Protocol>,
        max_frame_size: usize,
    ) -> Self {
        ThriftCodec {
            transport,
            protocol,
            max_frame_size,
            need: 0,
            lazy_metadata: false,
        }
    }

    /// Decodes responses head first, the rest on demand ([`Codec::decode_metadata`], see
    /// [`CodecContext::lazy_metadata`]). A reply or exception is read as far as
    /// forwarding it needs: its kind, sequence id, status (the first field of the
    /// result struct), wire format and layout. Its name, its `method` and `service`
    /// metadata and, on the header transport, its info headers wait. Calls are always
    /// read in full.
    pub fn with_lazy_metadata(mut self, lazy: bool) -> Self {
        self.lazy_metadata = lazy;
        self
    }

    /// A codec for one connection: with the listener's options downstream, speaking
    /// `ctx.wire` upstream.
    pub fn for_connection(o: &ThriftOptions, ctx: &CodecContext) -> Result<Self, CodecError> {
        let mut codec = ThriftCodec::new(o.transport, o.protocol, ctx.max_frame_size)
            .with_lazy_metadata(ctx.lazy_metadata);
        if ctx.side == Side::Upstream {
            if let Some(wire) = ctx.wire {
                let (t, p) = split_wire(wire).ok_or_else(|| CodecError::InvalidOption {
                    key: "wire".into(),
                    message: format!("{wire:?} is not a thrift wire format"),
                })?;
                codec.transport = Some(t);
                codec.protocol = Some(p);
            }
        }
        Ok(codec)
    }

    /// The transport in use (`None` until detected).
    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// The protocol in use (`None` until detected).
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    fn sniff(&mut self, b0: u8) -> Result<Protocol, DecodeError> {
        let p = sniff_protocol(b0).map_err(fault)?;
        match self.protocol {
            Some(want) if want != p => Err(DecodeError::new(DecodeErrorKind::BadMagic(
                format!(
                    "expected the {} protocol, got {}",
                    want.as_str(),
                    p.as_str()
                )
                .into(),
            ))),
            Some(_) => Ok(p),
            None => {
                self.protocol = Some(p);
                Ok(p)
            }
        }
    }

    #[inline(always)]
    fn decode_framed(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let Some(len) = be_u32(src, 0) else {
            return Ok(None);
        };
        let len = len as usize;
        if len > self.max_frame_size {
            return Err(self.over_limit(src, len, 4, Transport::Framed));
        }
        let b0 = match src.get(4) {
            Some(&b) => b,
            None if len == 0 => return Err(DecodeError::malformed("empty frame")),
            None => return Ok(None),
        };
        let protocol = self.sniff(b0)?;
        if src.len() < 4 + len {
            return Ok(None);
        }
        let f = src.get(..4 + len).unwrap_or_default();
        let head = match strict_binary_head(f, 4) {
            Some(h) if protocol == Protocol::Binary => h,
            _ => read_msg_head(&mut Cursor::at(f, 4), protocol).map_err(in_frame)?,
        };
        let status = response_status(f, &head, protocol)?;
        let frame = src.split_to(4 + len).freeze();
        let layout = ThriftLayout {
            seqid_at: head.seqid_off as u32,
            seqid_len: head.seqid_len as u32,
            body: head.body as u32,
            payload: 4,
            info_start: 0,
        };
        build(
            frame,
            &head,
            Transport::Framed,
            protocol,
            status,
            layout,
            self.lazy_metadata,
        )
    }

    fn decode_unframed(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let Some(&b0) = src.first() else {
            return Ok(None);
        };
        let protocol = self.sniff(b0)?;
        if src.len() < self.need {
            return Ok(None);
        }
        let limit = self.max_frame_size;
        let view = src.get(..src.len().min(limit)).unwrap_or_default();
        let mut c = Cursor::new(view);
        let head = match read_msg_head(&mut c, protocol) {
            Ok(h) => h,
            Err(Fault::Incomplete(n)) => return self.incomplete(n),
            Err(f) => return Err(fault(f)),
        };
        if !(mtype::CALL..=mtype::ONEWAY).contains(&head.mtype) {
            return Err(bad_type(view, &head, Transport::Unframed, protocol));
        }
        match skip_struct(&mut c, protocol) {
            Ok(()) => {}
            Err(Fault::Incomplete(n)) => {
                return self.incomplete(n).map_err(|e| {
                    match reply_ctx(view, &head, Transport::Unframed, protocol) {
                        Some(r) if head.mtype != mtype::REPLY => e.with_reply(r),
                        _ => e,
                    }
                })
            }
            Err(f) => {
                let e = fault(f);
                return Err(
                    match reply_ctx(view, &head, Transport::Unframed, protocol) {
                        Some(r) => e.with_reply(r),
                        None => e,
                    },
                );
            }
        }
        self.need = 0;
        let end = c.pos();
        let status = response_status(view, &head, protocol)?;
        let frame = src.split_to(end).freeze();
        let layout = ThriftLayout {
            seqid_at: head.seqid_off as u32,
            seqid_len: head.seqid_len as u32,
            body: head.body as u32,
            payload: 0,
            info_start: 0,
        };
        build(
            frame,
            &head,
            Transport::Unframed,
            protocol,
            status,
            layout,
            self.lazy_metadata,
        )
    }

    /// The error for a frame of `len` bytes over the limit, answerable (with a
    /// `TApplicationException` PROTOCOL_ERROR) when the bytes already buffered hold
    /// the message header with the method name and seqid of a call. The frame body
    /// is never waited for.
    fn over_limit(&self, src: &[u8], len: usize, start: usize, t: Transport) -> DecodeError {
        let e = DecodeError::too_large(len as u64, self.max_frame_size);
        let Some(protocol) = src
            .get(start)
            .and_then(|&b0| sniff_protocol(b0).ok())
            .filter(|p| self.protocol.is_none_or(|want| want == *p))
        else {
            return e;
        };
        let view = src.get(..src.len().min(start + len)).unwrap_or_default();
        match read_msg_head(&mut Cursor::at(view, start), protocol) {
            Ok(head) if head.mtype == mtype::CALL || head.mtype == mtype::ONEWAY => {
                match reply_ctx(view, &head, t, protocol) {
                    Some(r) => e.with_reply(r),
                    None => e,
                }
            }
            _ => e,
        }
    }

    /// An unframed message needs at least `n` bytes in all.
    fn incomplete(&mut self, n: usize) -> Result<Option<Message>, DecodeError> {
        if n > self.max_frame_size {
            return Err(DecodeError::too_large(n as u64, self.max_frame_size));
        }
        self.need = n;
        Ok(None)
    }

    fn decode_header(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let Some(len) = be_u32(src, 0) else {
            return Ok(None);
        };
        let len = len as usize;
        if len > self.max_frame_size {
            // Answerable when the header section and the message header arrived.
            return Err(match read_theader(src) {
                Ok(th) => self.over_limit(src, len, th.payload, Transport::Header),
                Err(_) => DecodeError::too_large(len as u64, self.max_frame_size),
            });
        }
        if len < HEADER_SECTION - 4 {
            return Err(DecodeError::malformed(
                "THeader frame shorter than its fixed header",
            ));
        }
        match src.get(4..6) {
            Some(m) if m == HEADER_MAGIC.to_be_bytes() => {}
            Some(_) => {
                return Err(DecodeError::new(DecodeErrorKind::BadMagic(
                    "not a THeader frame (magic 0x0fff)".into(),
                )))
            }
            None => return Ok(None),
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        let f = src.get(..4 + len).unwrap_or_default();
        let header_seqid = be_u32(f, 8).unwrap_or(0);
        let th = read_theader(f).map_err(|e| {
            let reply = ReplyContext {
                request_id: u64::from(header_seqid),
                wire: wire_format(Transport::Header, self.protocol.unwrap_or(Protocol::Binary)),
                name: CallName::new(),
                one_way: false,
            };
            fault(e).with_reply(reply)
        })?;
        if let Some(want) = self.protocol {
            if want != th.protocol {
                return Err(DecodeError::new(DecodeErrorKind::BadMagic(
                    format!(
                        "expected the {} protocol, THeader says {}",
                        want.as_str(),
                        th.protocol.as_str()
                    )
                    .into(),
                )));
            }
        }
        let protocol = th.protocol;
        self.protocol = Some(protocol);
        let mut c = Cursor::at(f, th.payload);
        let head = read_msg_head(&mut c, protocol).map_err(in_frame)?;
        let status = response_status(f, &head, protocol)?;
        let frame = src.split_to(4 + len).freeze();
        let layout = ThriftLayout {
            seqid_at: head.seqid_off as u32,
            seqid_len: head.seqid_len as u32,
            body: head.body as u32,
            payload: th.payload as u32,
            info_start: th.info_start as u32,
        };
        let mut msg = build(
            frame,
            &head,
            Transport::Header,
            protocol,
            status,
            layout,
            self.lazy_metadata,
        )?
        .ok_or_else(|| DecodeError::malformed("empty message"))?;
        if !msg.metadata_deferred() {
            // Each info header becomes metadata (the frame is already consumed, but a
            // bad header closes the connection anyway).
            read_info_headers(&mut msg, th.info_start, th.payload)?;
        }
        Ok(Some(msg))
    }

    fn detect(&mut self, src: &BytesMut) -> Result<Option<Transport>, DecodeError> {
        let Some(&b0) = src.first() else {
            return Ok(None);
        };
        let t = if b0 == 0x80 || b0 == 0x82 {
            Transport::Unframed
        } else {
            // Bytes 4.. of a framed message start a strict/compact message (0x80, 0x82)
            // or an old non-strict one (the high byte of a name length: 0); anything
            // else there is the name of an unframed old non-strict message.
            match src.get(4..6) {
                None => return Ok(None),
                Some(m) if m == HEADER_MAGIC.to_be_bytes() => Transport::Header,
                Some(&[0x80 | 0x82 | 0x00, _]) => Transport::Framed,
                Some(_) => Transport::Unframed,
            }
        };
        self.transport = Some(t);
        Ok(Some(t))
    }

    fn encode_rewrite(
        &self,
        msg: &Message,
        t: Transport,
        p: Protocol,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let frame = msg.frame();
        let layout: ThriftLayout = msg.layout();
        let [seq_off, seq_len, payload, info_start] = [
            layout.seqid_at,
            layout.seqid_len,
            layout.payload,
            layout.info_start,
        ]
        .map(|v| v as usize);
        let seqid = u32::try_from(msg.request_id()).map_err(|_| {
            EncodeError::Unsupported("request id does not fit a 32-bit thrift sequence id".into())
        })?;
        if seq_off.checked_add(seq_len).is_none_or(|e| e > frame.len()) || seq_off < payload {
            return Err(EncodeError::Inconsistent(
                "sequence id outside the frame".into(),
            ));
        }
        let mut seq = [0u8; 5];
        let new_len = match p {
            Protocol::Binary => {
                seq[..4].copy_from_slice(&seqid.to_be_bytes());
                4
            }
            Protocol::Compact => {
                let n = varint_len(u64::from(seqid));
                let mut v = seqid;
                for s in seq.iter_mut().take(n) {
                    *s = (v as u8 & 0x7f) | if v >= 0x80 { 0x80 } else { 0 };
                    v >>= 7;
                }
                n
            }
        };
        let seq = &seq[..new_len];
        if new_len == seq_len && t != Transport::Header {
            // The same width (always so in the binary protocol): the frame as it is, one
            // copy, with the new sequence id written over the old. The frame's length
            // prefix, if any, is unchanged. (The binary arm is `seq` too, written as a
            // fixed four-byte store rather than a `memcpy` call of a variable length.)
            let at = dst.len() + seq_off;
            dst.extend_from_slice(frame);
            match p {
                Protocol::Binary => dst[at..at + 4].copy_from_slice(&seqid.to_be_bytes()),
                Protocol::Compact => dst[at..at + new_len].copy_from_slice(seq),
            }
            return Ok(());
        }
        let tail = &frame[seq_off + seq_len..];
        match t {
            Transport::Unframed => {
                dst.reserve(frame.len() + 4);
                dst.put_slice(&frame[..seq_off]);
                dst.put_slice(seq);
                dst.put_slice(tail);
            }
            Transport::Framed => {
                let body = frame.len() - 4 - seq_len + new_len;
                let body = u32::try_from(body).map_err(|_| EncodeError::TooLarge(body))?;
                dst.reserve(frame.len() + 4);
                dst.put_u32(body);
                dst.put_slice(&frame[4..seq_off]);
                dst.put_slice(seq);
                dst.put_slice(tail);
            }
            Transport::Header => {
                if frame.len() < HEADER_SECTION || payload < HEADER_SECTION || info_start > payload
                {
                    return Err(EncodeError::Inconsistent(
                        "THeader layout outside the frame".into(),
                    ));
                }
                let start = dst.len();
                dst.reserve(frame.len() + 4);
                dst.put_u32(0);
                dst.put_slice(&frame[4..8]);
                dst.put_u32(seqid);
                if msg.mutations().is_empty() {
                    dst.put_slice(&frame[12..seq_off]);
                } else {
                    let hl = dst.len();
                    dst.put_u16(0);
                    let hs = dst.len();
                    merge_headers(frame, info_start, payload, p, msg, dst)?;
                    let words = (dst.len() - hs) / 4;
                    let words =
                        u16::try_from(words).map_err(|_| EncodeError::TooLarge(dst.len() - hs))?;
                    dst[hl..hs].copy_from_slice(&words.to_be_bytes());
                    dst.put_slice(&frame[payload..seq_off]);
                }
                dst.put_slice(seq);
                dst.put_slice(tail);
                let len = dst.len() - start - 4;
                let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLarge(len))?;
                dst[start..start + 4].copy_from_slice(&len32.to_be_bytes());
            }
        }
        Ok(())
    }
}

/// Re-serialises a THeader header section with the message's mutations merged into the
/// key/value headers (a mutation replaces a header of the same key; the last mutation
/// of a key wins). Transforms and unknown info sections are kept verbatim.
fn merge_headers(
    frame: &Bytes,
    info_start: usize,
    payload: usize,
    p: Protocol,
    msg: &Message,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
    let stop = for_each_info_header(frame, info_start, payload, |(ks, ke), (vs, ve)| {
        pairs.push((&frame[ks..ke], &frame[vs..ve]));
        Ok(())
    })
    .map_err(|_| EncodeError::Inconsistent("THeader info headers do not parse".into()))?;
    let muts = msg.mutations();
    for (i, (k, v)) in muts.iter().enumerate() {
        if muts.iter().skip(i + 1).any(|(k2, _)| k2 == k) {
            continue; // a later mutation of the same key wins
        }
        match pairs.iter_mut().find(|(pk, _)| *pk == k.as_bytes()) {
            Some(pair) => pair.1 = v.as_bytes(),
            None => pairs.push((k.as_bytes(), v.as_bytes())),
        }
    }
    // Drop duplicates of an overridden key that an earlier section may have carried.
    let mut unique: Vec<(&[u8], &[u8])> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs.iter().rev() {
        if !unique.iter().any(|(uk, _)| uk == k) {
            unique.push((k, v));
        }
    }
    unique.reverse();
    // Protocol id + transforms as they were (a count of 0 after the protocol id).
    let mut c = Cursor::at(frame, HEADER_SECTION);
    let _ = c.varint(5);
    let transforms = frame.get(c.pos()..info_start).unwrap_or(&[0]);
    // What follows the key/value sections: nothing but padding is dropped; an unknown
    // info section is kept verbatim, zeros included (they may end one of its varints;
    // found by fuzzing).
    let tail = frame.get(stop..payload).unwrap_or_default();
    let tail = if tail.iter().all(|&b| b == 0) {
        &[][..]
    } else {
        tail
    };
    write_header_section(dst, p, transforms, &unique, tail);
    Ok(())
}

impl Codec for ThriftCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let transport = match self.transport {
            Some(t) => t,
            None => match self.detect(src)? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        match transport {
            Transport::Framed => self.decode_framed(src),
            Transport::Unframed => self.decode_unframed(src),
            Transport::Header => self.decode_header(src),
        }
    }

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let (t, p) = split_wire(msg.wire()).ok_or_else(|| {
            EncodeError::Inconsistent(
                format!("{:?} is not a thrift wire format", msg.wire()).into(),
            )
        })?;
        if let Some(mine) = self.transport {
            if mine != t {
                return Err(EncodeError::Unsupported(
                    format!(
                        "a {} message cannot be sent on a {} connection",
                        t.as_str(),
                        mine.as_str()
                    )
                    .into(),
                ));
            }
        }
        if msg.metadata_deferred() && t == Transport::Header && !msg.mutations().is_empty() {
            // Mutations are merged into the info headers. The bytes come from the frame
            // and the layout alone, but the rest is read on a copy first (it shares the
            // frame; only when a response left unread is mutated), so a tail an eager
            // decode would have refused is refused here too, not forwarded mutated.
            let mut read = msg.clone();
            self.decode_metadata(&mut read)
                .map_err(|e| EncodeError::Inconsistent(e.to_string().into()))?;
            return self.encode_rewrite(&read, t, p, dst);
        }
        self.encode_rewrite(msg, t, p, dst)
    }

    fn decode_metadata(&mut self, msg: &mut Message) -> Result<(), DecodeError> {
        if !msg.metadata_deferred() {
            return Ok(());
        }
        read_response_rest(msg)?;
        msg.set_metadata_deferred(false);
        Ok(())
    }

    fn encode_local_reply(
        &mut self,
        ctx: &ReplyContext,
        reply: &LocalReply<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let (t, p) = split_wire(ctx.wire).unwrap_or((
            self.transport.unwrap_or(Transport::Framed),
            self.protocol.unwrap_or(Protocol::Binary),
        ));
        let (ty, text) = local_reply_text(reply);
        let seqid = ctx.request_id as u32;
        write_frame(dst, t, p, seqid, &[], |w| {
            write_app_exception(w, &ctx.name, seqid, ty, &text)
        })
        .map_err(|e| EncodeError::Unsupported(e.into()))
    }
}

/// The TApplicationException type and message for a local reply.
pub(crate) fn local_reply_text<'a>(reply: &LocalReply<'a>) -> (i32, Cow<'a, str>) {
    let ensure = |word: &str| -> Cow<'a, str> {
        if reply.message.to_ascii_lowercase().contains(word) {
            Cow::Borrowed(reply.message)
        } else if reply.message.is_empty() {
            Cow::Owned(format!("metaproxy: {word}"))
        } else {
            Cow::Owned(format!("metaproxy: {word}: {}", reply.message))
        }
    };
    match reply.kind {
        LocalReplyKind::NoRoute => (app_exception::UNKNOWN_METHOD, Cow::Borrowed(reply.message)),
        LocalReplyKind::UpstreamFailure => {
            (app_exception::INTERNAL_ERROR, Cow::Borrowed(reply.message))
        }
        LocalReplyKind::Timeout => (app_exception::INTERNAL_ERROR, ensure("timeout")),
        LocalReplyKind::Overloaded => (app_exception::INTERNAL_ERROR, ensure("overloaded")),
        LocalReplyKind::BadRequest => (app_exception::PROTOCOL_ERROR, Cow::Borrowed(reply.message)),
        LocalReplyKind::RateLimited => (app_exception::INTERNAL_ERROR, ensure("rate limited")),
        LocalReplyKind::Forbidden => (app_exception::UNKNOWN, ensure("forbidden")),
    }
}

/// Writes `name`/`seqid` as a message of type 3 carrying a TApplicationException.
pub(crate) fn write_app_exception(
    w: &mut ProtoWriter<'_>,
    name: &str,
    seqid: u32,
    ty: i32,
    text: &str,
) {
    w.message_begin(name, mtype::EXCEPTION, seqid);
    w.field(crate::read::ttype::STRING, 1);
    w.bytes(text.as_bytes());
    w.field(crate::read::ttype::I32, 2);
    w.i32(ty);
    w.stop();
}

#[inline]
fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Maps a reading fault to a decode error.
pub(crate) fn fault(f: Fault) -> DecodeError {
    match f {
        Fault::Incomplete(_) => DecodeError::malformed("message runs past the end of its frame"),
        Fault::Malformed(m) => DecodeError::malformed(m),
        Fault::TooDeep => DecodeError::new(DecodeErrorKind::TooDeep(MAX_DEPTH)),
        Fault::BadMagic(m) => DecodeError::new(DecodeErrorKind::BadMagic(m.into())),
        Fault::Unsupported(m) => DecodeError::unsupported(m),
    }
}

fn in_frame(f: Fault) -> DecodeError {
    match f {
        Fault::Incomplete(_) => {
            DecodeError::malformed("message header runs past the end of its frame")
        }
        other => fault(other),
    }
}

fn reply_ctx(buf: &[u8], head: &MsgHead, t: Transport, p: Protocol) -> Option<ReplyContext> {
    let name = std::str::from_utf8(buf.get(head.name_start..head.name_end)?).ok()?;
    Some(ReplyContext {
        request_id: u64::from(head.seqid),
        wire: wire_format(t, p),
        name: CallName::from(name),
        one_way: head.mtype == mtype::ONEWAY,
    })
}

fn bad_type(buf: &[u8], head: &MsgHead, t: Transport, p: Protocol) -> DecodeError {
    let e = DecodeError::malformed(format!("unknown message type {}", head.mtype));
    match reply_ctx(buf, head, t, p) {
        Some(r) => e.with_reply(r),
        None => e,
    }
}

/// Status of a reply (shallow: only the first field header of the result struct).
#[inline(always)]
fn response_status(f: &[u8], head: &MsgHead, p: Protocol) -> Result<ResponseStatus, DecodeError> {
    Ok(match head.mtype {
        mtype::REPLY => {
            let mut c = Cursor::at(f, head.body);
            match first_field_id(&mut c, p).map_err(in_frame)? {
                None | Some(0) => ResponseStatus::Ok,
                Some(_) => ResponseStatus::Exception,
            }
        }
        mtype::EXCEPTION => ResponseStatus::Error,
        _ => ResponseStatus::Ok,
    })
}

/// Builds the message: kind, id, status, wire and layout, then the name and the
/// `method`/`service` metadata, unless `lazy` and the message is a response, which is
/// then marked deferred (see [`read_response_rest`]).
#[inline(always)]
fn build(
    frame: Bytes,
    head: &MsgHead,
    t: Transport,
    p: Protocol,
    status: ResponseStatus,
    layout: ThriftLayout,
    lazy: bool,
) -> Result<Option<Message>, DecodeError> {
    let kind = match head.mtype {
        mtype::CALL => MessageKind::Request,
        mtype::ONEWAY => MessageKind::OneWay,
        mtype::REPLY | mtype::EXCEPTION => MessageKind::Response,
        _ => return Err(bad_type(&frame, head, t, p)),
    };
    let mut msg = Message::new(kind, u64::from(head.seqid), frame);
    msg.set_status(status);
    msg.set_wire(wire_format(t, p));
    msg.set_layout(layout);
    if lazy && kind == MessageKind::Response {
        // Forwarding a response needs only its id and status: the name and the headers
        // wait for `decode_metadata`.
        msg.set_metadata_deferred(true);
    } else {
        read_name(&mut msg, head)?;
    }
    Ok(Some(msg))
}

/// Checks that the message's name (at `head`'s offsets in the frame) is UTF-8 and
/// records it: [`Message::name`], and the `method` metadata (and `service`, the part
/// before a `:`).
#[inline(always)]
fn read_name(msg: &mut Message, head: &MsgHead) -> Result<(), DecodeError> {
    let (start, end) = (head.name_start, head.name_end);
    if msg.frame().get(start..end).is_none() {
        return Err(DecodeError::malformed("method name outside the frame"));
    }
    // Copied inline when short (no reference to the frame), else a slice of it.
    let Some(name) = CallName::from_frame(msg.frame(), start..end) else {
        return Err(
            DecodeError::malformed("method name is not UTF-8").with_reply(ReplyContext {
                request_id: msg.request_id(),
                wire: msg.wire(),
                name: CallName::new(),
                one_way: msg.kind() == MessageKind::OneWay,
            }),
        );
    };
    // Metadata values are offsets into the frame (the name is checked UTF-8 above, and
    // ':' is ASCII, so both halves are too). A byte loop beats `str::find` on names of
    // a few bytes.
    let mut md = msg.metadata_mut();
    match name.as_bytes().iter().position(|&b| b == b':') {
        Some(i) => {
            md.set_known_in_frame(WellKnownKey::Method, start + i + 1..end);
            md.set_known_in_frame(WellKnownKey::Service, start..start + i);
        }
        None => md.set_known_in_frame(WellKnownKey::Method, start..end),
    }
    msg.set_name(name);
    Ok(())
}

/// Reads the header transport's key/value info headers (`info_start..payload` of the
/// frame) into the metadata, in one pass.
fn read_info_headers(
    msg: &mut Message,
    info_start: usize,
    payload: usize,
) -> Result<(), DecodeError> {
    // A second handle on the frame (a reference count): the metadata is filled while
    // the frame is read.
    let frame = msg.frame().clone();
    let mut meta = msg.metadata_mut();
    let parsed = for_each_info_header(&frame, info_start, payload, |(ks, ke), (vs, ve)| {
        // `method`/`service` from the message win; among headers the last of a key wins
        // (as in Python's and C++'s header maps). Headers that are not UTF-8 are
        // forwarded but not routable.
        if let (Some(key), Some(value)) = (frame.get(ks..ke), frame.get(vs..ve)) {
            if key != b"method"
                && key != b"service"
                && std::str::from_utf8(key).is_ok()
                && std::str::from_utf8(value).is_ok()
            {
                meta.set_in_frame(ks..ke, vs..ve);
            }
        }
        Ok(())
    });
    match parsed {
        Ok(_) => Ok(()),
        Err(e) => Err(fault(e).with_reply(msg.reply_context())),
    }
}

/// Reads what a response decoded head first left unread, from its frame and layout
/// alone (so any codec instance can): the message header again, at the layout's
/// `payload`, for the name and the `method`/`service` metadata, then on the header
/// transport the info headers. Fails as an eager decode of the frame would have.
fn read_response_rest(msg: &mut Message) -> Result<(), DecodeError> {
    let (t, p) = split_wire(msg.wire()).ok_or_else(|| {
        DecodeError::malformed(format!("{:?} is not a thrift wire format", msg.wire()))
    })?;
    let layout: ThriftLayout = msg.layout();
    let head = read_msg_head(&mut Cursor::at(msg.frame(), layout.payload as usize), p)
        .map_err(in_frame)?;
    if head.seqid_off != layout.seqid_at as usize {
        return Err(DecodeError::malformed(
            "message header does not match its recorded layout",
        ));
    }
    read_name(msg, &head)?;
    if t == Transport::Header {
        read_info_headers(msg, layout.info_start as usize, layout.payload as usize)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{self, FrameSpec, Reply};
    use meta_protocol::{CodecRegistry, DEFAULT_MAX_FRAME_SIZE};

    fn all() -> impl Iterator<Item = (Transport, Protocol)> {
        Transport::ALL
            .into_iter()
            .flat_map(|t| Protocol::ALL.into_iter().map(move |p| (t, p)))
    }

    fn call(
        t: Transport,
        p: Protocol,
        name: &str,
        seqid: i32,
        headers: &[(&str, &str)],
    ) -> BytesMut {
        let mut b = BytesMut::new();
        frames::write_call(
            &FrameSpec::new(t, p, name, seqid).with_headers(headers),
            b"payload",
            &mut b,
        )
        .unwrap();
        b
    }

    fn auto() -> ThriftCodec {
        ThriftCodec::new(None, None, DEFAULT_MAX_FRAME_SIZE)
    }

    #[test]
    fn factory_validates_options_and_reports_capabilities() {
        let f = ThriftCodecFactory::new();
        assert_eq!(f.name(), "thrift");
        let caps = |t: &str| {
            let mut o = CodecOptions::new();
            o.insert("transport".into(), t.into());
            f.configure(&o).unwrap().capabilities()
        };
        assert!(caps("header").mutations && caps("header").multiplexing);
        assert!(!caps("framed").mutations && caps("framed").multiplexing);
        assert!(!caps("unframed").mutations);
        assert!(caps("auto").mutations);
        let mut o = CodecOptions::new();
        o.insert("framing".into(), "x".into());
        assert!(f.configure(&o).is_err());
        let mut reg = CodecRegistry::new();
        reg.register(std::sync::Arc::new(f));
        assert!(reg.get("thrift").is_ok());
    }

    #[test]
    fn upstream_codec_speaks_the_wire_it_is_given() {
        let options = ThriftOptions::default();
        let ctx = CodecContext::upstream(1024, wire_format(Transport::Header, Protocol::Compact));
        let c = ThriftCodec::for_connection(&options, &ctx).unwrap();
        assert_eq!(
            (c.transport(), c.protocol()),
            (Some(Transport::Header), Some(Protocol::Compact))
        );
        let bad = CodecContext {
            wire: Some(meta_protocol::WireFormat(0x0909)),
            ..ctx
        };
        assert!(ThriftCodec::for_connection(&options, &bad).is_err());
    }

    /// The checks offered to codec authors, on every transport × protocol: a call and a
    /// one-way call decode the same however the stream is split (the unframed
    /// transport is delimited by skipping the struct, the hardest case), and a call
    /// survives an id rewrite to the edges of the 31-bit range.
    #[test]
    fn every_format_decodes_the_same_in_any_split_and_ids_round_trip() {
        use meta_protocol::testing::{check_decode_any_split, check_roundtrip};
        for (t, p) in all() {
            let first = call(t, p, "Store:put", 5, &[("tenant", "t1")]);
            let mut stream = first.clone();
            frames::write_oneway(&FrameSpec::new(t, p, "note", 6), b"x", &mut stream).unwrap();
            let messages = check_decode_any_split(auto, &stream);
            let kinds: Vec<MessageKind> = messages.iter().map(Message::kind).collect();
            assert_eq!(
                kinds,
                [MessageKind::Request, MessageKind::OneWay],
                "{t:?} {p:?}"
            );
            let m = check_roundtrip(auto, &first);
            assert_eq!(m.metadata().get("service"), Some("Store"));
        }
    }

    #[test]
    fn every_format_decodes_with_metadata_and_tag() {
        for (t, p) in all() {
            let mut codec = auto();
            let mut buf = call(
                t,
                p,
                "Store:put",
                -5,
                &[("tenant", "t1"), ("method", "spoof")],
            );
            buf.extend_from_slice(&call(t, p, "get", 6, &[])[..]);
            let m = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(m.kind(), MessageKind::Request);
            assert_eq!(m.request_id(), u64::from(-5i32 as u32));
            assert_eq!(m.metadata().get("method"), Some("put"), "{t:?} {p:?}");
            assert_eq!(m.metadata().get("service"), Some("Store"));
            assert_eq!(&**m.name(), "Store:put");
            assert_eq!(split_wire(m.wire()), Some((t, p)));
            if t == Transport::Header {
                assert_eq!(m.metadata().get("tenant"), Some("t1"));
            } else {
                assert_eq!(m.metadata().get("tenant"), None);
            }
            let m2 = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(m2.metadata().get("method"), Some("get"));
            assert_eq!(m2.metadata().get("service"), None);
            assert!(buf.is_empty());
            assert_eq!((codec.transport(), codec.protocol()), (Some(t), Some(p)));
        }
    }

    #[test]
    fn seqid_rewrite_round_trips_in_every_format() {
        // Ids whose compact varint length differs from the original (1 byte -> 5 bytes).
        for (t, p) in all() {
            for new_id in [1u64, 300, 0x7fff_ffff, 0xffff_fffe] {
                let mut codec = auto();
                let mut buf = call(t, p, "echo", 3, &[("k", "v")]);
                let mut m = codec.decode(&mut buf).unwrap().unwrap();
                m.set_request_id(new_id);
                let mut out = BytesMut::new();
                codec.encode(&m, &mut out).unwrap();
                let mut back = auto().decode(&mut out).unwrap().unwrap();
                assert!(out.is_empty());
                assert_eq!(back.request_id(), new_id, "{t:?} {p:?}");
                assert_eq!(
                    frames::call_payload(&back).unwrap().as_deref(),
                    Some(&b"payload"[..])
                );
                if t == Transport::Header {
                    assert_eq!(
                        &back.frame()[8..12],
                        &(new_id as u32).to_be_bytes(),
                        "THeader seqid"
                    );
                    assert_eq!(back.metadata().get("k"), Some("v"));
                }
                // Restoring the id gives the original bytes back.
                back.set_request_id(3);
                let mut again = BytesMut::new();
                codec.encode(&back, &mut again).unwrap();
                assert_eq!(again, call(t, p, "echo", 3, &[("k", "v")]));
            }
        }
    }

    #[test]
    fn a_rewritten_message_is_appended_after_what_the_buffer_holds() {
        for (t, p) in all() {
            let mut codec = auto();
            let mut m = codec
                .decode(&mut call(t, p, "echo", 3, &[]))
                .unwrap()
                .unwrap();
            m.set_request_id(5);
            let mut out = BytesMut::from(&b"earlier"[..]);
            codec.encode(&m, &mut out).unwrap();
            assert_eq!(&out[..7], b"earlier", "{t:?} {p:?}");
            let mut rest = out.split_off(7);
            let back = auto().decode(&mut rest).unwrap().unwrap();
            assert_eq!(back.request_id(), 5, "{t:?} {p:?}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn ids_beyond_32_bits_are_refused() {
        let mut codec = auto();
        let mut m = codec
            .decode(&mut call(Transport::Framed, Protocol::Binary, "m", 1, &[]))
            .unwrap()
            .unwrap();
        m.set_request_id(1 << 32);
        assert!(matches!(
            codec.encode(&m, &mut BytesMut::new()),
            Err(EncodeError::Unsupported(_))
        ));
    }

    #[test]
    fn header_mutations_merge_and_other_transports_ignore_them() {
        for p in Protocol::ALL {
            let mut codec = auto();
            let mut m = codec
                .decode(&mut call(
                    Transport::Header,
                    p,
                    "m",
                    9,
                    &[("a", "1"), ("b", "2")],
                ))
                .unwrap()
                .unwrap();
            m.push_mutation("b".into(), "x".into());
            m.push_mutation("c".into(), "3".into());
            m.push_mutation("c".into(), "4".into());
            let mut out = BytesMut::new();
            codec.encode(&m, &mut out).unwrap();
            let back = auto().decode(&mut out).unwrap().unwrap();
            let headers: Vec<_> = back
                .metadata()
                .iter()
                .filter(|(k, _)| *k != "method")
                .collect();
            assert_eq!(headers, [("a", "1"), ("b", "x"), ("c", "4")]);
            assert_eq!(
                frames::call_payload(&back).unwrap().as_deref(),
                Some(&b"payload"[..])
            );
        }
        for t in [Transport::Framed, Transport::Unframed] {
            let mut codec = auto();
            let orig = call(t, Protocol::Binary, "m", 9, &[]);
            let mut m = codec.decode(&mut orig.clone()).unwrap().unwrap();
            m.push_mutation("b".into(), "x".into());
            let mut out = BytesMut::new();
            codec.encode(&m, &mut out).unwrap();
            assert_eq!(out, orig);
        }
    }

    #[test]
    fn replies_carry_status() {
        for (t, p) in all() {
            let spec = FrameSpec::new(t, p, "m", 4);
            let mut b = BytesMut::new();
            frames::write_reply(&spec, b"ok", &mut b).unwrap();
            frames::write_declared_exception(&spec, 1, "nope", &mut b).unwrap();
            frames::write_app_exception_frame(&spec, 6, "boom", &mut b).unwrap();
            let mut codec = ThriftCodec::new(Some(t), Some(p), 1 << 20);
            let m = codec.decode(&mut b).unwrap().unwrap();
            assert_eq!(
                (m.kind(), m.status()),
                (MessageKind::Response, ResponseStatus::Ok)
            );
            let m = codec.decode(&mut b).unwrap().unwrap();
            assert_eq!(m.status(), ResponseStatus::Exception);
            assert_eq!(
                frames::read_reply(&m).unwrap(),
                Reply::Declared { field: 1 }
            );
            let m = codec.decode(&mut b).unwrap().unwrap();
            assert_eq!(m.status(), ResponseStatus::Error);
            assert_eq!(
                frames::read_reply(&m).unwrap(),
                Reply::AppException {
                    kind: 6,
                    message: "boom".into()
                }
            );
        }
    }

    #[test]
    /// The runtime keeps one-way calls unanswered; the codec marks them, and the test
    /// backend in `frames` does not answer them either.
    fn oneway_is_oneway_and_never_answered_by_echo() {
        let mut b = BytesMut::new();
        frames::write_oneway(
            &FrameSpec::new(Transport::Framed, Protocol::Compact, "note", 2),
            b"x",
            &mut b,
        )
        .unwrap();
        let mut codec = auto();
        let m = codec.decode(&mut b).unwrap().unwrap();
        assert_eq!(m.kind(), MessageKind::OneWay);
        assert!(m.reply_context().one_way);
        let mut out = BytesMut::new();
        assert!(!frames::echo_reply(&m, &mut out).unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn local_replies_are_application_exceptions_in_the_request_format() {
        let cases = [
            (LocalReplyKind::NoRoute, 1, "no route"),
            (LocalReplyKind::UpstreamFailure, 6, "connect refused"),
            (LocalReplyKind::Timeout, 6, "timeout"),
            (LocalReplyKind::Overloaded, 6, "overloaded"),
            (LocalReplyKind::BadRequest, 7, "bad"),
            (LocalReplyKind::RateLimited, 6, "rate limited"),
            (LocalReplyKind::Forbidden, 0, "forbidden"),
        ];
        for (t, p) in all() {
            for (kind, ty, word) in cases {
                let mut codec = auto();
                let m = codec
                    .decode(&mut call(t, p, "Svc:m", 77, &[]))
                    .unwrap()
                    .unwrap();
                let mut out = BytesMut::new();
                let text = if ["timeout", "overloaded", "rate limited", "forbidden"].contains(&word)
                {
                    "upstream slow"
                } else {
                    word
                };
                codec
                    .encode_local_reply(&m.reply_context(), &LocalReply::new(kind, text), &mut out)
                    .unwrap();
                let mut client = ThriftCodec::new(Some(t), Some(p), 1 << 20);
                let r = client.decode(&mut out).unwrap().unwrap();
                assert!(out.is_empty());
                assert_eq!(
                    (r.kind(), r.status(), r.request_id()),
                    (MessageKind::Response, ResponseStatus::Error, 77)
                );
                assert_eq!(&**r.name(), "Svc:m");
                match frames::read_reply(&r).unwrap() {
                    Reply::AppException { kind: k, message } => {
                        assert_eq!(k, ty, "{kind:?}");
                        assert!(message.contains(word), "{message}");
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn size_limits_come_from_the_header_alone() {
        let mut codec = ThriftCodec::new(None, None, 100);
        let mut b = BytesMut::from(&[0u8, 0, 1, 0, 0x80, 1][..]);
        assert!(matches!(
            codec.decode(&mut b).unwrap_err().kind,
            DecodeErrorKind::FrameTooLarge { size: 256, .. }
        ));
        let mut codec = ThriftCodec::new(Some(Transport::Header), None, 100);
        let mut b = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert!(matches!(
            codec.decode(&mut b).unwrap_err().kind,
            DecodeErrorKind::FrameTooLarge { .. }
        ));
        // Unframed: a string announcing 1000 bytes is too large before it arrives.
        let mut codec = ThriftCodec::new(Some(Transport::Unframed), None, 100);
        let mut b = BytesMut::new();
        frames::write_call(
            &FrameSpec::new(Transport::Unframed, Protocol::Binary, "m", 1),
            &[7; 1000],
            &mut b,
        )
        .unwrap();
        b.truncate(40);
        let e = codec.decode(&mut b).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::FrameTooLarge { .. }));
        // The call's name and seqid were read: the error is answerable.
        let r = e.reply.expect("an answerable error");
        assert_eq!((r.request_id, &*r.name), (1, "m"));
    }

    #[test]
    fn an_over_limit_frame_whose_header_arrived_gets_a_protocol_error_reply() {
        for (t, p) in [Transport::Framed, Transport::Header]
            .into_iter()
            .flat_map(|t| Protocol::ALL.map(|p| (t, p)))
        {
            let mut codec = ThriftCodec::new(Some(t), None, 100);
            let mut b = BytesMut::new();
            frames::write_call(
                &FrameSpec::new(t, p, "getUser", 42).with_headers(&[("user", "alice")]),
                &[7; 1000],
                &mut b,
            )
            .unwrap();
            b.truncate(64);
            let e = codec.decode(&mut b).unwrap_err();
            assert!(
                matches!(e.kind, DecodeErrorKind::FrameTooLarge { .. }),
                "{t:?}/{p:?}"
            );
            let ctx = e.reply.expect("answerable");
            assert_eq!((ctx.request_id, &*ctx.name), (42, "getUser"), "{t:?}/{p:?}");
            let mut out = BytesMut::new();
            codec
                .encode_local_reply(
                    &ctx,
                    &LocalReply::new(LocalReplyKind::BadRequest, "too large"),
                    &mut out,
                )
                .unwrap();
            // The reply is in the client's own transport and protocol.
            let mut reader = ThriftCodec::new(Some(t), Some(p), 1 << 20);
            let reply = reader.decode(&mut out).unwrap().unwrap();
            assert_eq!(reply.request_id(), 42, "{t:?}/{p:?}");
            assert_eq!(
                reply.status(),
                meta_protocol::ResponseStatus::Error,
                "{p:?}"
            );
            assert!(reply.frame().windows(9).any(|w| w == b"too large"));
        }
    }

    #[test]
    fn header_transforms_are_unsupported_with_a_reply() {
        let mut f = call(Transport::Header, Protocol::Binary, "m", 12, &[]);
        // Replace "protocol 0, 0 transforms" by "protocol 0, 1 transform: zlib".
        assert_eq!(&f[14..16], &[0, 0]);
        f[15] = 1;
        f[16] = 1; // the padding byte that follows becomes the transform id
        let err = auto().decode(&mut f).unwrap_err();
        assert!(
            matches!(&err.kind, DecodeErrorKind::Unsupported(m) if m.contains("zlib")),
            "{err}"
        );
        assert_eq!(err.reply.map(|r| r.request_id), Some(12));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut codec = auto();
        let mut b = BytesMut::from(&[0xffu8, 0xff, 0, 0, 0, 0][..]);
        assert!(codec.decode(&mut b).is_err());
        let mut codec = ThriftCodec::new(Some(Transport::Framed), None, 1 << 20);
        let mut b = BytesMut::from(&[0u8, 0, 0, 4, 0x80, 1, 0, 9][..]);
        assert!(codec.decode(&mut b).is_err());
        let mut codec = ThriftCodec::new(Some(Transport::Framed), Some(Protocol::Compact), 1 << 20);
        let mut b = call(Transport::Framed, Protocol::Binary, "m", 1, &[]);
        assert!(matches!(
            codec.decode(&mut b).unwrap_err().kind,
            DecodeErrorKind::BadMagic(_)
        ));
    }

    #[test]
    fn bad_message_type_is_answerable() {
        let mut b = call(Transport::Framed, Protocol::Binary, "m", 5, &[]);
        b[7] = 9; // message type 9
        let err = auto().decode(&mut b).unwrap_err();
        let reply = err.reply.expect("reply context");
        assert_eq!((reply.request_id, &*reply.name), (5, "m"));
    }

    #[test]
    fn non_utf8_names_are_answerable_and_duplicate_headers_keep_the_last() {
        let mut b = call(Transport::Framed, Protocol::Binary, "m\u{e9}", 8, &[]);
        let at = b.iter().position(|&x| x == 0xc3).unwrap();
        b[at] = 0xff;
        let err = auto().decode(&mut b).unwrap_err();
        assert_eq!(err.reply.map(|r| r.request_id), Some(8));

        let mut b = call(
            Transport::Header,
            Protocol::Binary,
            "m",
            1,
            &[("k", "1"), ("k", "2"), ("method", "x")],
        );
        let m = auto().decode(&mut b).unwrap().unwrap();
        assert_eq!(m.metadata().get("k"), Some("2"));
        assert_eq!(m.metadata().get("method"), Some("m"));
    }

    #[test]
    fn unknown_info_sections_survive_header_mutations() {
        // Found by fuzzing: an unknown info section whose varint ends in a zero byte.
        let mut f = call(Transport::Header, Protocol::Compact, "m", 3, &[]);
        // Header section: protocol 2, 0 transforms, 2 padding bytes -> replace the
        // padding and grow the header by one word holding an unknown info section.
        let hl = u16::from_be_bytes([f[12], f[13]]) as usize;
        assert_eq!(hl, 1);
        let unknown = [0xf2, 0x82, 0x81, 0x80, 0x00, 0x00];
        let mut g = BytesMut::new();
        g.extend_from_slice(&f[..12]);
        g.extend_from_slice(&2u16.to_be_bytes());
        g.extend_from_slice(&f[14..16]);
        g.extend_from_slice(&unknown);
        g.extend_from_slice(&f[18..]);
        let len = (g.len() - 4) as u32;
        g[..4].copy_from_slice(&len.to_be_bytes());
        f = g;
        let mut codec = auto();
        let mut m = codec.decode(&mut f).unwrap().unwrap();
        m.push_mutation("k".into(), "v".into());
        let mut out = BytesMut::new();
        codec.encode(&m, &mut out).unwrap();
        let back = auto().decode(&mut out).unwrap().unwrap();
        assert_eq!(back.metadata().get("k"), Some("v"));
        assert!(back
            .frame()
            .windows(unknown.len() - 1)
            .any(|w| w == &unknown[..5]));
        assert_eq!(
            frames::call_payload(&back).unwrap().as_deref(),
            Some(&b"payload"[..])
        );
    }
}
