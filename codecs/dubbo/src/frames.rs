//! Building and reading whole Dubbo frames: for tests, the load generator and the demo
//! and echo backends.
//!
//! ```
//! use metaproxy_dubbo::frames::{Args, RequestFrame, ResponseFrame, parse_response};
//! use metaproxy_dubbo::hessian2::Value;
//!
//! // A two-way call of com.example.Demo.echo(String) in group "blue".
//! let req = RequestFrame {
//!     group: Some("blue"),
//!     attachments: &[("user", "alice")],
//!     args: Args::String("hi"),
//!     ..RequestFrame::new(7, "com.example.Demo", "echo")
//! }
//! .encode();
//! assert_eq!(&req[..2], &[0xda, 0xbb]);
//!
//! // Its answer, as a backend would send it.
//! let resp = ResponseFrame::string(7, "hi").encode();
//! let parsed = parse_response(&resp).unwrap();
//! assert_eq!(parsed.value, Some(Value::str("hi")));
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use meta_protocol::{Message, MessageKind};

use crate::codec::DubboLayout;
use crate::header::{
    response_type, status, Header, FLAG_EVENT, FLAG_REQUEST, FLAG_TWO_WAY, HEADER_LEN, HESSIAN2,
};
use crate::hessian2::{HessianError, Reader, Value, Writer};

/// The dubbo protocol version written in requests (the 2.7-era default; peers send
/// attachment-carrying response types only to clients of at least this version).
pub const DUBBO_VERSION: &str = "2.0.2";

/// The arguments of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args<'a> {
    /// No arguments (descriptor `""`).
    None,
    /// A JVM parameter-types descriptor and the already-encoded hessian2 values, one per
    /// parameter (written by the same encoder as the rest of the body, so class
    /// definition indexes must start at 0).
    Encoded {
        /// The descriptor, for example `ILjava/lang/String;`.
        types: &'a str,
        /// The encoded values.
        values: &'a [u8],
    },
    /// One `byte[]` argument of this many bytes (filled with `x`): a payload of a chosen
    /// size for benchmarks.
    Binary(usize),
    /// One `byte[]` argument with these bytes.
    Bytes(&'a [u8]),
    /// One `String` argument.
    String(&'a str),
}

/// A request frame to build. Start from [`RequestFrame::new`] and override fields.
#[derive(Clone, Copy, Debug)]
pub struct RequestFrame<'a> {
    /// The request id.
    pub id: u64,
    /// The dubbo protocol version string (default [`DUBBO_VERSION`]).
    pub dubbo_version: &'a str,
    /// The service path (interface name).
    pub interface: &'a str,
    /// The method name.
    pub method: &'a str,
    /// The service version (default `0.0.0`, as Java writes for an unversioned service).
    pub version: &'a str,
    /// The group, written as the `group` attachment.
    pub group: Option<&'a str>,
    /// Further attachments, written after `path`, `interface`, `version` and `group`.
    pub attachments: &'a [(&'a str, &'a str)],
    /// The arguments.
    pub args: Args<'a>,
    /// A one-way call (two-way flag clear).
    pub one_way: bool,
}

impl<'a> RequestFrame<'a> {
    /// A two-way call of `interface.method()` with no arguments.
    pub fn new(id: u64, interface: &'a str, method: &'a str) -> Self {
        RequestFrame {
            id,
            dubbo_version: DUBBO_VERSION,
            interface,
            method,
            version: "0.0.0",
            group: None,
            attachments: &[],
            args: Args::None,
            one_way: false,
        }
    }

