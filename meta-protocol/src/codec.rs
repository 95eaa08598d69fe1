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
    ///
    /// When the peer closes its side while `src` still holds bytes that are not a whole
    /// frame, the runtime counts a decode error (`metaproxy_decode_errors_total` for a
    /// client connection) and drops those bytes; `decode` is not called again.
    ///
    /// Room for the rest of a partial frame is the runtime's business: it reads into
    /// buffers from a per-worker pool and moves a partial frame into one with room when
    /// it runs short. A codec should not `reserve` in `src`: the frames split off it
    /// earlier share its allocation, so growing it allocates a new buffer per large
    /// frame (a codec behind a byte-only boundary could not reserve anyway).
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError>;

    /// Appends `msg` to `dst` in wire format, writing its current request id and
    /// applying its mutations. Everything else is forwarded byte for byte.
    ///
    /// On the upstream side the runtime has rewritten the request id to a
    /// connection-local id below 2^31 (31 bits), so a protocol whose id field is a
    /// signed or unsigned 32-bit integer can carry it. On the downstream side a response
    /// carries the id its client sent, as [`Codec::decode`] returned it.
    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError>;

    /// Reads the metadata of a message that [`Codec::decode`] returned with part of it
    /// left unread ([`Message::metadata_deferred`]), and clears that mark. A codec defers
    /// only when its [`CodecContext::lazy_metadata`] allows it. The runtime calls this
    /// before anything reads more than the message is known to carry: a request's keys
    /// beyond [`CodecCapabilities::eager_keys`] (routes, hash policies and access logs
    /// that name other keys, filters, mutations), a response's metadata (filters,
    /// mutations). So a message nobody reads costs what `decode` read.
    ///
    /// It may be called on any codec of the same configured protocol (the runtime uses
    /// the client connection's), so it must depend on the message alone (its frame and
    /// the layout `decode` recorded), never on connection state. [`Codec::encode`] must
    /// still accept a deferred message, mutations included.
    ///
    /// An error means the frame's body is malformed; the runtime answers that request
    /// with a local reply (`bad_request` for a request, `upstream_failure` for a
    /// response) and keeps the connection, since the frame's bounds are known.
    ///
    /// By default does nothing (for codecs that never defer).
    fn decode_metadata(&mut self, msg: &mut Message) -> Result<(), DecodeError> {
        let _ = msg;
        Ok(())
    }

    /// Appends a protocol-native error reply to the request described by `ctx`.
    ///
    /// `reply.message` is a human-readable text that starts with `metaproxy: ` (for
    /// example `metaproxy: no route matched the request (method=add)`); it may hold any
    /// UTF-8, including text copied from the request, so a codec escapes or truncates it
    /// as its wire format requires. The runtime never calls this for a one-way request
    /// ([`ReplyContext::one_way`]).
    fn encode_local_reply(
        &mut self,
        ctx: &ReplyContext,
        reply: &LocalReply<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError>;

    /// Appends the answer to a [`crate::MessageKind::Heartbeat`] that `decode` returned.
    /// The runtime calls it on both sides, as soon as the heartbeat is decoded.
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

    /// Appends a keep-alive probe carrying request id `id`, returning whether the
    /// protocol has one (`false` writes nothing).
    ///
    /// This is for upstream keepalive: on an idle upstream connection the runtime takes
    /// `id` from the same connection-local space as rewritten request ids (below 2^31,
    /// never the id of a request still pending on that connection) and writes the
    /// probe. The backend's answer must decode, on the same codec, as a
    /// [`crate::MessageKind::Event`] whose request id is `id` (for Dubbo: a heartbeat
    /// request, flags `e2`, answered by an event response with status 20). A probe
    /// decoded by the peer's codec is a [`crate::MessageKind::Heartbeat`].
    ///
    /// By default does nothing and returns `false`.
    fn encode_heartbeat(&mut self, id: u64, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        let _ = (id, dst);
        Ok(false)
    }

    /// Appends an unsolicited "stop sending on this connection" notice (Dubbo's
    /// read-only event), returning whether the protocol has one. The runtime calls it on
    /// each client connection when the listener starts draining.
    ///
    /// By default does nothing and returns `false`.
    fn encode_go_away(&mut self, dst: &mut BytesMut) -> Result<bool, EncodeError> {
        let _ = dst;
        Ok(false)
    }
}

/// Codec options from a listener's `options:` map, as strings.
pub type CodecOptions = BTreeMap<String, String>;

