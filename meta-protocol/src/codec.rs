//! The codec trait, its factory, and the registry that maps names to factories.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;

use crate::error::{CodecError, DecodeError, EncodeError};
use crate::local_reply::LocalReply;
use crate::message::{Message, ReplyContext, WireFormat};

/// Default hard limit on one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Which side of the proxy a codec instance serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Faces clients: decodes requests, encodes responses and local replies.
    Downstream,
    /// Faces backends: encodes requests, decodes responses.
    Upstream,
}

/// A protocol codec, one instance per connection (it may keep per-connection state, such
/// as a detected transport or a partially read header).
///
/// Decoding follows tokio-util's shape: synchronous, no I/O, `Ok(None)` for "need more
/// bytes", and a hard frame size limit checked from the header alone so an oversized
/// frame is rejected before it is buffered.
pub trait Codec: Send + 'static {
    /// Decodes one complete message from the front of `src`, removing its bytes.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame; `src` is then left
    /// untouched (or with only consumed bytes removed) and will be offered again with
    /// more bytes appended. An error closes the connection.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError>;

    /// Appends `msg` to `dst` in wire format, writing its current request id and
    /// applying its mutations. Everything else is forwarded byte for byte.
    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError>;

    /// Appends a protocol-native error reply to the request described by `ctx`.
    fn encode_local_reply(
        &mut self,
        ctx: &ReplyContext,
        reply: &LocalReply<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError>;

    /// Appends the answer to a [`crate::MessageKind::Heartbeat`].
    ///
    /// By default does nothing (for protocols without heartbeats).
    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let _ = (heartbeat, dst);
        Ok(())
    }

    /// Appends a heartbeat probe with `id`, returning whether the protocol has one.
    ///
    /// By default does nothing and returns `false`.
    fn encode_heartbeat(&mut self, id: u64, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        let _ = (id, dst);
        Ok(false)
    }

    /// Appends an unsolicited "stop sending on this connection" notice (Dubbo's
    /// read-only event), returning whether the protocol has one. Used when draining.
    ///
    /// By default does nothing and returns `false`.
    fn encode_go_away(&mut self, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        let _ = dst;
        Ok(false)
    }
}

/// Codec options from a listener's `options:` map, as strings.
pub type CodecOptions = BTreeMap<String, String>;

/// What a codec instance is created for.
#[derive(Clone, Copy, Debug)]
pub struct CodecContext<'a> {
    /// Downstream or upstream.
    pub side: Side,
    /// The listener's codec options.
    pub options: &'a CodecOptions,
    /// Hard limit on one frame in bytes.
    pub max_frame_size: usize,
    /// For upstream codecs: the wire format of the requests this connection will carry
    /// (the format the client spoke). `None` on the downstream side.
    pub wire: Option<WireFormat>,
}

/// What the runtime may do with a configured protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecCapabilities {
    /// Replies carry the request id, so many requests (from many clients) may be in
    /// flight on one upstream connection. When false the runtime sends one request per
    /// upstream connection at a time.
    pub multiplexing: bool,
    /// Mutations can be carried. When false, `check` warns about routes that mutate.
    pub mutations: bool,
}

impl Default for CodecCapabilities {
    fn default() -> Self {
        CodecCapabilities {
            multiplexing: true,
            mutations: true,
        }
    }
}

/// Creates codec instances for one protocol. Registered by name in a [`CodecRegistry`].
pub trait CodecFactory: Send + Sync + 'static {
    /// The name used in a listener's `codec:` field.
    fn name(&self) -> &str;

    /// Checks a listener's options and reports what the protocol supports with them.
    ///
    /// By default accepts no options and reports full capabilities.
    fn validate(&self, options: &CodecOptions) -> Result<CodecCapabilities, CodecError> {
        match options.keys().next() {
            Some(key) => Err(CodecError::UnknownOption(key.clone())),
            None => Ok(CodecCapabilities::default()),
        }
    }

    /// A codec for one connection.
    fn new_codec(&self, ctx: &CodecContext<'_>) -> Result<Box<dyn Codec>, CodecError>;
}

/// Maps codec names to factories. The binary registers `dubbo` and `thrift`; embedding
/// programs add their own.
#[derive(Clone, Default)]
pub struct CodecRegistry {
    factories: BTreeMap<String, Arc<dyn CodecFactory>>,
}

impl CodecRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `factory` under its name, replacing an earlier one of that name.
    pub fn register(&mut self, factory: Arc<dyn CodecFactory>) -> &mut Self {
        self.factories.insert(factory.name().to_owned(), factory);
        self
    }

    /// The factory registered as `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn CodecFactory>, CodecError> {
        self.factories
            .get(name)
            .ok_or_else(|| CodecError::UnknownCodec(name.to_owned()))
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.factories.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for CodecRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