    /// The frame as bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Appends the frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        let at = dst.len();
        let flags = FLAG_REQUEST | HESSIAN2 | if self.one_way { 0 } else { FLAG_TWO_WAY };
        Header {
            flags,
            status: 0,
            id: self.id,
            body_len: 0,
        }
        .write(dst);
        let mut w = Writer::new(dst);
        w.write_string(self.dubbo_version)
            .write_string(self.interface)
            .write_string(self.version)
            .write_string(self.method);
        match self.args {
            Args::None => {
                w.write_string("");
            }
            Args::Encoded { types, values } => {
                w.write_string(types).write_raw(values);
            }
            Args::Binary(n) => {
                w.write_string("[B");
                write_filled_binary(&mut w, n);
            }
            Args::Bytes(b) => {
                w.write_string("[B").write_binary(b);
            }
            Args::String(s) => {
                w.write_string("Ljava/lang/String;").write_string(s);
            }
        }
        w.write_map_start(None);
        w.write_string("path").write_string(self.interface);
        w.write_string("interface").write_string(self.interface);
        w.write_string("version").write_string(self.version);
        if let Some(g) = self.group {
            w.write_string("group").write_string(g);
        }
        for (k, v) in self.attachments {
            w.write_string(k).write_string(v);
        }
        w.write_end();
        fix_body_len(dst, at);
    }
}

/// Writes `n` bytes of `x` as a (chunked when large) binary without a temporary buffer.
fn write_filled_binary(w: &mut Writer<'_>, n: usize) {
    use crate::hessian2::BINARY_CHUNK;
    let mut left = n;
    while left > BINARY_CHUNK {
        w.write_raw(&[b'A', (BINARY_CHUNK >> 8) as u8, BINARY_CHUNK as u8]);
        w.write_raw(&[b'x'; BINARY_CHUNK]);
        left -= BINARY_CHUNK;
    }
    w.binary_header(left);
    w.write_raw(&[b'x'; BINARY_CHUNK][..left]);
}

fn fix_body_len(dst: &mut BytesMut, at: usize) {
    let len = (dst.len() - at - HEADER_LEN) as u32;
    dst[at + 12..at + 16].copy_from_slice(&len.to_be_bytes());
}

/// Rewrites the request id of a built frame in place (to reuse one frame for many
/// requests). Does nothing on a frame shorter than a header.
pub fn set_request_id(frame: &mut [u8], id: u64) {
    if let Some(b) = frame.get_mut(4..12) {
        b.copy_from_slice(&id.to_be_bytes());
    }
}

