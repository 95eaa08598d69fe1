//! The Dubbo codec: decode frames into routable metadata, forward them byte for byte
//! with a rewritten id and re-serialised attachments, and answer locally.

use bytes::{BufMut, Bytes, BytesMut};
use meta_protocol::{
    reject_options, Codec, CodecCapabilities, CodecContext, CodecError, CodecFactory, CodecOptions,
    ConfiguredProtocol, DecodeError, DecodeErrorKind, EncodeError, FrameLayout, LayoutWords,
    LocalReply, LocalReplyKind, Message, MessageKind, MetaStr, MetadataMut, ReplyContext,
    ResponseStatus, Side, WellKnownKey,
};

use crate::header::{
    response_type, serialization_name, status, Header, FLAG_EVENT, FLAG_REQUEST, FLAG_TWO_WAY,
    HEADER_LEN, HESSIAN2, MAGIC,
};
use crate::hessian2::{code, HessianError, Reader, StrSpan, Writer, DEFAULT_MAX_DEPTH};

/// Layout flag: an attachments map is present.
const LF_HAS_MAP: u32 = 1;

/// Creates [`DubboCodec`]s; registered as `dubbo`. Accepts no options.
#[derive(Clone, Copy, Debug, Default)]
pub struct DubboCodecFactory;

impl DubboCodecFactory {
    /// The codec name used in a listener's `codec:` field.
    pub const NAME: &'static str = "dubbo";
}

impl CodecFactory for DubboCodecFactory {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn configure(&self, options: &CodecOptions) -> Result<Box<dyn ConfiguredProtocol>, CodecError> {
        reject_options(options)?;
        Ok(Box::new(DubboProtocol))
    }
}

/// Dubbo as a listener speaks it (there are no options).
struct DubboProtocol;

impl ConfiguredProtocol for DubboProtocol {
    /// Multiplexing and mutations; the eager keys are the body fields a request
    /// decoded head first carries ([`DubboCodec::with_lazy_metadata`]).
    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities {
            eager_keys: EAGER_KEYS,
            ..CodecCapabilities::default()
        }
    }

    fn new_codec(&self, ctx: &CodecContext) -> Result<Box<dyn Codec>, CodecError> {
        Ok(Box::new(
            DubboCodec::new(ctx.side, ctx.max_frame_size).with_lazy_metadata(ctx.lazy_metadata),
        ))
    }
}

/// What a request decoded head first carries: its body's service path, version and
/// method name.
pub const EAGER_KEYS: &[&str] = &["interface", "method", "version"];

/// The three body fields of a request, as the `body_fields` bits of the decoder.
const ALL_BODY_FIELDS: u8 = 0b111;

/// The Dubbo 2 (hessian2) codec for one connection.
#[derive(Clone, Debug)]
pub struct DubboCodec {
    side: Side,
    max_frame_size: usize,
    max_depth: usize,
    lazy_metadata: bool,
}

/// What a request's arguments and attachments look like, for [`FrameLayout`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DubboLayout {
    /// Start of the arguments (requests) or of the value (responses). For a request
    /// whose metadata is deferred: where its parameter types start.
    pub args: usize,
    /// End of the first argument (requests) or of the value (responses with
    /// attachments); equal to `args` when unknown or absent.
    pub first_arg_end: usize,
    /// The attachments map: start, first entry, end; `None` when absent.
    pub attachments: Option<(usize, usize, usize)>,
    /// The response type, for OK responses.
    pub response_type: Option<i32>,
}

/// Stored as six words: arguments, first argument end, attachments map start, first
/// entry and end (all three the body end when there is no map), and flags
/// (bit 0: a map is present; bits 8-15: the response type + 1).
impl FrameLayout for DubboLayout {
    fn to_words(self) -> LayoutWords {
        let (m, e, z) = self.attachments.unwrap_or((0, 0, 0));
        let mut flags = u32::from(self.attachments.is_some());
        if let Some(t) = self.response_type {
            flags |= ((t as u32).wrapping_add(1) & 0xff) << 8;
        }
        LayoutWords::new([
            self.args as u32,
            self.first_arg_end as u32,
            m as u32,
            e as u32,
            z as u32,
            flags,
        ])
    }

    fn from_words(words: LayoutWords) -> Self {
        let [args, first_arg_end, map, entries, map_end, flags] = words.words();
        let rt = (flags >> 8) & 0xff;
        DubboLayout {
            args: args as usize,
            first_arg_end: first_arg_end as usize,
            attachments: (flags & LF_HAS_MAP != 0).then_some((
                map as usize,
                entries as usize,
                map_end as usize,
            )),
            response_type: (rt != 0).then(|| rt as i32 - 1),
        }
    }
}

