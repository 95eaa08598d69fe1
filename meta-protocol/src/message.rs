//! The decoded message: what a codec hands to the runtime and takes back to encode.

use std::sync::Arc;

use bytes::Bytes;

use crate::call_name::CallName;
use crate::metadata::{MetaStr, Metadata, MetadataMut, Mutations};

/// What a frame means to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A call that expects exactly one response with the same request id.
    Request,
    /// A call that expects no response; the proxy forwards it and never answers it.
    OneWay,
    /// A response (a result, a declared exception or an error) to a [`MessageKind::Request`].
    Response,
    /// A keep-alive probe the proxy answers itself with [`crate::Codec::encode_heartbeat_reply`].
    Heartbeat,
    /// A control frame the proxy consumes without forwarding (a heartbeat's answer, an
    /// unknown event).
    Event,
    /// The peer asks not to be sent new requests on this connection (Dubbo's read-only
    /// event). Requests already sent are still answered.
    GoAway,
}

impl MessageKind {
    /// Whether this is a call (two-way or one-way) to be routed.
    pub fn is_call(self) -> bool {
        matches!(self, MessageKind::Request | MessageKind::OneWay)
    }
}

/// How a response ended, for metrics (`responses_total{status}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ResponseStatus {
    /// A normal result.
    #[default]
    Ok,
    /// The callee threw an application (declared or undeclared) exception.
    Exception,
    /// A protocol-level error status (Dubbo non-20 status, Thrift TApplicationException).
    Error,
}

impl ResponseStatus {
    /// The metric label: `ok`, `exception` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseStatus::Ok => "ok",
            ResponseStatus::Exception => "exception",
            ResponseStatus::Error => "error",
        }
    }
}

/// A codec-defined tag for the exact wire format of a frame (for example Thrift's
/// transport × protocol). Upstream connections are pooled per tag so that a request is
/// forwarded in the format its client spoke. Codecs with a single format use
/// `WireFormat::default()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct WireFormat(pub u16);

/// How many 32-bit words a frame layout is stored in: enough for the positions of a few
/// sections of a frame (Dubbo uses all six, Thrift five, kvproto one).
pub const LAYOUT_WORDS: usize = 6;

/// The stored form of a codec's [`FrameLayout`]: six plain 32-bit words, opaque to the
/// runtime.
///
/// A layout is a small plain value on purpose: it travels with the message from the
/// downstream codec that decoded it to the upstream codec that encodes it, and a codec
/// running behind a byte-only boundary (a WebAssembly module, say: frame bytes in;
/// metadata, layout and encoded bytes out) must be able to hand it over as bytes. So a
/// layout cannot be an arbitrary Rust object; codecs convert their own typed layout to
/// and from these words with [`FrameLayout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LayoutWords([u32; LAYOUT_WORDS]);

impl LayoutWords {
    /// Words as given.
    pub const fn new(words: [u32; LAYOUT_WORDS]) -> Self {
        LayoutWords(words)
    }

    /// The words.
    pub const fn words(self) -> [u32; LAYOUT_WORDS] {
        self.0
    }