/// What an OK response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody<'a> {
    /// A value, already hessian2-encoded (response type 1, or 4 with attachments).
    Value(&'a [u8]),
    /// A string value.
    String(&'a str),
    /// A null result (type 2, or 5 with attachments).
    Null,
    /// An exception object, already hessian2-encoded (type 0, or 3 with attachments).
    Exception(&'a [u8]),
    /// A non-OK status: the body is this error message.
    Error(&'a str),
}

/// A response frame to build.
#[derive(Clone, Copy, Debug)]
pub struct ResponseFrame<'a> {
    /// The request id answered.
    pub id: u64,
    /// The status byte (20 unless [`ResponseBody::Error`]).
    pub status: u8,
    /// The body.
    pub body: ResponseBody<'a>,
    /// Attachments: when `Some`, the response type is one of 3/4/5 and the map follows.
    pub attachments: Option<&'a [(&'a str, &'a str)]>,
}

impl<'a> ResponseFrame<'a> {
    /// An OK response carrying an encoded value.
    pub fn value(id: u64, encoded: &'a [u8]) -> Self {
        Self::ok(id, ResponseBody::Value(encoded))
    }

    /// An OK response carrying a string.
    pub fn string(id: u64, s: &'a str) -> Self {
        Self::ok(id, ResponseBody::String(s))
    }

    /// An OK response with a null result.
    pub fn null(id: u64) -> Self {
        Self::ok(id, ResponseBody::Null)
    }

    /// An OK response carrying an encoded exception object.
    pub fn exception(id: u64, encoded: &'a [u8]) -> Self {
        Self::ok(id, ResponseBody::Exception(encoded))
    }

    /// An error response: a non-OK status and a message.
    pub fn error(id: u64, status: u8, message: &'a str) -> Self {
        ResponseFrame {
            id,
            status,
            body: ResponseBody::Error(message),
            attachments: None,
        }
    }

    fn ok(id: u64, body: ResponseBody<'a>) -> Self {
        ResponseFrame {
            id,
            status: status::OK,
            body,
            attachments: None,
        }
    }

    /// The same response with attachments (types 3/4/5).
    pub fn with_attachments(mut self, attachments: &'a [(&'a str, &'a str)]) -> Self {
        self.attachments = Some(attachments);
        self
    }

    /// The frame as bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Appends the frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        let at = dst.len();
        Header {
            flags: HESSIAN2,
            status: self.status,
            id: self.id,
            body_len: 0,
        }
        .write(dst);
        let mut w = Writer::new(dst);
        let att = i32::from(self.attachments.is_some()) * 3;
        match self.body {
            ResponseBody::Error(m) => {
                w.write_string(m);
                fix_body_len(dst, at);
                return;
            }
            ResponseBody::Value(v) => {
                w.write_int(response_type::VALUE + att).write_raw(v);
            }
            ResponseBody::String(s) => {
                w.write_int(response_type::VALUE + att).write_string(s);
            }
            ResponseBody::Null => {
                w.write_int(response_type::NULL + att);
            }
            ResponseBody::Exception(v) => {
                w.write_int(response_type::EXCEPTION + att).write_raw(v);
            }
        }
        if let Some(a) = self.attachments {
            w.write_string_map(a.iter().copied());
        }
        fix_body_len(dst, at);
    }
}

/// Answers a decoded request the way the demo and echo backends do:
///
/// - a [`MessageKind::Request`] gets an OK response with the same id whose value is the
///   request's first argument, copied byte for byte (response type 1), or a null result
///   (type 2) when the call has no arguments;
/// - a [`MessageKind::Heartbeat`] gets the heartbeat answer (event response, body null);
/// - anything else (one-way calls, events, responses) gets `None`: nothing to send.
///
/// The first argument is self-contained on the wire (only strings precede it in the
/// body, and strings are never referenced), so copying it is a valid response value.
pub fn echo_response(request: &Message) -> Option<Bytes> {
    echo_with(request, None)
}

/// Like [`echo_response`], but the response carries attachments (type 4, or 5 for a
/// null result): every string attachment of the request (so a client can see what
/// reached the backend, mutations included) followed by `extra` (for example
/// `("backend", "v2")` to tell which backend answered).
pub fn echo_response_with_attachments(request: &Message, extra: &[(&str, &str)]) -> Option<Bytes> {
    echo_with(request, Some(extra))
}

fn echo_with(request: &Message, extra: Option<&[(&str, &str)]>) -> Option<Bytes> {
    match request.kind() {
        MessageKind::Request => {}
        MessageKind::Heartbeat => {
            let mut b = BytesMut::with_capacity(HEADER_LEN + 1);
            Header {
                flags: FLAG_EVENT | HESSIAN2,
                status: status::OK,
                id: request.request_id(),
                body_len: 1,
            }
            .write(&mut b);
            b.put_u8(b'N');
            return Some(b.freeze());
        }
        _ => return None,
    }
    let frame = request.frame();
    let layout = DubboLayout::of(request);
    let first = frame
        .get(layout.args..layout.first_arg_end)
        .unwrap_or_default();
    let body = if first.is_empty() {
        ResponseBody::Null
    } else {
        ResponseBody::Value(first)
    };
    let mut owned: Vec<(String, String)> = Vec::new();
    if let (Some(extra), Some((start, _, end))) = (extra, layout.attachments) {
        let _ = Reader::with_range(frame, start, end)
            .read_string_map(|k, v| owned.push((k.to_string(), v.to_string())));
        owned.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
    } else if let Some(extra) = extra {
        owned.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
    }
    let pairs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut resp = ResponseFrame::ok(request.request_id(), body);
    if extra.is_some() {
        resp = resp.with_attachments(&pairs);
    }
    Some(resp.encode())
}

/// A request read whole (arguments materialised): for backends and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRequest {
    /// The header.
    pub header: Header,
    /// Dubbo protocol version.
    pub dubbo_version: Option<String>,
    /// Service path.
    pub interface: Option<String>,
    /// Service version.
    pub version: Option<String>,
    /// Method name.
    pub method: Option<String>,
    /// Parameter-types descriptor.
    pub types: String,
    /// The arguments.
    pub args: Vec<Value>,
    /// String attachments, in wire order.
    pub attachments: Vec<(String, String)>,
}