impl DubboLayout {
    /// Reads back what [`DubboCodec::decode`] recorded in a message.
    pub fn of(msg: &Message) -> DubboLayout {
        msg.layout()
    }
}

fn hessian(e: HessianError, what: &'static str) -> DecodeError {
    match e {
        HessianError::TooDeep(n) => DecodeError::new(DecodeErrorKind::TooDeep(n)),
        e => DecodeError::malformed(format!("dubbo {what}: {e}")),
    }
}

/// Counts the parameters of a JVM method descriptor such as `ILjava/lang/String;[B`.
pub fn count_parameters(desc: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut n = 0;
    while i < desc.len() {
        while desc.get(i) == Some(&b'[') {
            i += 1;
        }
        match desc.get(i)? {
            b'Z' | b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S' | b'V' => i += 1,
            b'L' => {
                let semi = desc[i..].iter().position(|&b| b == b';')?;
                if semi < 2 {
                    return None;
                }
                i += semi + 1;
            }
            _ => return None,
        }
        n += 1;
    }
    Some(n)
}

/// Which body field (bit 0 interface, 1 method, 2 version) an attachment key names.
fn body_field(key: &[u8]) -> u8 {
    match key {
        b"interface" => 1,
        b"method" => 2,
        b"version" => 4,
        _ => 0,
    }
}

/// A string read from the body: where its UTF-8 is in the frame, or, for chunked and
/// surrogate-pair encodings, decoded.
enum Text {
    InFrame(std::ops::Range<usize>),
    Decoded(MetaStr),
}

impl Text {
    fn bytes<'a>(&'a self, frame: &'a [u8]) -> &'a [u8] {
        match self {
            Text::InFrame(r) => &frame[r.clone()],
            Text::Decoded(s) => s.as_bytes(),
        }
    }

    fn into_str(self, frame: &Bytes) -> Option<MetaStr> {
        match self {
            Text::InFrame(r) => MetaStr::try_from(frame.slice(r)).ok(),
            Text::Decoded(s) => Some(s),
        }
    }
}

/// Reads a string (an error on anything else), checking its UTF-8.
#[inline(always)]
fn read_text(r: &mut Reader<'_>, frame: &Bytes) -> Result<Text, HessianError> {
    let at = r.position();
    let span = r.read_str_span()?;
    if span.plain {
        if !span.ascii && std::str::from_utf8(&frame[span.data.clone()]).is_err() {
            return Err(HessianError::BadUtf8 {
                at: span.data.start,
            });
        }
        Ok(Text::InFrame(span.data))
    } else {
        Reader::with_range(frame, at, r.position())
            .read_string()
            .map(Text::Decoded)
    }
}

/// Reads a string or a null (`None`).
fn read_nullable_text(r: &mut Reader<'_>, frame: &Bytes) -> Result<Option<Text>, HessianError> {
    if r.read_null()? {
        Ok(None)
    } else {
        read_text(r, frame).map(Some)
    }
}

/// Reads a string if one is next; otherwise skips the value and returns `None`.
fn read_text_or_skip(r: &mut Reader<'_>, frame: &Bytes) -> Result<Option<Text>, HessianError> {
    if r.at_string() {
        read_text(r, frame).map(Some)
    } else {
        r.skip_value().map(|_| None)
    }
}

/// Reads an attachments map of the common shape (`H`, pairs of short ASCII strings,
/// `Z`) straight into `md`, leaving out keys in `skip` (body fields, see
/// [`body_field`]). Returns `false`, with `md` and `r` as they were, for any other
/// shape: the caller then reads the map with the general reader.
fn read_plain_map(r: &mut Reader<'_>, frame: &[u8], md: &mut MetadataMut<'_>, skip: u8) -> bool {
    let start = r.position();
    let kept = md.len();
    if r.skip_code(code::MAP_UNTYPED) {
        loop {
            if r.skip_code(code::END) {
                return true;
            }
            let (Some(k), Some(v)) = (r.read_ascii_str(), r.read_ascii_str()) else {
                break;
            };
            if skip & body_field(&frame[k.clone()]) == 0 {
                md.set_in_frame(k, v);
            }
        }
    }
    // Only entries were added (a key set before the map is a body field, skipped), so
    // dropping the new ones restores `md`.
    md.truncate(kept);
    r.rewind_to(start);
    false
}

