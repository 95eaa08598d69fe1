//! Building, reading and answering Thrift frames without generated code.
//!
//! The load generator (`metaproxy bench --protocol thrift`), the demo and echo backends
//! and the tests build on this module. Frames follow one simple service shape:
//!
//! - a **call** `name(1: binary payload)`: the argument struct has one binary field,
//!   id 1;
//! - a **reply** whose result struct carries the success value as field 0 (binary);
//! - a **declared exception**: the result struct carries field `id >= 1`, a struct
//!   whose field 1 is a string message (like an IDL `exception` with a `message`);
//! - a **TApplicationException** (message type 3): field 1 message, field 2 type.
//!
//! An echo backend is three lines: decode calls with a downstream [`crate::ThriftCodec`],
//! then for each message call [`echo_reply`], which answers a call with a reply whose
//! success value is the call's payload, in the call's transport × protocol, with its
//! name and sequence id (and, on the header transport, the call's info headers echoed
//! back, so tests can observe header mutations), and writes nothing for one-way calls.
//!
//! ```
//! use bytes::BytesMut;
//! use meta_protocol::Codec;
//! use metaproxy_thrift::frames::{self, FrameSpec, Reply};
//! use metaproxy_thrift::{Protocol, ThriftCodec, Transport};
//!
//! let spec = FrameSpec::new(Transport::Header, Protocol::Compact, "Echo:ping", 7)
//!     .with_headers(&[("user", "alice")]);
//! let mut wire = BytesMut::new();
//! frames::write_call(&spec, b"hello", &mut wire).unwrap();
//!
//! // The backend side.
//! let mut server = ThriftCodec::new(None, None, 1 << 20);
//! let call = server.decode(&mut wire).unwrap().unwrap();
//! assert_eq!(call.metadata().get("service"), Some("Echo"));
//! assert_eq!(call.metadata().get("user"), Some("alice"));
//! let mut answer = BytesMut::new();
//! assert!(frames::echo_reply(&call, &mut answer).unwrap());
//!
//! // The client side.
//! let mut client = ThriftCodec::new(Some(Transport::Header), Some(Protocol::Compact), 1 << 20);
//! let reply = client.decode(&mut answer).unwrap().unwrap();
//! assert_eq!(reply.request_id(), 7);
//! assert_eq!(frames::read_reply(&reply).unwrap(), Reply::Success(bytes::Bytes::from_static(b"hello")));
//! ```

use bytes::{Bytes, BytesMut};
use meta_protocol::{Message, MessageKind};

use crate::codec::{write_app_exception, ThriftLayout};
use crate::format::{split_wire, Protocol, Transport};
use crate::read::{for_each_info_header, mtype, next_field, ttype, zigzag32, Cursor};
use crate::write::{write_frame, ProtoWriter};

/// Why a frame could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame would exceed a transport limit (4 GiB, or 262140 bytes of THeader).
    #[error("frame too large: {0}")]
    TooLarge(&'static str),
    /// The message was not decoded by the thrift codec (no thrift wire format).
    #[error("not a thrift message (wire format {0:?})")]
    NotThrift(meta_protocol::WireFormat),
    /// The message is not of the kind the helper answers or reads.
    #[error("expected a {expected}, got a {got:?}")]
    WrongKind {
        /// What the helper expected.
        expected: &'static str,
        /// What the message is.
        got: MessageKind,
    },
    /// The struct does not have the expected shape.
    #[error("malformed thrift message: {0}")]
    Malformed(&'static str),
}

/// Where and how to write one frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameSpec<'a> {
    /// The transport.
    pub transport: Transport,
    /// The protocol.
    pub protocol: Protocol,
    /// The message name as on the wire (`method`, or `Service:method` for the
    /// multiplexed protocol).
    pub name: &'a str,
    /// The sequence id (also written into the THeader).
    pub seqid: i32,
    /// Info key/value headers (header transport only; ignored by the others).
    pub headers: &'a [(&'a str, &'a str)],
}

impl<'a> FrameSpec<'a> {
    /// A spec without headers.
    pub fn new(transport: Transport, protocol: Protocol, name: &'a str, seqid: i32) -> Self {
        FrameSpec {
            transport,
            protocol,
            name,
            seqid,
            headers: &[],
        }
    }

    /// The same spec with THeader info headers.
    pub fn with_headers(mut self, headers: &'a [(&'a str, &'a str)]) -> Self {
        self.headers = headers;
        self
    }