/// What a codec instance is created for. The listener's options are not here: they were
/// parsed once by [`CodecFactory::configure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecContext {
    /// Downstream or upstream.
    pub side: Side,
    /// Hard limit on one frame in bytes (the listener's `max_frame_size`).
    pub max_frame_size: usize,
    /// For upstream codecs: the wire format of the requests this connection will carry
    /// (the format the client spoke). `None` on the downstream side.
    pub wire: Option<WireFormat>,
    /// Whether `decode` may leave part of a message's metadata unread for
    /// [`Codec::decode_metadata`] (see [`Message::metadata_deferred`]): all of a
    /// response's, all of a request's but [`CodecCapabilities::eager_keys`]. The runtime
    /// sets it on every connection; it is false in a context made by
    /// [`CodecContext::downstream`] or [`CodecContext::upstream`], so a codec used on its
    /// own decodes everything. A codec may ignore it.
    pub lazy_metadata: bool,
}

impl CodecContext {
    /// A codec for a client connection.
    pub fn downstream(max_frame_size: usize) -> Self {
        CodecContext {
            side: Side::Downstream,
            max_frame_size,
            wire: None,
            lazy_metadata: false,
        }
    }

    /// A codec for a backend connection carrying requests in `wire` format.
    pub fn upstream(max_frame_size: usize, wire: WireFormat) -> Self {
        CodecContext {
            side: Side::Upstream,
            max_frame_size,
            wire: Some(wire),
            lazy_metadata: false,
        }
    }

    /// This context with [`CodecContext::lazy_metadata`] set: messages may be decoded
    /// head first, the rest of their metadata on demand.
    pub fn with_lazy_metadata(mut self) -> Self {
        self.lazy_metadata = true;
        self
    }
}

/// What the runtime may do with a configured protocol.
///
/// `CodecCapabilities::default()` is full capability, `multiplexing: true` and
/// `mutations: true`, with no `eager_keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecCapabilities {
    /// Replies carry the request id, so many requests (from many clients) may be in
    /// flight on one upstream connection. When false the runtime sends one request per
    /// upstream connection at a time.
    pub multiplexing: bool,
    /// Mutations can be carried. When false, `check` warns about routes that mutate.
    pub mutations: bool,
    /// Keys a request decoded with its metadata deferred still carries (when they are
    /// in the frame). A listener whose routes, hash policies and access log name only
    /// these keys, and that has no filters, forwards such requests without
    /// [`Codec::decode_metadata`]. Empty (the default): the runtime reads every deferred
    /// request in full.
    pub eager_keys: &'static [&'static str],
}

impl Default for CodecCapabilities {
    fn default() -> Self {
        CodecCapabilities {
            multiplexing: true,
            mutations: true,
            eager_keys: &[],
        }
    }
}

/// A protocol configured with one listener's options: it makes that listener's codecs.
///
/// Made once per listener by [`CodecFactory::configure`] when the listener is bound,
/// then shared by every connection of the listener, downstream and upstream; so it must
/// be cheap to call and hold only parsed, immutable settings.
pub trait ConfiguredProtocol: Send + Sync + 'static {
    /// What the runtime may do with this protocol as configured.
    ///
    /// By default returns [`CodecCapabilities::default()`] (multiplexing and mutations).
    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities::default()
    }

    /// A codec for one connection.
    fn new_codec(&self, ctx: &CodecContext) -> Result<Box<dyn Codec>, CodecError>;
}

/// A protocol configured from a closure: for codecs without options, whose only setting
/// is the [`CodecContext`]. Reports [`CodecCapabilities::default()`].
impl<F> ConfiguredProtocol for F
where
    F: Fn(&CodecContext) -> Box<dyn Codec> + Send + Sync + 'static,
{
    fn new_codec(&self, ctx: &CodecContext) -> Result<Box<dyn Codec>, CodecError> {
        Ok(self(ctx))
    }
}

/// Fails with [`CodecError::UnknownOption`] when `options` is not empty: what a codec
/// without options does in [`CodecFactory::configure`].
pub fn reject_options(options: &CodecOptions) -> Result<(), CodecError> {
    match options.keys().next() {
        Some(key) => Err(CodecError::UnknownOption(key.clone())),
        None => Ok(()),
    }
}

/// Configures a protocol from a listener's options. Registered by name in a
/// [`CodecRegistry`].
///
/// The runtime calls [`CodecFactory::configure`] once per listener when it binds it,
/// never per connection. Config validation (`check`, start and every reload) calls it
/// too, to report bad options, and drops the result; a listener whose options change
/// keeps its protocol until a restart.
pub trait CodecFactory: Send + Sync + 'static {
    /// The name used in a listener's `codec:` field.
    fn name(&self) -> &str;

    /// Parses and checks a listener's `options:` and returns the configured protocol
    /// that makes its codecs. An error is reported by `check`, at start and on reload
    /// (field `listeners[i].options`).
    ///
    /// A codec without options calls [`reject_options`] and returns a closure (see
    /// [`ConfiguredProtocol`]'s implementation for `Fn(&CodecContext) -> Box<dyn Codec>`).
    fn configure(&self, options: &CodecOptions) -> Result<Box<dyn ConfiguredProtocol>, CodecError>;
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
