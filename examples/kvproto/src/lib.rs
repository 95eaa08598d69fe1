//! # kvproto: a third protocol for metaproxy, written against the public contract only
//!
//! A deliberately small RPC protocol that shows everything a codec author writes. A frame:
//!
//! | bytes | field |
//! |---|---|
//! | 0-3 | length of the rest of the frame, u32 big-endian |
//! | 4 | kind: 0 request, 1 one-way, 2 response, 3 heartbeat, 4 heartbeat reply |
//! | 5 | status (responses): 0 ok, 1 exception, 10 no route, 11 upstream failure, 12 timeout, 13 overloaded, 14 bad request, 15 rate limited, 16 forbidden |
//! | 6-13 | request id, u64 |
//! | 14-15 | header count, u16 |
//! | ... | headers: u16 key length, key, u16 value length, value (UTF-8) |
//! | ... | body, up to the end of the frame |
//!
//! Every header of a request is routable metadata; mutations set headers.
//!
//! [`line`](mod@line) is the same idea as a text protocol with one frame per line (`kvline`): the
//! example of framing without a length header.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod codec;
pub mod frames;
pub mod line;

pub use codec::{KvCodec, KvCodecFactory, KvLayout, Status, HEAD_LEN};