    /// The words as 24 little-endian bytes (for a byte-only boundary).
    pub fn to_le_bytes(self) -> [u8; 4 * LAYOUT_WORDS] {
        let mut out = [0u8; 4 * LAYOUT_WORDS];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Words read back from [`LayoutWords::to_le_bytes`].
    pub fn from_le_bytes(bytes: [u8; 4 * LAYOUT_WORDS]) -> Self {
        let mut words = [0u32; LAYOUT_WORDS];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        LayoutWords(words)
    }
}

/// A codec's own description of where things are inside a frame (where the request id
/// lives, where the headers end...): recorded on decode with [`Message::set_layout`] and
/// read back on encode with [`Message::layout`], by a codec of the same protocol.
///
/// Implement it for a small `Copy` struct with named fields; the conversions are the only
/// place the positional words appear. [`FrameLayout::from_words`] must accept any words
/// (a message decoded by another codec, or none at all, reads back as whatever those
/// words mean), so `encode` still checks every position against the frame before it
/// slices.
///
/// ```
/// use meta_protocol::{FrameLayout, LayoutWords};
///
/// #[derive(Clone, Copy, Debug, Default, PartialEq)]
/// struct KvLayout { headers_end: u32 }
///
/// impl FrameLayout for KvLayout {
///     fn to_words(self) -> LayoutWords { LayoutWords::new([self.headers_end, 0, 0, 0, 0, 0]) }
///     fn from_words(words: LayoutWords) -> Self { KvLayout { headers_end: words.words()[0] } }
/// }
///
/// let mut msg = meta_protocol::Message::new(meta_protocol::MessageKind::Request, 1, Default::default());
/// msg.set_layout(KvLayout { headers_end: 42 });
/// assert_eq!(msg.layout::<KvLayout>(), KvLayout { headers_end: 42 });
/// ```
pub trait FrameLayout: Copy {
    /// The layout as plain words.
    fn to_words(self) -> LayoutWords;
    /// The layout read back from words written by [`FrameLayout::to_words`] (or any
    /// other words: must not panic).
    fn from_words(words: LayoutWords) -> Self;
}

/// No layout: for codecs whose `encode` needs nothing but the frame.
impl FrameLayout for () {
    fn to_words(self) -> LayoutWords {
        LayoutWords::default()
    }
    fn from_words(_: LayoutWords) -> Self {}
}

/// Everything needed to answer a request after the request itself has been sent on:
/// protocol-native local replies (timeouts, upstream failures) are built from this.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReplyContext {
    /// The id the client used.
    pub request_id: u64,
    /// The wire format to answer in.
    pub wire: WireFormat,
    /// The call's name as it was on the wire (Thrift answers with it); may be empty.
    pub name: CallName,
    /// The request is one-way. The runtime never writes a reply to a one-way request,
    /// so [`crate::Codec::encode_local_reply`] is never called with this set; it is
    /// carried so that a codec building a [`crate::DecodeError::reply`] can say so.
    pub one_way: bool,
}

/// One decoded frame: its kind, id, routable metadata, and the bytes to forward.
///
/// The frame is kept whole and forwarded byte for byte; only the request id and any
/// [`Mutations`] are written differently on encode. Metadata values slice the frame.
#[derive(Clone, Debug)]
pub struct Message {
    kind: MessageKind,
    request_id: u64,
    /// Also holds the frame (its entries are offsets into it): one reference to the
    /// frame per message, so decoding and dropping one changes one reference count.
    metadata: Metadata,
    mutations: Option<Arc<Mutations>>,
    status: ResponseStatus,
    wire: WireFormat,
    layout: LayoutWords,
    name: CallName,
    metadata_deferred: bool,
}

impl Message {
    /// A message of `kind` around the complete wire `frame`.
    pub fn new(kind: MessageKind, request_id: u64, frame: Bytes) -> Self {
        Message {
            kind,
            request_id,
            metadata: Metadata::over_frame(frame),
            mutations: None,
            status: ResponseStatus::Ok,
            wire: WireFormat::default(),
            layout: LayoutWords::new([0; LAYOUT_WORDS]),
            name: CallName::new(),
            metadata_deferred: false,
        }
    }

    /// What the frame means.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// Changes the kind (a mirror copy is sent as a request whose reply is dropped).
    pub fn set_kind(&mut self, kind: MessageKind) {
        self.kind = kind;
    }

    /// The request id as the message currently carries it.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Rewrites the request id; the codec writes it on encode. Used to multiplex many
    /// downstream connections over one upstream connection.
    pub fn set_request_id(&mut self, id: u64) {
        self.request_id = id;
    }

    /// The original frame as it was read from the wire.
    pub fn frame(&self) -> &Bytes {
        self.metadata.frame()
    }