/// A response read whole: for clients and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedResponse {
    /// The header.
    pub header: Header,
    /// The response type (OK responses).
    pub response_type: Option<i32>,
    /// The value or exception (types 0, 1, 3, 4).
    pub value: Option<Value>,
    /// The error message (non-OK status).
    pub error: Option<String>,
    /// String attachments (types 3-5), in wire order.
    pub attachments: Vec<(String, String)>,
}

/// Why a frame could not be parsed whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its header or than its announced body.
    #[error("dubbo frame truncated")]
    Truncated,
    /// The body is not valid hessian2 for its kind.
    #[error("dubbo body: {0}")]
    Body(#[from] HessianError),
    /// A parameter descriptor that cannot be counted.
    #[error("bad parameter descriptor {0:?}")]
    Descriptor(String),
}

fn body(frame: &Bytes) -> Result<(Header, usize), ParseError> {
    let h = Header::parse(frame).ok_or(ParseError::Truncated)?;
    let end = HEADER_LEN + usize::try_from(h.body_len).map_err(|_| ParseError::Truncated)?;
    if frame.len() < end {
        return Err(ParseError::Truncated);
    }
    Ok((h, end))
}

fn opt_string(r: &mut Reader<'_>) -> Result<Option<String>, HessianError> {
    Ok(r.read_nullable_string()?.map(|s| s.to_string()))
}

/// Reads a request frame whole, arguments included.
pub fn parse_request(frame: &Bytes) -> Result<ParsedRequest, ParseError> {
    let (header, end) = body(frame)?;
    let mut r = Reader::with_range(frame, HEADER_LEN, end);
    let dubbo_version = opt_string(&mut r)?;
    let interface = opt_string(&mut r)?;
    let version = opt_string(&mut r)?;
    let method = opt_string(&mut r)?;
    let types = opt_string(&mut r)?.unwrap_or_default();
    let n = crate::codec::count_parameters(types.as_bytes())
        .ok_or_else(|| ParseError::Descriptor(types.clone()))?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        args.push(r.read_value()?);
    }
    let mut attachments = Vec::new();
    if !r.is_at_end() {
        r.read_string_map(|k, v| attachments.push((k.to_string(), v.to_string())))?;
    }
    Ok(ParsedRequest {
        header,
        dubbo_version,
        interface,
        version,
        method,
        types,
        args,
        attachments,
    })
}