/// Sets `key` to `value` in `md`, as frame offsets when both are in the frame.
fn set_text(md: &mut MetadataMut<'_>, frame: &Bytes, key: Text, value: Text) {
    match (key, value) {
        (Text::InFrame(k), Text::InFrame(v)) => md.set_in_frame(k, v),
        (k, v) => {
            if let (Some(k), Some(v)) = (k.into_str(frame), v.into_str(frame)) {
                md.set(k, v);
            }
        }
    }
}

/// Sets the body field `key` to `value` in `md`.
#[inline(always)]
fn set_field(md: &mut MetadataMut<'_>, key: WellKnownKey, value: Text) {
    match value {
        Text::InFrame(v) => md.set_known_in_frame(key, v),
        Text::Decoded(v) => md.set(MetaStr::from_static(key.as_str()), v),
    }
}

/// The common start of a request body: four short ASCII strings (the Dubbo version, the
/// service path, the service version and the method name). Returns the last three's
/// ranges, or `None` with `r` where it was for any other shape (a null, a long, chunked
/// or non-ASCII string), which the general reader then reads.
#[inline(always)]
fn read_plain_body_fields(r: &mut Reader<'_>) -> Option<[std::ops::Range<usize>; 3]> {
    let start = r.position();
    let fields = r.read_ascii_str().and_then(|_| {
        Some([
            r.read_ascii_str()?,
            r.read_ascii_str()?,
            r.read_ascii_str()?,
        ])
    });
    if fields.is_none() {
        r.rewind_to(start);
    }
    fields
}

/// Skips a string or a null.
fn skip_nullable_string(r: &mut Reader<'_>) -> Result<(), HessianError> {
    if !r.read_null()? {
        r.read_str_span()?;
    }
    Ok(())
}

/// Reads a string's bytes where they stand (or decoded, when not plain).
fn span_bytes(frame: &Bytes, start: usize, end: usize, span: &StrSpan) -> Option<Bytes> {
    if span.plain {
        Some(frame.slice(span.data.clone()))
    } else {
        let mut sub = Reader::with_range(frame, start, end);
        sub.read_string().ok().map(|s| s.into_bytes())
    }
}

impl DubboCodec {
    /// A codec for one connection on `side`, rejecting frames over `max_frame_size`.
    pub fn new(side: Side, max_frame_size: usize) -> Self {
        DubboCodec {
            side,
            max_frame_size,
            max_depth: DEFAULT_MAX_DEPTH,
            lazy_metadata: false,
        }
    }

    /// Decodes head first, the rest on demand ([`Codec::decode_metadata`], see
    /// [`CodecContext::lazy_metadata`]). A request is read up to its method name (the
    /// service path, version and method: [`EAGER_KEYS`]) when all three are there; its
    /// parameter types, arguments and attachments wait. A response is read up to its
    /// response type (its status); its value and attachments wait.
    pub fn with_lazy_metadata(mut self, lazy: bool) -> Self {
        self.lazy_metadata = lazy;
        self
    }

    /// The side this codec serves.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Sets the hessian nesting limit (default [`DEFAULT_MAX_DEPTH`]).
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    #[inline(always)]
    fn decode_request(&self, h: &Header, frame: Bytes) -> Result<Option<Message>, DecodeError> {
        let mut r =
            Reader::with_range(&frame, HEADER_LEN, frame.len()).with_max_depth(self.max_depth);
        if h.is_event() {
            let kind = match r.peek() {
                None | Some(code::NULL) if h.is_two_way() => MessageKind::Heartbeat,
                Some(0x01) if frame.get(HEADER_LEN + 1) == Some(&b'R') => MessageKind::GoAway,
                _ => MessageKind::Event,
            };
            return Ok(Some(Message::new(kind, h.id, frame)));
        }
        let kind = if h.is_two_way() {
            MessageKind::Request
        } else {
            MessageKind::OneWay
        };
        if let Some([path, version, method]) = read_plain_body_fields(&mut r) {
            let rest = r.position();
            let mut msg = Message::new(kind, h.id, frame);
            let mut md = msg.metadata_mut();
            md.set_known_in_frame(WellKnownKey::Interface, path);
            md.set_known_in_frame(WellKnownKey::Method, method);
            md.set_known_in_frame(WellKnownKey::Version, version);
            self.finish_request(&mut msg, rest, ALL_BODY_FIELDS)?;
            return Ok(Some(msg));
        }
        skip_nullable_string(&mut r).map_err(|e| hessian(e, "dubbo version"))?;
        let path = read_nullable_text(&mut r, &frame).map_err(|e| hessian(e, "service path"))?;
        let version =
            read_nullable_text(&mut r, &frame).map_err(|e| hessian(e, "service version"))?;
        let method = read_nullable_text(&mut r, &frame).map_err(|e| hessian(e, "method name"))?;
        let rest = r.position();
        // The frame moves into the message (its reference is the metadata's): no second
        // handle, so no reference count changes here.
        let mut msg = Message::new(kind, h.id, frame);
        let mut md = msg.metadata_mut();
        let body_fields = u8::from(path.is_some())
            | u8::from(method.is_some()) << 1
            | u8::from(version.is_some()) << 2;
        if let Some(p) = path {
            set_field(&mut md, WellKnownKey::Interface, p);
        }
        if let Some(m) = method {
            set_field(&mut md, WellKnownKey::Method, m);
        }
        if let Some(v) = version {
            set_field(&mut md, WellKnownKey::Version, v);
        }
        self.finish_request(&mut msg, rest, body_fields)?;
        Ok(Some(msg))
    }