    /// Routable metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Routable metadata, for codecs filling it in and filters editing it: set or remove
    /// keys ([`MetadataMut::clear`] keeps the frame). Not `&mut Metadata`: the metadata
    /// also holds the frame the message forwards, which assigning a whole set would
    /// replace.
    pub fn metadata_mut(&mut self) -> MetadataMut<'_> {
        MetadataMut::new(&mut self.metadata)
    }

    /// Whether the codec left part of this message's metadata unread (and the layout of
    /// what it would have read): only a codec made with
    /// [`crate::CodecContext::lazy_metadata`] does. [`crate::Codec::decode_metadata`]
    /// reads the rest; until then [`Message::metadata`] holds only a request's
    /// [`crate::CodecCapabilities::eager_keys`] (a response's: nothing). The kind,
    /// request id and status are always decoded.
    pub fn metadata_deferred(&self) -> bool {
        self.metadata_deferred
    }

    /// Marks the metadata as left unread (`true`, by a codec's `decode`) or read
    /// (`false`, by its `decode_metadata`).
    pub fn set_metadata_deferred(&mut self, deferred: bool) {
        self.metadata_deferred = deferred;
    }

    /// Pending mutations, applied on encode (a later pair with the same key wins).
    pub fn mutations(&self) -> &[(MetaStr, MetaStr)] {
        self.mutations.as_deref().map_or(&[], |m| m.as_slice())
    }

    /// Adds a shared set of mutations (a route's, built once). Sharing costs a
    /// reference count, not a copy, when the message had none before.
    #[inline]
    pub fn add_shared_mutations(&mut self, shared: &Arc<Mutations>) {
        // Most routes have none: that test is inlined where it is called (the call it
        // saves cost more than the test).
        if !shared.is_empty() {
            self.add_mutations(shared);
        }
    }

    fn add_mutations(&mut self, shared: &Arc<Mutations>) {
        match &mut self.mutations {
            None => self.mutations = Some(shared.clone()),
            Some(existing) => Arc::make_mut(existing).extend(shared.iter().cloned()),
        }
    }

    /// Adds a mutation; a later one with the same key wins.
    pub fn push_mutation(&mut self, key: MetaStr, value: MetaStr) {
        Arc::make_mut(self.mutations.get_or_insert_with(Default::default)).push((key, value));
    }

    /// Drops every pending mutation of `key` (copies a shared set only when it has one).
    pub fn remove_mutation(&mut self, key: &str) {
        if let Some(m) = &mut self.mutations {
            if m.iter().any(|(k, _)| &**k == key) {
                Arc::make_mut(m).retain(|(k, _)| &**k != key);
            }
        }
    }

    /// Adds several mutations in order.
    pub fn extend_mutations<'a, I>(&mut self, pairs: I)
    where
        I: IntoIterator<Item = &'a (MetaStr, MetaStr)>,
    {
        let mut pairs = pairs.into_iter().peekable();
        if pairs.peek().is_some() {
            Arc::make_mut(self.mutations.get_or_insert_with(Default::default))
                .extend(pairs.cloned());
        }
    }

    /// How a response ended (meaningful for [`MessageKind::Response`]).
    pub fn status(&self) -> ResponseStatus {
        self.status
    }

    /// Sets the response status (codecs do this on decode).
    pub fn set_status(&mut self, status: ResponseStatus) {
        self.status = status;
    }

    /// The codec-defined wire format of this frame.
    pub fn wire(&self) -> WireFormat {
        self.wire
    }

    /// Sets the wire format (codecs do this on decode).
    pub fn set_wire(&mut self, wire: WireFormat) {
        self.wire = wire;
    }

    /// The codec's layout of the frame, as recorded on decode (read as `L` from the
    /// stored words; all zeros when none was recorded).
    #[inline]
    pub fn layout<L: FrameLayout>(&self) -> L {
        L::from_words(self.layout)
    }

    /// Records the codec's layout of the frame (codecs do this on decode).
    #[inline]
    pub fn set_layout<L: FrameLayout>(&mut self, layout: L) {
        self.layout = layout.to_words();
    }

    /// The stored layout words, for moving a message across a byte-only boundary.
    pub fn layout_words(&self) -> LayoutWords {
        self.layout
    }

    /// Replaces the stored layout words (the counterpart of [`Message::layout_words`]).
    pub fn set_layout_words(&mut self, words: LayoutWords) {
        self.layout = words;
    }

    /// The call's name as written on the wire (see [`ReplyContext::name`]).
    pub fn name(&self) -> &CallName {
        &self.name
    }

    /// Sets the on-wire call name (codecs do this on decode): a `&str` (copied inline
    /// when short, see [`CallName`]), a [`MetaStr`] or a [`CallName`].
    pub fn set_name(&mut self, name: impl Into<CallName>) {
        self.name = name.into();
    }

    /// What is needed to answer this message locally later.
    pub fn reply_context(&self) -> ReplyContext {
        ReplyContext {
            request_id: self.request_id,
            wire: self.wire,
            name: self.name.clone(),
            one_way: self.kind == MessageKind::OneWay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_stays_within_256_bytes() {
        // docs/ARCHITECTURE.md gives the size: a message is moved a few times per
        // request, and `memcpy` copies up to 256 bytes without a loop (beyond, each
        // move costs about twice as many instructions).
        assert!(
            std::mem::size_of::<Message>() <= 256,
            "{}",
            std::mem::size_of::<Message>()
        );
    }

    #[test]
    fn editing_the_metadata_keeps_the_frame() {
        let frame = Bytes::from_static(b"..method=hello..");
        let mut m = Message::new(MessageKind::Request, 1, frame.clone());
        let mut md = m.metadata_mut();
        md.set_in_frame(2..8, 9..14);
        md.set("user".into(), "alice".into());
        assert_eq!(md.get("method"), Some("hello"), "reads through the editor");
        assert_eq!(md.remove("user").as_deref(), Some("alice"));
        m.metadata_mut().clear();
        assert!(m.metadata().is_empty());
        assert_eq!(m.frame(), &frame, "clearing the entries keeps the frame");
    }

    #[test]
    fn reply_context_carries_id_wire_and_name() {
        let mut m = Message::new(MessageKind::OneWay, 7, Bytes::from_static(b"x"));
        m.set_wire(WireFormat(3));
        m.set_name("Calc:add");
        m.set_request_id(9);
        let ctx = m.reply_context();
        assert_eq!(ctx.request_id, 9);
        assert_eq!(ctx.wire, WireFormat(3));
        assert_eq!(&*ctx.name, "Calc:add");
        assert!(ctx.one_way);
    }

    #[test]
    fn shared_mutations_are_not_copied() {
        let shared: Arc<Mutations> = Arc::new([("k".into(), "v".into())].into_iter().collect());
        let mut m = Message::new(MessageKind::Request, 1, Bytes::new());
        m.add_shared_mutations(&shared);
        assert_eq!(Arc::strong_count(&shared), 2);
        assert_eq!(m.mutations().len(), 1);
        // Adding more copies on write; the shared set is untouched.
        m.push_mutation("k2".into(), "v2".into());
        assert_eq!(m.mutations().len(), 2);
        m.remove_mutation("k2");
        assert_eq!(m.mutations().len(), 1);
        assert_eq!(shared.len(), 1, "the shared set is never changed");
        assert_eq!(shared.len(), 1);
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Sections {
        id_at: u32,
        body_at: u32,
        flags: u8,
    }

    impl FrameLayout for Sections {
        fn to_words(self) -> LayoutWords {
            LayoutWords::new([self.id_at, self.body_at, u32::from(self.flags), 0, 0, 0])
        }
        fn from_words(words: LayoutWords) -> Self {
            let [id_at, body_at, flags, ..] = words.words();
            Sections {
                id_at,
                body_at,
                flags: flags as u8,
            }
        }
    }

    #[test]
    fn a_typed_layout_survives_the_message_and_a_byte_boundary() {
        let layout = Sections {
            id_at: 4,
            body_at: 16,
            flags: 3,
        };
        let mut m = Message::new(MessageKind::Request, 1, Bytes::new());
        assert_eq!(m.layout_words().words(), [0; LAYOUT_WORDS]);
        m.set_layout(layout);
        assert_eq!(m.layout::<Sections>(), layout);
        let bytes = m.layout_words().to_le_bytes();
        let mut other = Message::new(MessageKind::Request, 1, Bytes::new());
        other.set_layout_words(LayoutWords::from_le_bytes(bytes));
        assert_eq!(other.layout::<Sections>(), layout);
    }

    #[test]
    fn later_mutation_is_last() {
        let mut m = Message::new(MessageKind::Request, 1, Bytes::new());
        m.push_mutation("k".into(), "a".into());
        m.push_mutation("k".into(), "b".into());
        assert_eq!(m.mutations().last().map(|(_, v)| &**v), Some("b"));
    }
}
