//! Errors a codec reports, with enough context to log them and pick the local reply.

use std::borrow::Cow;

use crate::message::ReplyContext;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The frame announces more bytes than the listener's `max_frame_size`.
    #[error("frame of {size} bytes exceeds max_frame_size {max}")]
    FrameTooLarge {
        /// Announced size.
        size: u64,
        /// Configured limit.
        max: usize,
    },
    /// The first bytes are not this protocol.
    #[error("bad magic: {0}")]
    BadMagic(Cow<'static, str>),
    /// Valid protocol, but a feature we do not support (a serialization, a transform).
    #[error("unsupported: {0}")]
    Unsupported(Cow<'static, str>),
    /// The bytes violate the protocol.
    #[error("malformed frame: {0}")]
    Malformed(Cow<'static, str>),
    /// Nesting deeper than the codec's limit.
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
}

/// A decode failure. The connection that produced it is closed after an optional
/// `bad_request` local reply, which is sent when [`DecodeError::reply`] is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// What went wrong.
    pub kind: DecodeErrorKind,
    /// Set when enough of the frame was read to answer it (for example its request id).
    pub reply: Option<ReplyContext>,
}

impl DecodeError {
    /// An error with no way to answer it.
    pub fn new(kind: DecodeErrorKind) -> Self {
        DecodeError { kind, reply: None }
    }

    /// Shorthand for [`DecodeErrorKind::Malformed`].
    pub fn malformed(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(DecodeErrorKind::Malformed(msg.into()))
    }

    /// Shorthand for [`DecodeErrorKind::Unsupported`].
    pub fn unsupported(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(DecodeErrorKind::Unsupported(msg.into()))
    }

    /// Shorthand for [`DecodeErrorKind::FrameTooLarge`].
    pub fn too_large(size: u64, max: usize) -> Self {
        Self::new(DecodeErrorKind::FrameTooLarge { size, max })
    }

    /// Attaches the context needed to answer the bad frame.
    pub fn with_reply(mut self, reply: ReplyContext) -> Self {
        self.reply = Some(reply);
        self
    }
}

impl From<DecodeErrorKind> for DecodeError {
    fn from(kind: DecodeErrorKind) -> Self {
        DecodeError::new(kind)
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message cannot be written in this codec's format.
    #[error("cannot encode: {0}")]
    Unsupported(Cow<'static, str>),
    /// The frame the codec recorded does not match its layout.
    #[error("inconsistent frame: {0}")]
    Inconsistent(Cow<'static, str>),
    /// The encoded frame would exceed the protocol's size limit.
    #[error("encoded frame of {0} bytes is too large")]
    TooLarge(usize),
}

/// A problem with a codec's configuration (listener `options`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// No codec is registered under this name.
    #[error("unknown codec {0:?}")]
    UnknownCodec(String),
    /// An option the codec does not know.
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    /// An option with a value the codec does not accept.
    #[error("option {key}: {message}")]
    InvalidOption {
        /// The option's name.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_readable() {
        let e = DecodeError::too_large(20, 10);
        assert_eq!(e.to_string(), "frame of 20 bytes exceeds max_frame_size 10");
        assert!(e.reply.is_none());
        let e = DecodeError::malformed("truncated string").with_reply(ReplyContext::default());
        assert_eq!(e.to_string(), "malformed frame: truncated string");
        assert!(e.reply.is_some());
    }
}