    /// Reads the rest of a request from `rest` (its parameter types), or defers that to
    /// `decode_metadata` when metadata is lazy and the body had all its fields.
    #[inline(always)]
    fn finish_request(
        &self,
        msg: &mut Message,
        rest: usize,
        body_fields: u8,
    ) -> Result<(), DecodeError> {
        if self.lazy_metadata && body_fields == ALL_BODY_FIELDS {
            // The rest waits for `decode_metadata`, which starts at `args`.
            msg.set_layout(DubboLayout {
                args: rest,
                first_arg_end: rest,
                attachments: None,
                response_type: None,
            });
            msg.set_metadata_deferred(true);
            Ok(())
        } else {
            // A second handle on the frame: the metadata is filled while it is read.
            let frame = msg.frame().clone();
            self.read_request_rest(&frame, msg, rest, body_fields)
        }
    }

    /// Reads a request from its parameter types (at `from`) to its end: counts the
    /// parameters, skips the arguments and reads the attachments into the metadata
    /// (skipping the `body_fields` the body had), recording the layout.
    fn read_request_rest(
        &self,
        frame: &Bytes,
        msg: &mut Message,
        from: usize,
        body_fields: u8,
    ) -> Result<(), DecodeError> {
        let mut r = Reader::with_range(frame, from, frame.len()).with_max_depth(self.max_depth);
        let desc_start = r.position();
        let params = if r.read_null().map_err(|e| hessian(e, "parameter types"))? {
            0
        } else {
            let span = r
                .read_str_span()
                .map_err(|e| hessian(e, "parameter types"))?;
            let desc = span_bytes(frame, desc_start, r.position(), &span)
                .ok_or_else(|| DecodeError::malformed("dubbo parameter types: invalid string"))?;
            count_parameters(&desc).ok_or_else(|| {
                DecodeError::malformed(format!(
                    "dubbo parameter types: bad descriptor {:?}",
                    String::from_utf8_lossy(&desc)
                ))
            })?
        };
        let args = r.position();
        let mut first_arg_end = args;
        for i in 0..params {
            r.skip_value().map_err(|e| hessian(e, "argument"))?;
            if i == 0 {
                first_arg_end = r.position();
            }
        }
        let mut md = msg.metadata_mut();
        let map_start = r.position();
        let attachments = if r.is_at_end() {
            None
        } else if read_plain_map(&mut r, frame, &mut md, body_fields) {
            Some((map_start, map_start + 1, r.position()))
        } else {
            let first = r
                .visit_map(|r, _| {
                    if !r.at_string() {
                        r.skip_value()?;
                        return r.skip_value();
                    }
                    let key = read_text(r, frame)?;
                    if body_fields & body_field(key.bytes(frame)) != 0 {
                        // Body fields win: skip their attachment without reading it.
                        return r.skip_value();
                    }
                    if r.at_string() {
                        let value = read_text(r, frame)?;
                        set_text(&mut md, frame, key, value);
                    } else {
                        // A later duplicate wins, as in the HashMap a Java peer reads
                        // the attachments into (and as mutations rely on): a null or
                        // non-string value removes an earlier string.
                        r.skip_value()?;
                        match key {
                            Text::InFrame(k) => md.remove_in_frame(k),
                            Text::Decoded(k) => {
                                md.remove(&k);
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(|e| hessian(e, "attachments"))?;
            Some((map_start, first, r.position()))
        };
        msg.set_layout(DubboLayout {
            args,
            first_arg_end,
            attachments,
            response_type: None,
        });
        Ok(())
    }

    fn decode_response(&self, h: &Header, frame: Bytes) -> Result<Option<Message>, DecodeError> {
        if h.is_event() {
            return Ok(Some(Message::new(MessageKind::Event, h.id, frame)));
        }
        let mut msg = Message::new(MessageKind::Response, h.id, frame);
        if h.status != status::OK {
            msg.set_status(ResponseStatus::Error);
            return Ok(Some(msg));
        }
        let frame = msg.frame();
        // The response type is a small int, one byte in practice (hessian2's compact
        // form `0x80..=0xbf`); any other form takes the general reader.
        let (rt, args) = match frame.get(HEADER_LEN) {
            Some(&c @ 0x80..=0xbf) => (i32::from(c) - 0x90, HEADER_LEN + 1),
            _ => {
                let mut r = Reader::with_range(frame, HEADER_LEN, frame.len())
                    .with_max_depth(self.max_depth);
                let rt = r.read_int().map_err(|e| hessian(e, "response type"))?;
                (rt, r.position())
            }
        };
        let status = match rt {
            response_type::EXCEPTION | response_type::EXCEPTION_WITH_ATTACHMENTS => {
                ResponseStatus::Exception
            }
            1 | 2 | 4 | 5 => ResponseStatus::Ok,
            t => {
                return Err(DecodeError::malformed(format!(
                    "dubbo response type {t} unknown"
                )))
            }
        };
        msg.set_status(status);
        msg.set_layout(DubboLayout {
            args,
            first_arg_end: args,
            attachments: None,
            response_type: Some(rt),
        });
        if response_type::has_attachments(rt) {
            if self.lazy_metadata {
                msg.set_metadata_deferred(true);
            } else {
                self.read_response_attachments(&mut msg)?;
            }
        }
        Ok(Some(msg))
    }

    /// Skips a response's value and reads its attachments map into the metadata,
    /// recording where the map lies (the layout's `response_type` must be set).
    fn read_response_attachments(&self, msg: &mut Message) -> Result<(), DecodeError> {
        let mut layout = DubboLayout::of(msg);
        let Some(rt) = layout.response_type else {
            return Ok(());
        };
        // A second handle on the frame (a reference count): the metadata is filled
        // while the frame is read.
        let frame = msg.frame().clone();
        let mut r =
            Reader::with_range(&frame, layout.args, frame.len()).with_max_depth(self.max_depth);
        if rt != response_type::NULL_WITH_ATTACHMENTS {
            r.skip_value().map_err(|e| hessian(e, "response value"))?;
        }
        layout.first_arg_end = r.position();
        let map_start = r.position();
        let mut md = msg.metadata_mut();
        let first = if read_plain_map(&mut r, &frame, &mut md, 0) {
            Ok(map_start + 1)
        } else {
            r.visit_map(|r, _| {
                let key = read_text_or_skip(r, &frame)?;
                let value = read_text_or_skip(r, &frame)?;
                if let (Some(k), Some(v)) = (key, value) {
                    set_text(&mut md, &frame, k, v);
                }
                Ok(())
            })
        }
        .map_err(|e| hessian(e, "response attachments"))?;
        layout.attachments = Some((map_start, first, r.position()));
        msg.set_layout(layout);
        Ok(())
    }

    /// Writes `frame` with `mutations` merged over its attachments map (or a new map at
    /// the end of the body when it has none), fixing the body length.
    fn encode_mutated(
        &self,
        msg: &Message,
        attachments: Option<(usize, usize, usize)>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let frame = msg.frame();
        let (map_start, first, map_end) =
            attachments.unwrap_or((frame.len(), frame.len(), frame.len()));
        if !(HEADER_LEN <= map_start
            && map_start <= first
            && first <= map_end
            && map_end <= frame.len())
        {
            return Err(EncodeError::Inconsistent(
                "dubbo attachments layout out of the frame".into(),
            ));
        }
        let mutations = msg.mutations();
        let header_at = dst.len();
        dst.reserve(frame.len() + 64 * mutations.len());
        dst.put_slice(&frame[..4]);
        dst.put_u64(msg.request_id());
        dst.put_u32(0);
        dst.put_slice(&frame[HEADER_LEN..map_start]);
        let null_map = attachments.is_none() || frame.get(map_start) == Some(&code::NULL);
        if null_map {
            dst.put_u8(code::MAP_UNTYPED);
        } else {
            dst.put_slice(&frame[map_start..first]);
            copy_entries(frame, first, map_end.saturating_sub(1), mutations, dst);
        }
        let mut w = Writer::new(dst);
        for (i, (k, v)) in mutations.iter().enumerate() {
            if mutations[i + 1..].iter().any(|(later, _)| later == k) {
                continue;
            }
            w.write_string(k);
            w.write_string(v);
        }
        w.write_end();
        let after = if attachments.is_none() {
            frame.len()
        } else {
            map_end
        };
        dst.put_slice(&frame[after..]);
        let body = dst.len() - header_at - HEADER_LEN;
        let body = i32::try_from(body).map_err(|_| EncodeError::TooLarge(body + HEADER_LEN))?;
        dst[header_at + 12..header_at + 16].copy_from_slice(&body.to_be_bytes());
        Ok(())
    }
}

/// Copies the entries of `frame[first..end]` (an attachments map without its `Z`),
/// dropping the scalar entries whose key a mutation sets. When an entry cannot be
/// walked in isolation (a value referring to a class defined earlier in the body),
/// everything is copied: the mutations follow and later keys win in every decoder.
fn copy_entries(
    frame: &Bytes,
    first: usize,
    end: usize,
    mutations: &[(MetaStr, MetaStr)],
    dst: &mut BytesMut,
) {
    let mut r = Reader::with_range(frame, first, end);
    let mark = dst.len();
    let walked: Result<(), HessianError> = (|| {
        while !r.is_at_end() {
            let entry = r.position();
            // Compare plain keys where they stand; decode only unusual encodings.
            let key_at = r.position();
            let mutated_key = if r.at_string() {
                let span = r.read_str_span()?;
                if span.plain {
                    let k = &frame[span.data];
                    mutations.iter().any(|(m, _)| m.as_bytes() == k)
                } else {
                    let k = Reader::with_range(frame, key_at, r.position()).read_string()?;
                    mutations.iter().any(|(m, _)| *m == k)
                }
            } else {
                r.skip_value()?;
                false
            };
            let scalar = matches!(
                r.peek(),
                Some(0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' | b'N' | b'T' | b'F' | 0x80..=0xbf)
                    | Some(0xc0..=0xd7 | b'I')
            );
            r.skip_value()?;
            if !(scalar && mutated_key) {
                dst.put_slice(&frame[entry..r.position()]);
            }
        }
        Ok(())
    })();
    if walked.is_err() {
        dst.truncate(mark);
        dst.put_slice(&frame[first..end]);
    }
}

fn reply_context(h: &Header) -> Option<ReplyContext> {
    h.is_request().then(|| ReplyContext {
        request_id: h.id,
        one_way: !h.is_two_way(),
        ..ReplyContext::default()
    })
}

/// The Dubbo status for a local reply.
///
/// A filter's refusal (`rate_limited`, `forbidden`) is answered with 70 SERVICE_ERROR,
/// the status an Apache Dubbo provider itself sends when one of its own filters
/// (`tps` limit, `executes` limit, `token` check) refuses a call; the message tells the
/// reasons apart. 100 stays reserved for `overloaded` and 80 for broken upstreams.
pub fn local_reply_status(kind: LocalReplyKind) -> u8 {
    match kind {
        LocalReplyKind::NoRoute => status::SERVICE_NOT_FOUND,
        LocalReplyKind::UpstreamFailure => status::SERVER_ERROR,
        LocalReplyKind::Timeout => status::SERVER_TIMEOUT,
        LocalReplyKind::Overloaded => status::SERVER_THREADPOOL_EXHAUSTED_ERROR,
        LocalReplyKind::BadRequest => status::BAD_REQUEST,
        LocalReplyKind::RateLimited | LocalReplyKind::Forbidden => status::SERVICE_ERROR,
    }
}

impl Codec for DubboCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        // The magic, or as much of it as has arrived (two byte tests, no `memcmp`).
        let magic_ok = match src[..] {
            [a, b, ..] => [a, b] == MAGIC,
            [a] => a == MAGIC[0],
            [] => true,
        };
        if !magic_ok {
            let have = src.len().min(2);
            return Err(DecodeError::new(DecodeErrorKind::BadMagic(
                format!("expected da bb, got {:02x?}", &src[..have]).into(),
            )));
        }
        let Some(h) = Header::parse(src) else {
            return Ok(None);
        };
        let with_reply = |e: DecodeError| match reply_context(&h) {
            Some(ctx) => e.with_reply(ctx),
            None => e,
        };
        if h.serialization() != HESSIAN2 {
            return Err(with_reply(DecodeError::unsupported(format!(
                "dubbo serialization id {} ({}); only hessian2 (2) is supported",
                h.serialization(),
                serialization_name(h.serialization())
            ))));
        }
        if h.body_len < 0 {
            return Err(with_reply(DecodeError::malformed(format!(
                "dubbo body length {} is negative",
                h.body_len
            ))));
        }
        let total = HEADER_LEN + h.body_len as usize;
        if total > self.max_frame_size {
            return Err(with_reply(DecodeError::too_large(
                total as u64,
                self.max_frame_size,
            )));
        }
        if src.len() < total {
            // No room is reserved for the rest: the caller's buffer management supplies
            // it (the proxy's pool), and reserving in a buffer whose earlier frames are
            // still alive allocates a new one.
            return Ok(None);
        }
        let frame = src.split_to(total).freeze();
        let decoded = if h.flags & FLAG_REQUEST != 0 {
            self.decode_request(&h, frame)
        } else {
            self.decode_response(&h, frame)
        };
        decoded.map_err(with_reply)
    }

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let frame = msg.frame();
        if frame.len() < HEADER_LEN {
            return Err(EncodeError::Inconsistent(
                format!(
                    "dubbo frame of {} bytes is shorter than its header",
                    frame.len()
                )
                .into(),
            ));
        }
        if !msg.mutations().is_empty() {
            if msg.metadata_deferred() {
                // Mutations need the attachments' place: read it on a copy (shares
                // the frame; only when a response left unread is mutated).
                let mut read = msg.clone();
                self.decode_metadata(&mut read)
                    .map_err(|e| EncodeError::Inconsistent(e.to_string().into()))?;
                return self.encode(&read, dst);
            }
            let layout = DubboLayout::of(msg);
            match msg.kind() {
                MessageKind::Request | MessageKind::OneWay => {
                    return self.encode_mutated(msg, layout.attachments, dst)
                }
                MessageKind::Response if layout.attachments.is_some() => {
                    return self.encode_mutated(msg, layout.attachments, dst)
                }
                _ => {}
            }
        }
        // The frame as it is, one copy, with the new request id written over the old.
        let at = dst.len() + 4;
        dst.extend_from_slice(frame);
        dst[at..at + 8].copy_from_slice(&msg.request_id().to_be_bytes());
        Ok(())
    }

    fn decode_metadata(&mut self, msg: &mut Message) -> Result<(), DecodeError> {
        if !msg.metadata_deferred() {
            return Ok(());
        }
        match msg.kind() {
            MessageKind::Request | MessageKind::OneWay => {
                // A second handle on the frame (a reference count): the metadata is
                // filled while the frame is read.
                let frame = msg.frame().clone();
                let from = DubboLayout::of(msg).args;
                self.read_request_rest(&frame, msg, from, ALL_BODY_FIELDS)?;
            }
            _ => self.read_response_attachments(msg)?,
        }
        msg.set_metadata_deferred(false);
        Ok(())
    }

    fn encode_local_reply(
        &mut self,
        ctx: &ReplyContext,
        reply: &LocalReply<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        write_error_response(
            ctx.request_id,
            local_reply_status(reply.kind),
            reply.message,
            dst,
        )
    }

    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        write_event(
            FLAG_EVENT | HESSIAN2,
            status::OK,
            heartbeat.request_id(),
            None,
            dst,
        );
        Ok(())
    }

    fn encode_heartbeat(&mut self, id: u64, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        write_event(
            FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2,
            0,
            id,
            None,
            dst,
        );
        Ok(true)
    }

    fn encode_go_away(&mut self, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        write_event(FLAG_REQUEST | FLAG_EVENT | HESSIAN2, 0, 0, Some("R"), dst);
        Ok(true)
    }
}

/// Writes an event frame whose body is null or a string.
fn write_event(flags: u8, status: u8, id: u64, body: Option<&str>, dst: &mut BytesMut) {
    let at = dst.len();
    Header {
        flags,
        status,
        id,
        body_len: 0,
    }
    .write(dst);
    Writer::new(dst).write_nullable_string(body);
    let len = (dst.len() - at - HEADER_LEN) as i32;
    dst[at + 12..at + 16].copy_from_slice(&len.to_be_bytes());
}

/// Writes a response with a non-OK `status` whose body is the hessian string `message`
/// (what a Dubbo client reads as the error message).
pub fn write_error_response(
    id: u64,
    status: u8,
    message: &str,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let at = dst.len();
    Header {
        flags: HESSIAN2,
        status,
        id,
        body_len: 0,
    }
    .write(dst);
    Writer::new(dst).write_string(message);
    let len = dst.len() - at - HEADER_LEN;
    let len = i32::try_from(len).map_err(|_| EncodeError::TooLarge(len))?;
    dst[at + 12..at + 16].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meta_protocol::DEFAULT_MAX_FRAME_SIZE;

    #[test]
    fn descriptors_count_parameters() {
        assert_eq!(count_parameters(b""), Some(0));
        assert_eq!(count_parameters(b"I"), Some(1));
        assert_eq!(count_parameters(b"ILjava/lang/String;[B[[J"), Some(4));
        assert_eq!(count_parameters(b"Ljava/lang/String"), None);
        assert_eq!(count_parameters(b"L;"), None);
        assert_eq!(count_parameters(b"["), None);
        assert_eq!(count_parameters(b"Q"), None);
    }

    #[test]
    fn local_reply_statuses_follow_the_spec() {
        assert_eq!(local_reply_status(LocalReplyKind::NoRoute), 60);
        assert_eq!(local_reply_status(LocalReplyKind::UpstreamFailure), 80);
        assert_eq!(local_reply_status(LocalReplyKind::Timeout), 31);
        assert_eq!(local_reply_status(LocalReplyKind::Overloaded), 100);
        assert_eq!(local_reply_status(LocalReplyKind::BadRequest), 40);
        assert_eq!(local_reply_status(LocalReplyKind::RateLimited), 70);
        assert_eq!(local_reply_status(LocalReplyKind::Forbidden), 70);
    }

    #[test]
    fn heartbeat_reply_has_event_flags_and_same_id() {
        let mut c = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
        let mut buf = BytesMut::new();
        assert!(c.encode_heartbeat(77, &mut buf).unwrap());
        assert_eq!(&buf[..], b"\xda\xbb\xe2\x00\0\0\0\0\0\0\0\x4d\0\0\0\x01N");
        let hb = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(hb.kind(), MessageKind::Heartbeat);
        let mut out = BytesMut::new();
        c.encode_heartbeat_reply(&hb, &mut out).unwrap();
        assert_eq!(&out[..], b"\xda\xbb\x22\x14\0\0\0\0\0\0\0\x4d\0\0\0\x01N");
        let reply = c.decode(&mut out).unwrap().unwrap();
        assert_eq!(reply.kind(), MessageKind::Event);
    }

    #[test]
    fn a_partial_frame_gets_no_room_reserved() {
        let mut c = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
        for body_len in [200u32, 20_000] {
            let mut partial = BytesMut::with_capacity(HEADER_LEN);
            partial.extend_from_slice(b"\xda\xbb\xc2\x00\0\0\0\0\0\0\0\x01");
            partial.extend_from_slice(&body_len.to_be_bytes());
            assert!(c.decode(&mut partial).unwrap().is_none());
            assert_eq!(partial.capacity(), HEADER_LEN, "{body_len}: no reservation");
            assert_eq!(partial.len(), HEADER_LEN, "{body_len}: nothing consumed");
        }
    }

    /// Upstream keepalive: the probe carries any 31-bit id; the backend (a downstream
    /// codec) sees a heartbeat, and its answer decodes upstream as an event with that id.
    #[test]
    fn heartbeat_probe_is_answered_by_an_event_with_its_id() {
        let mut upstream = DubboCodec::new(Side::Upstream, DEFAULT_MAX_FRAME_SIZE);
        let mut backend = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
        for id in [0, 1, 0x7fff_ffff] {
            let mut wire = BytesMut::new();
            assert!(upstream.encode_heartbeat(id, &mut wire).unwrap());
            let probe = backend.decode(&mut wire).unwrap().unwrap();
            assert!(wire.is_empty());
            assert_eq!(
                (probe.kind(), probe.request_id()),
                (MessageKind::Heartbeat, id)
            );
            backend.encode_heartbeat_reply(&probe, &mut wire).unwrap();
            let answer = upstream.decode(&mut wire).unwrap().unwrap();
            assert_eq!(
                (answer.kind(), answer.request_id()),
                (MessageKind::Event, id)
            );
        }
    }

    #[test]
    fn go_away_is_a_readonly_event() {
        let mut c = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
        let mut buf = BytesMut::new();
        assert!(c.encode_go_away(&mut buf).unwrap());
        assert_eq!(buf[2], 0xa2);
        assert_eq!(&buf[16..], b"\x01R");
        assert_eq!(
            c.decode(&mut buf).unwrap().unwrap().kind(),
            MessageKind::GoAway
        );
    }

    #[test]
    fn layout_round_trips() {
        let l = DubboLayout {
            args: 40,
            first_arg_end: 50,
            attachments: Some((60, 61, 90)),
            response_type: Some(4),
        };
        let mut m = Message::new(MessageKind::Response, 1, Bytes::new());
        m.set_layout(l);
        assert_eq!(DubboLayout::of(&m), l);
        let l = DubboLayout {
            response_type: Some(0),
            attachments: None,
            ..l
        };
        m.set_layout(l);
        assert_eq!(DubboLayout::of(&m), l);
    }
}
