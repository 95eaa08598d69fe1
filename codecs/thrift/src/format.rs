//! Transports, protocols, the wire-format tag and the listener options.

use meta_protocol::{CodecError, CodecOptions, WireFormat};

/// A Thrift transport: how messages are delimited on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `TFramedTransport`: a 4-byte big-endian length, then one message.
    Framed = 1,
    /// `TBufferedTransport` ("unframed"): the message alone; its end is found by
    /// skipping the whole argument struct.
    Unframed = 2,
    /// `THeaderTransport`: a framed THeader with a sequence id, protocol id, transforms
    /// and info (key/value) headers, then the message.
    Header = 3,
}

/// A Thrift protocol: how a message is serialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `TBinaryProtocol`, strict (version word) or the old non-strict form.
    Binary = 1,
    /// `TCompactProtocol`.
    Compact = 2,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 3] = [Transport::Framed, Transport::Unframed, Transport::Header];

    /// The option value naming this transport (`framed`, `unframed`, `header`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Framed => "framed",
            Transport::Unframed => "unframed",
            Transport::Header => "header",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Transport::Framed),
            2 => Some(Transport::Unframed),
            3 => Some(Transport::Header),
            _ => None,
        }
    }
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 2] = [Protocol::Binary, Protocol::Compact];

    /// The option value naming this protocol (`binary`, `compact`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
            Protocol::Compact => "compact",
        }
    }

    /// The THeader protocol id (0 binary, 2 compact).
    pub fn header_id(self) -> u8 {
        match self {
            Protocol::Binary => 0,
            Protocol::Compact => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Protocol::Binary),
            2 => Some(Protocol::Compact),
            _ => None,
        }
    }
}

/// The [`WireFormat`] tag of `transport` × `protocol`: the transport in the high byte,
/// the protocol in the low byte (framed/binary is `0x0101`). `WireFormat(0)` means
/// "not known yet".
pub fn wire_format(transport: Transport, protocol: Protocol) -> WireFormat {
    WireFormat(((transport as u16) << 8) | protocol as u16)
}

/// The transport and protocol of a tag made by [`wire_format`]; `None` for any other
/// value (including the default `WireFormat(0)`).
pub fn split_wire(wire: WireFormat) -> Option<(Transport, Protocol)> {
    let [hi, lo] = wire.0.to_be_bytes();
    Some((Transport::from_u8(hi)?, Protocol::from_u8(lo)?))
}

/// The listener options of the `thrift` codec; `None` means `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThriftOptions {
    /// `transport:` (`framed`, `unframed`, `header`, or `auto` = `None`).
    pub transport: Option<Transport>,
    /// `protocol:` (`binary`, `compact`, or `auto` = `None`).
    pub protocol: Option<Protocol>,
}

impl ThriftOptions {
    /// Parses a listener's `options:` map; unknown keys and values are errors.
    pub fn parse(options: &CodecOptions) -> Result<Self, CodecError> {
        let mut out = ThriftOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "transport" => {
                    out.transport = match value.as_str() {
                        "auto" => None,
                        "framed" => Some(Transport::Framed),
                        "unframed" => Some(Transport::Unframed),
                        "header" => Some(Transport::Header),
                        other => {
                            return Err(CodecError::InvalidOption {
                                key: key.clone(),
                                message: format!(
                                    "unknown transport {other:?} (expected framed, unframed, header or auto)"
                                ),
                            })
                        }
                    }
                }
                "protocol" => {
                    out.protocol = match value.as_str() {
                        "auto" => None,
                        "binary" => Some(Protocol::Binary),
                        "compact" => Some(Protocol::Compact),
                        other => {
                            return Err(CodecError::InvalidOption {
                                key: key.clone(),
                                message: format!(
                                    "unknown protocol {other:?} (expected binary, compact or auto)"
                                ),
                            })
                        }
                    }
                }
                _ => return Err(CodecError::UnknownOption(key.clone())),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_tags_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for t in Transport::ALL {
            for p in Protocol::ALL {
                let w = wire_format(t, p);
                assert_ne!(w, WireFormat::default());
                assert_eq!(split_wire(w), Some((t, p)));
                assert!(seen.insert(w));
            }
        }
        assert_eq!(split_wire(WireFormat(0)), None);
        assert_eq!(split_wire(WireFormat(0x0401)), None);
        assert_eq!(split_wire(WireFormat(0x0103)), None);
    }

    #[test]
    fn options_parse_and_reject() {
        let mut o = CodecOptions::new();
        assert_eq!(ThriftOptions::parse(&o).unwrap(), ThriftOptions::default());
        o.insert("transport".into(), "header".into());
        o.insert("protocol".into(), "compact".into());
        let parsed = ThriftOptions::parse(&o).unwrap();
        assert_eq!(parsed.transport, Some(Transport::Header));
        assert_eq!(parsed.protocol, Some(Protocol::Compact));
        o.insert("transport".into(), "http".into());
        let err = ThriftOptions::parse(&o).unwrap_err();
        assert!(err.to_string().contains("http"), "{err}");
        let mut o = CodecOptions::new();
        o.insert("protocol".into(), "json".into());
        assert!(matches!(
            ThriftOptions::parse(&o),
            Err(CodecError::InvalidOption { .. })
        ));
        let mut o = CodecOptions::new();
        o.insert("zlib".into(), "on".into());
        assert_eq!(
            ThriftOptions::parse(&o),
            Err(CodecError::UnknownOption("zlib".into()))
        );
    }
}
