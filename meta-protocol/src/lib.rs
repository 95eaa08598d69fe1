//! # meta-protocol: the codec contract of metaproxy
//!
//! A protocol joins metaproxy by implementing one small trait, [`Codec`]: decode a frame
//! into a [`Message`] (its kind, request id and routable [`Metadata`]), encode it back
//! with a rewritten id and [`Mutations`], and build protocol-native error replies. The
//! runtime does the rest: listeners, routing, load balancing, pooling, timeouts.
//! This crate does no networking, so codecs are easy to fuzz and to benchmark.
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
//!         let method = MetaStr::try_from(frame.slice(8..))
//!             .map_err(|_| DecodeError::malformed("method is not UTF-8"))?;
//!         let mut msg = Message::new(kind, u64::from(raw_id & 0x7fff_ffff), frame);
//!         msg.metadata_mut().set(MetaStr::from_static("method"), method);
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
//!     fn new_codec(&self, ctx: &CodecContext<'_>) -> Result<Box<dyn Codec>, CodecError> {
//!         Ok(Box::new(Toy { max: ctx.max_frame_size }))
//!     }
//! }
//!
//! // The runtime looks the codec up by the name in a listener's `codec:` field.
//! let mut registry = CodecRegistry::new();
//! registry.register(std::sync::Arc::new(ToyFactory));
//! let options = CodecOptions::new();
//! let ctx = CodecContext { side: Side::Downstream, options: &options,
//!                          max_frame_size: DEFAULT_MAX_FRAME_SIZE, wire: None };
//! let mut codec = registry.get("toy").unwrap().new_codec(&ctx).unwrap();
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
//! - Metadata values slice the frame ([`MetaStr`] over [`bytes::Bytes`]); copy only when
//!   the wire form is not plain UTF-8.
//! - `encode` forwards the frame byte for byte apart from the request id and mutations.
//! - Local replies are what a stock client of the protocol understands as an error.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod codec;
mod error;
mod local_reply;
mod message;
mod metadata;

pub use codec::{
    Codec, CodecCapabilities, CodecContext, CodecFactory, CodecOptions, CodecRegistry, Side,
    DEFAULT_MAX_FRAME_SIZE,
};
pub use error::{CodecError, DecodeError, DecodeErrorKind, EncodeError};
pub use local_reply::{LocalReply, LocalReplyKind};
pub use message::{FrameLayout, Message, MessageKind, ReplyContext, ResponseStatus, WireFormat};
pub use metadata::{MetaStr, Metadata, Mutations, INLINE_METADATA_ENTRIES};

pub use bytes;