    fn write(
        &self,
        headers: &[(&[u8], &[u8])],
        dst: &mut BytesMut,
        body: impl FnOnce(&mut ProtoWriter<'_>),
    ) -> Result<(), FrameError> {
        write_frame(
            dst,
            self.transport,
            self.protocol,
            self.seqid as u32,
            headers,
            body,
        )
        .map_err(FrameError::TooLarge)
    }

    fn own_headers(&self) -> Vec<(&'a [u8], &'a [u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect()
    }
}

fn write_message(
    spec: &FrameSpec<'_>,
    mt: u8,
    payload: &[u8],
    field: i16,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let headers = spec.own_headers();
    spec.write(&headers, dst, |w| {
        w.message_begin(spec.name, mt, spec.seqid as u32);
        w.field(ttype::STRING, field);
        w.bytes(payload);
        w.stop();
    })
}

/// Appends a call `name(1: binary payload)`.
pub fn write_call(
    spec: &FrameSpec<'_>,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    write_message(spec, mtype::CALL, payload, 1, dst)
}

/// Appends a one-way call `name(1: binary payload)`.
pub fn write_oneway(
    spec: &FrameSpec<'_>,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    write_message(spec, mtype::ONEWAY, payload, 1, dst)
}

/// A whole call frame whose payload is `payload_len` bytes of `b'x'`.
pub fn call_frame(spec: &FrameSpec<'_>, payload_len: usize) -> Result<Bytes, FrameError> {
    let mut dst = BytesMut::with_capacity(payload_len + 64);
    write_call(spec, &vec![b'x'; payload_len], &mut dst)?;
    Ok(dst.freeze())
}

/// Appends a reply whose result struct carries `payload` as the success field 0.
pub fn write_reply(
    spec: &FrameSpec<'_>,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    write_message(spec, mtype::REPLY, payload, 0, dst)
}

/// Appends a reply carrying declared exception field `field` (>= 1): a struct whose
/// field 1 is the string `message`.
pub fn write_declared_exception(
    spec: &FrameSpec<'_>,
    field: i16,
    message: &str,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let headers = spec.own_headers();
    spec.write(&headers, dst, |w| {
        w.message_begin(spec.name, mtype::REPLY, spec.seqid as u32);
        w.field(ttype::STRUCT, field);
        w.field(ttype::STRING, 1);
        w.bytes(message.as_bytes());
        w.stop();
        w.stop();
    })
}

/// Appends a TApplicationException (message type 3) of type `kind` (see
/// [`crate::app_exception`]).
pub fn write_app_exception_frame(
    spec: &FrameSpec<'_>,
    kind: i32,
    message: &str,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let headers = spec.own_headers();
    spec.write(&headers, dst, |w| {
        write_app_exception(w, spec.name, spec.seqid as u32, kind, message)
    })
}

/// What a decoded reply says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Success field 0 as binary.
    Success(Bytes),
    /// An empty result struct (a `void` method succeeded).
    Void,
    /// A declared exception in result field `field`.
    Declared {
        /// Its field id (>= 1).
        field: i16,
    },
    /// A TApplicationException.
    AppException {
        /// Its type (1 unknown method, 6 internal error, 7 protocol error...).
        kind: i32,
        /// Its message.
        message: String,
    },
}

fn thrift_of(msg: &Message) -> Result<(Transport, Protocol), FrameError> {
    split_wire(msg.wire()).ok_or(FrameError::NotThrift(msg.wire()))
}

fn body_cursor(msg: &Message) -> Result<Cursor<'_>, FrameError> {
    let body = msg.layout::<ThriftLayout>().body as usize;
    if body > msg.frame().len() {
        return Err(FrameError::Malformed("layout outside the frame"));
    }
    Ok(Cursor::at(msg.frame(), body))
}

