//! # meta-protocol: the codec contract of metaproxy
//!
//! A protocol joins metaproxy by implementing one small trait, [`Codec`]: decode a frame
//! into a [`Message`] (its kind, request id and routable [`Metadata`]), encode it back
//! with a rewritten id and [`Mutations`], and build protocol-native error replies. A
//! [`CodecFactory`], registered by name, parses a listener's options once and returns a
//! [`ConfiguredProtocol`] that makes one codec per connection. The runtime does the
//! rest: listeners, routing, load balancing, pooling, timeouts. This crate does no
//! networking, so codecs are easy to fuzz and to benchmark.
//!
//! The guide for codec authors is `docs/WRITING_A_CODEC.md` in the repository; the
//! listener fields a codec sees (`codec`, `options`, `max_frame_size`) are described in
//! `docs/CONFIG.md`.
//!
//! ## A complete codec
//!
//! A toy protocol: each frame is a `u32` length, a `u32` request id (high bit set on
//! responses) and a UTF-8 method name. The method becomes routable metadata.
//!
//! ```
//! use bytes::{Buf, BufMut, BytesMut};
//! use meta_protocol::*;
//!
//! struct Toy { max: usize }
//!
//! impl Codec for Toy {
//!     fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
//!         if src.len() < 4 { return Ok(None); }
//!         let len = u32::from_be_bytes(src[..4].try_into().unwrap()) as usize;
//!         if len > self.max { return Err(DecodeError::too_large(len as u64, self.max)); }
//!         if len < 4 { return Err(DecodeError::malformed("frame shorter than its id")); }
//!         if src.len() < 4 + len { return Ok(None); }
//!         let frame = src.split_to(4 + len).freeze();
//!         let raw_id = u32::from_be_bytes(frame[4..8].try_into().unwrap());
//!         let kind = if raw_id >> 31 == 1 { MessageKind::Response } else { MessageKind::Request };
//!         std::str::from_utf8(&frame[8..])
//!             .map_err(|_| DecodeError::malformed("method is not UTF-8"))?;
//!         let end = frame.len();
//!         let mut msg = Message::new(kind, u64::from(raw_id & 0x7fff_ffff), frame);
//!         // The value is recorded as its place in the frame: no copy, no reference count.
//!         msg.metadata_mut().set_value_in_frame(MetaStr::from_static("method"), 8..end);
//!         Ok(Some(msg))
//!     }
//!
//!     fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
//!         let frame = msg.frame();
//!         let flag = if msg.kind() == MessageKind::Response { 1 << 31 } else { 0 };
//!         dst.put_slice(&frame[..4]);
//!         dst.put_u32(msg.request_id() as u32 | flag);   // the id may have been rewritten
//!         dst.put_slice(&frame[8..]);
//!         Ok(())
//!     }
//!
//!     fn encode_local_reply(&mut self, ctx: &ReplyContext, reply: &LocalReply<'_>,
//!                           dst: &mut BytesMut) -> Result<(), EncodeError> {
//!         dst.put_u32(4 + reply.message.len() as u32);
//!         dst.put_u32(ctx.request_id as u32 | 1 << 31);
//!         dst.put_slice(reply.message.as_bytes());
//!         Ok(())
//!     }
//! }
//!
//! struct ToyFactory;
//! impl CodecFactory for ToyFactory {
//!     fn name(&self) -> &str { "toy" }
//!     fn configure(&self, options: &CodecOptions)
//!         -> Result<Box<dyn ConfiguredProtocol>, CodecError> {
//!         reject_options(options)?;   // the toy has no options
//!         Ok(Box::new(|ctx: &CodecContext| -> Box<dyn Codec> {
//!             Box::new(Toy { max: ctx.max_frame_size })
//!         }))
//!     }
//! }
//!
//! // The runtime looks the codec up by the name in a listener's `codec:` field and
//! // configures it once per listener.
//! let mut registry = CodecRegistry::new();
//! registry.register(std::sync::Arc::new(ToyFactory));
//! let toy = registry.get("toy").unwrap().configure(&CodecOptions::new()).unwrap();
//! assert_eq!(toy.capabilities(), CodecCapabilities::default());
//! let mut codec = toy.new_codec(&CodecContext::downstream(DEFAULT_MAX_FRAME_SIZE)).unwrap();
//!
//! // Half a frame: "need more bytes".
//! let mut buf = BytesMut::from(&b"\0\0\0\x09\0\0\0\x05hel"[..]);
//! assert!(codec.decode(&mut buf).unwrap().is_none());
//! buf.extend_from_slice(b"lo");
//! let mut msg = codec.decode(&mut buf).unwrap().unwrap();
//! assert_eq!(msg.metadata().get("method"), Some("hello"));
//!
//! // Multiplexing rewrites the id; encode writes the new one.
//! msg.set_request_id(42);
//! let mut out = BytesMut::new();
//! codec.encode(&msg, &mut out).unwrap();
//! assert_eq!(&out[4..8], &42u32.to_be_bytes());
//! ```
//!
//! ## Rules a codec follows
//! - `decode` never does I/O and never panics on any input; it checks the announced
//!   frame size against `max_frame_size` from the header alone.
//! - Metadata values are places in the frame ([`Metadata::set_in_frame`],
//!   [`Metadata::set_value_in_frame`]), checked UTF-8 by the codec; decode into a new
//!   string ([`Metadata::set`]) only when the wire form is not plain UTF-8.
//! - `encode` forwards the frame byte for byte apart from the request id and mutations.
//! - Local replies are what a stock client of the protocol understands as an error.
//!
//! ## What the runtime guarantees a codec
//! - **Options are parsed once.** [`CodecFactory::configure`] runs once per listener,
//!   when it is bound (config validation by `check`, at start and on reload calls it
//!   too, to report bad options); connections only get a [`CodecContext`] (side, `max_frame_size`, wire format).
//!   [`ConfiguredProtocol::capabilities`] is optional: by default it returns
//!   [`CodecCapabilities::default()`], which is `multiplexing: true, mutations: true`.
//!   A codec without options calls [`reject_options`], so an option given to it is
//!   reported by `check`.
//! - **Request ids are 31 bits wide after rewriting.** On an upstream connection the
//!   runtime replaces each request's id with a connection-local id in `0..2^31`, so a
//!   protocol whose id is a signed or unsigned 32-bit field can carry it; the response
//!   gets the client's own id back (whatever `decode` returned) before the downstream
//!   codec encodes it.
//! - **One-way requests are never answered by the proxy.** The runtime writes no local
//!   reply to a [`MessageKind::OneWay`] request (nor to a bad frame whose
//!   [`ReplyContext::one_way`] is set); a codec need not check.
//! - **A partial frame at end of stream is an error.** When a peer closes its side
//!   while bytes of an incomplete frame are buffered (the last `decode` returned
//!   `Ok(None)`), the runtime counts a decode error (`metaproxy_decode_errors_total`
//!   with the listener's label, on a client connection) and drops the bytes. Nothing is
//!   answered: the client has stopped sending and the frame's id may not be known.
//! - **Local replies carry a human-readable message.** [`LocalReply::message`] starts
//!   with `metaproxy: ` and says why (for example `metaproxy: no route matched the
//!   request (method=add)` or `metaproxy: bad request: malformed frame: ...`). It may
//!   hold any UTF-8, including text taken from the request; the codec writes it in its
//!   protocol's error shape and escapes it if the wire format needs that.
//! - **A layout is a small plain value.** Positions a codec records on decode for its
//!   own `encode` travel with the message as [`LayoutWords`] (six `u32`s), written and
//!   read through the codec's own typed [`FrameLayout`]. It is not an arbitrary Rust
//!   object so that the contract stays implementable across a byte-only boundary later
//!   (a codec compiled to WebAssembly: frame bytes in; metadata, layout and encoded
//!   bytes out).
//!
//! ## Testing helpers
//! With the `testing` cargo feature, the `testing` module offers the checks the reference codecs pass:
//! decoding a stream split at every point, arbitrary input without a panic, and a
//! decode, rewrite, encode, decode round trip.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod ascii;
mod call_name;
mod codec;
mod error;
mod local_reply;
mod message;
mod metadata;
#[cfg(feature = "testing")]
pub mod testing;

pub use ascii::is_ascii;
pub use call_name::{CallName, INLINE_CALL_NAME};
pub use codec::{
    reject_options, Codec, CodecCapabilities, CodecContext, CodecFactory, CodecOptions,
    CodecRegistry, ConfiguredProtocol, Side, DEFAULT_MAX_FRAME_SIZE,
};
pub use error::{CodecError, DecodeError, DecodeErrorKind, EncodeError};
pub use local_reply::{LocalReply, LocalReplyKind};
pub use message::{
    FrameLayout, LayoutWords, Message, MessageKind, ReplyContext, ResponseStatus, WireFormat,
    LAYOUT_WORDS,
};
pub use metadata::{
    MetaStr, Metadata, MetadataKey, MetadataMut, Mutations, WellKnownKey, INLINE_METADATA_ENTRIES,
};

pub use bytes;