/// Reads a response frame whole.
pub fn parse_response(frame: &Bytes) -> Result<ParsedResponse, ParseError> {
    let (header, end) = body(frame)?;
    let mut r = Reader::with_range(frame, HEADER_LEN, end);
    let mut out = ParsedResponse {
        header,
        response_type: None,
        value: None,
        error: None,
        attachments: Vec::new(),
    };
    if header.status != status::OK {
        out.error = opt_string(&mut r)?;
        return Ok(out);
    }
    if header.is_event() {
        out.value = Some(r.read_value()?);
        return Ok(out);
    }
    let t = r.read_int()?;
    out.response_type = Some(t);
    if !matches!(
        t,
        response_type::NULL | response_type::NULL_WITH_ATTACHMENTS
    ) {
        out.value = Some(r.read_value()?);
    }
    if response_type::has_attachments(t) {
        r.read_string_map(|k, v| out.attachments.push((k.to_string(), v.to_string())))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DubboCodec;
    use meta_protocol::{Codec, Side, DEFAULT_MAX_FRAME_SIZE};

    fn decode(frame: &Bytes) -> Message {
        let mut c = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
        let mut b = BytesMut::from(&frame[..]);
        c.decode(&mut b).unwrap().unwrap()
    }

    #[test]
    fn request_frame_reads_back() {
        let f = RequestFrame {
            group: Some("g1"),
            version: "1.0.0",
            attachments: &[("user", "u1")],
            args: Args::Binary(40_000),
            ..RequestFrame::new(9, "com.example.Demo", "upload")
        }
        .encode();
        let p = parse_request(&f).unwrap();
        assert_eq!(p.header.id, 9);
        assert!(p.header.is_two_way());
        assert_eq!(p.interface.as_deref(), Some("com.example.Demo"));
        assert_eq!(p.method.as_deref(), Some("upload"));
        assert_eq!(p.version.as_deref(), Some("1.0.0"));
        assert_eq!(p.types, "[B");
        assert_eq!(p.args, vec![Value::Binary(vec![b'x'; 40_000])]);
        assert!(p.attachments.contains(&("group".into(), "g1".into())));
        assert!(p.attachments.contains(&("user".into(), "u1".into())));
    }

    #[test]
    fn echo_returns_first_argument() {
        let mut args = BytesMut::new();
        Writer::new(&mut args).write_int(5).write_string("second");
        let f = RequestFrame {
            args: Args::Encoded {
                types: "ILjava/lang/String;",
                values: &args,
            },
            ..RequestFrame::new(3, "I", "m")
        }
        .encode();
        let resp = echo_response(&decode(&f)).unwrap();
        let p = parse_response(&resp).unwrap();
        assert_eq!(p.header.id, 3);
        assert_eq!(p.response_type, Some(1));
        assert_eq!(p.value, Some(Value::Int(5)));

        let with = echo_response_with_attachments(&decode(&f), &[("backend", "v2")]).unwrap();
        let p = parse_response(&with).unwrap();
        assert_eq!(p.response_type, Some(4));
        assert!(p.attachments.contains(&("path".into(), "I".into())));
        assert_eq!(p.attachments.last(), Some(&("backend".into(), "v2".into())));
    }

    #[test]
    fn echo_ignores_one_way_and_answers_heartbeats() {
        let f = RequestFrame {
            one_way: true,
            ..RequestFrame::new(3, "I", "m")
        }
        .encode();
        assert_eq!(echo_response(&decode(&f)), None);
        let hb = Bytes::from_static(b"\xda\xbb\xe2\x00\0\0\0\0\0\0\0\x05\0\0\0\x01N");
        let r = echo_response(&decode(&hb)).unwrap();
        assert_eq!(&r[..], b"\xda\xbb\x22\x14\0\0\0\0\0\0\0\x05\0\0\0\x01N");
        let noargs = RequestFrame::new(4, "I", "m").encode();
        let p = parse_response(&echo_response(&decode(&noargs)).unwrap()).unwrap();
        assert_eq!((p.response_type, p.value), (Some(2), None));
    }

    #[test]
    fn error_response_carries_message() {
        let f = ResponseFrame::error(5, status::SERVICE_NOT_FOUND, "no route").encode();
        let p = parse_response(&f).unwrap();
        assert_eq!(p.header.status, 60);
        assert_eq!(p.error.as_deref(), Some("no route"));
    }

    #[test]
    fn set_request_id_changes_only_the_id() {
        let f = RequestFrame::new(1, "I", "m").encode();
        let mut m = f.to_vec();
        set_request_id(&mut m, 0xfeed);
        assert_eq!(&m[..4], &f[..4]);
        assert_eq!(&m[4..12], &0xfeed_u64.to_be_bytes());
        assert_eq!(&m[12..], &f[12..]);
    }
}