/// Reads a reply decoded by a [`crate::ThriftCodec`]: success payload, declared
/// exception or TApplicationException.
pub fn read_reply(msg: &Message) -> Result<Reply, FrameError> {
    if msg.kind() != MessageKind::Response {
        return Err(FrameError::WrongKind {
            expected: "response",
            got: msg.kind(),
        });
    }
    let (_, p) = thrift_of(msg)?;
    let frame = msg.frame();
    let mut c = body_cursor(msg)?;
    let mut last = 0;
    let bad = |_| FrameError::Malformed("result struct does not parse");
    if msg.status() != meta_protocol::ResponseStatus::Error {
        // A reply: the first field tells success from a declared exception.
        return match next_field(&mut c, p, &mut last).map_err(bad)? {
            None => Ok(Reply::Void),
            Some(f) if f.id == 0 && f.ttype == ttype::STRING => Ok(Reply::Success(
                frame.slice(string_range(frame, f.start, f.end, p)?),
            )),
            Some(f) if f.id == 0 => Err(FrameError::Malformed("success field is not binary")),
            Some(f) => Ok(Reply::Declared { field: f.id }),
        };
    }
    let (mut kind, mut message) = (0, String::new());
    while let Some(f) = next_field(&mut c, p, &mut last).map_err(bad)? {
        match (f.id, f.ttype) {
            (1, ttype::STRING) => {
                let r = string_range(frame, f.start, f.end, p)?;
                message = String::from_utf8_lossy(&frame[r]).into_owned();
            }
            (2, ttype::I32) => kind = read_i32(frame, f.start, p)?,
            _ => {}
        }
    }
    Ok(Reply::AppException { kind, message })
}

/// The payload of a call built by [`write_call`]: the binary field 1 of the argument
/// struct (`None` when the struct has no such field).
pub fn call_payload(msg: &Message) -> Result<Option<Bytes>, FrameError> {
    if !msg.kind().is_call() {
        return Err(FrameError::WrongKind {
            expected: "call",
            got: msg.kind(),
        });
    }
    let (_, p) = thrift_of(msg)?;
    let frame = msg.frame();
    let mut c = body_cursor(msg)?;
    let mut last = 0;
    while let Some(f) = next_field(&mut c, p, &mut last)
        .map_err(|_| FrameError::Malformed("argument struct does not parse"))?
    {
        if f.id == 1 && f.ttype == ttype::STRING {
            return Ok(Some(frame.slice(string_range(frame, f.start, f.end, p)?)));
        }
    }
    Ok(None)
}

/// Answers a decoded call as an echo backend: a reply with the call's payload (field 1
/// of its arguments, empty when absent) as the success value, with the call's name,
/// sequence id, transport and protocol; on the header transport the call's info
/// headers are echoed back. Returns `false` (and writes nothing) for one-way calls.
pub fn echo_reply(call: &Message, dst: &mut BytesMut) -> Result<bool, FrameError> {
    if call.kind() == MessageKind::OneWay {
        return Ok(false);
    }
    let (t, p) = thrift_of(call)?;
    let payload = call_payload(call)?.unwrap_or_default();
    let frame = call.frame();
    let mut headers: Vec<(&[u8], &[u8])> = Vec::new();
    if t == Transport::Header {
        let layout: ThriftLayout = call.layout();
        let (info_start, payload_at) = (layout.info_start as usize, layout.payload as usize);
        for_each_info_header(frame, info_start, payload_at, |(ks, ke), (vs, ve)| {
            headers.push((&frame[ks..ke], &frame[vs..ve]));
            Ok(())
        })
        .map_err(|_| FrameError::Malformed("THeader info headers do not parse"))?;
    }
    let spec = FrameSpec::new(t, p, call.name(), call.request_id() as i32);
    spec.write(&headers, dst, |w| {
        w.message_begin(spec.name, mtype::REPLY, spec.seqid as u32);
        w.field(ttype::STRING, 0);
        w.bytes(&payload);
        w.stop();
    })?;
    Ok(true)
}

fn string_range(
    frame: &[u8],
    start: usize,
    end: usize,
    p: Protocol,
) -> Result<std::ops::Range<usize>, FrameError> {
    let mut c = Cursor::at(frame, start);
    let bad = |_| FrameError::Malformed("string does not parse");
    let len = match p {
        Protocol::Binary => c.u32().map_err(bad)? as usize,
        Protocol::Compact => c.varint_len().map_err(bad)?,
    };
    let s = c.pos();
    if s + len != end {
        return Err(FrameError::Malformed("string length mismatch"));
    }
    Ok(s..end)
}

fn read_i32(frame: &[u8], start: usize, p: Protocol) -> Result<i32, FrameError> {
    let mut c = Cursor::at(frame, start);
    let bad = |_| FrameError::Malformed("i32 does not parse");
    match p {
        Protocol::Binary => Ok(c.u32().map_err(bad)? as i32),
        Protocol::Compact => zigzag32(c.varint(5).map_err(bad)?).map_err(bad),
    }
}
