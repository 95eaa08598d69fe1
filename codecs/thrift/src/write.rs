//! Writing Thrift: message headers, flat structs and whole frames in any transport ×
//! protocol. Used for local replies and by [`crate::frames`].

use bytes::{BufMut, BytesMut};

use crate::format::{Protocol, Transport};
use crate::read::{ttype, HEADER_MAGIC, INFO_KEYVALUE};

/// Appends an unsigned LEB128 varint.
pub(crate) fn put_varint(dst: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        dst.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

/// Encoded length of a varint.
pub(crate) fn varint_len(v: u64) -> usize {
    let bits = 64 - v.max(1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends a varint-length-prefixed string (THeader and compact strings).
pub(crate) fn put_varint_bytes(dst: &mut BytesMut, s: &[u8]) {
    put_varint(dst, s.len() as u64);
    dst.put_slice(s);
}

/// Writes a message and flat structs in one protocol.
pub(crate) struct ProtoWriter<'a> {
    dst: &'a mut BytesMut,
    protocol: Protocol,
    last_id: i16,
}

impl<'a> ProtoWriter<'a> {
    pub(crate) fn new(dst: &'a mut BytesMut, protocol: Protocol) -> Self {
        ProtoWriter {
            dst,
            protocol,
            last_id: 0,
        }
    }

    /// Message header (strict binary or compact).
    pub(crate) fn message_begin(&mut self, name: &str, mtype: u8, seqid: u32) {
        match self.protocol {
            Protocol::Binary => {
                self.dst.put_u32(0x8001_0000 | u32::from(mtype));
                self.dst.put_u32(name.len() as u32);
                self.dst.put_slice(name.as_bytes());
                self.dst.put_u32(seqid);
            }
            Protocol::Compact => {
                self.dst.put_u8(0x82);
                self.dst.put_u8((mtype << 5) | 1);
                put_varint(self.dst, u64::from(seqid));
                put_varint_bytes(self.dst, name.as_bytes());
            }
        }
    }

    /// A field header of binary-protocol type `t` (not bool).
    pub(crate) fn field(&mut self, t: u8, id: i16) {
        match self.protocol {
            Protocol::Binary => {
                self.dst.put_u8(t);
                self.dst.put_i16(id);
            }
            Protocol::Compact => {
                let ct = match t {
                    ttype::BYTE => 3,
                    ttype::I16 => 4,
                    ttype::I32 => 5,
                    ttype::I64 => 6,
                    ttype::DOUBLE => 7,
                    ttype::STRING => 8,
                    ttype::LIST => 9,
                    ttype::SET => 10,
                    ttype::MAP => 11,
                    ttype::STRUCT => 12,
                    _ => 13,
                };
                let delta = i32::from(id) - i32::from(self.last_id);
                if (1..=15).contains(&delta) {
                    self.dst.put_u8(((delta as u8) << 4) | ct);
                } else {
                    self.dst.put_u8(ct);
                    put_varint(
                        self.dst,
                        u64::from((((id as i32) << 1) ^ ((id as i32) >> 31)) as u32),
                    );
                }
                self.last_id = id;
            }
        }
    }

    /// A binary/string value.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        match self.protocol {
            Protocol::Binary => {
                self.dst.put_u32(v.len() as u32);
                self.dst.put_slice(v);
            }
            Protocol::Compact => put_varint_bytes(self.dst, v),
        }
    }

    /// An i32 value.
    pub(crate) fn i32(&mut self, v: i32) {
        match self.protocol {
            Protocol::Binary => self.dst.put_i32(v),
            Protocol::Compact => put_varint(self.dst, u64::from(((v << 1) ^ (v >> 31)) as u32)),
        }
    }

    /// The stop byte ending a struct.
    pub(crate) fn stop(&mut self) {
        self.dst.put_u8(0);
        self.last_id = 0;
    }
}

/// Appends one whole frame: the transport envelope around a message written by `body`
/// (which gets a [`ProtoWriter`] to write the message header and struct).
///
/// `headers` are written as THeader key/value info headers (ignored by the other
/// transports). Returns an error text when the frame cannot be represented.
pub(crate) fn write_frame(
    dst: &mut BytesMut,
    transport: Transport,
    protocol: Protocol,
    seqid: u32,
    headers: &[(&[u8], &[u8])],
    body: impl FnOnce(&mut ProtoWriter<'_>),
) -> Result<(), &'static str> {
    let start = dst.len();
    match transport {
        Transport::Unframed => {
            body(&mut ProtoWriter::new(dst, protocol));
            return Ok(());
        }
        Transport::Framed => dst.put_u32(0),
        Transport::Header => {
            dst.put_u32(0);
            dst.put_u16(HEADER_MAGIC);
            dst.put_u16(0);
            dst.put_u32(seqid);
            dst.put_u16(0);
            let hs = dst.len();
            write_header_section(dst, protocol, &[], headers, &[]);
            let words = (dst.len() - hs) / 4;
            let words = u16::try_from(words).map_err(|_| "THeader headers exceed 262140 bytes")?;
            dst[hs - 2..hs].copy_from_slice(&words.to_be_bytes());
        }
    }
    body(&mut ProtoWriter::new(dst, protocol));
    let len = u32::try_from(dst.len() - start - 4).map_err(|_| "frame exceeds 4 GiB")?;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends a THeader header section: protocol id, `transforms_raw` (the transform
/// count and ids as they were, or nothing for "no transforms"), one key/value info
/// section when `headers` is not empty, `tail_raw` (info sections kept verbatim), and
/// zero padding to a multiple of 4 bytes.
pub(crate) fn write_header_section(
    dst: &mut BytesMut,
    protocol: Protocol,
    transforms_raw: &[u8],
    headers: &[(&[u8], &[u8])],
    tail_raw: &[u8],
) {
    let hs = dst.len();
    put_varint(dst, u64::from(protocol.header_id()));
    if transforms_raw.is_empty() {
        put_varint(dst, 0);
    } else {
        dst.put_slice(transforms_raw);
    }
    if !headers.is_empty() {
        put_varint(dst, INFO_KEYVALUE);
        put_varint(dst, headers.len() as u64);
        for (k, v) in headers {
            put_varint_bytes(dst, k);
            put_varint_bytes(dst, v);
        }
    }
    dst.put_slice(tail_raw);
    let pad = (4 - (dst.len() - hs) % 4) % 4;
    dst.put_bytes(0, pad);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for (v, want) in [
            (0u64, vec![0u8]),
            (127, vec![0x7f]),
            (300, vec![0xac, 0x02]),
            (u64::from(u32::MAX), vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(&b[..], &want[..]);
            assert_eq!(varint_len(v), want.len());
        }
    }

    #[test]
    fn compact_long_field_ids_are_zigzag() {
        let mut b = BytesMut::new();
        let mut w = ProtoWriter::new(&mut b, Protocol::Compact);
        w.field(ttype::I32, 1);
        w.i32(-1);
        w.field(ttype::I32, 300);
        w.i32(150);
        w.stop();
        assert_eq!(&b[..], &[0x15, 0x01, 0x05, 0xd8, 0x04, 0xac, 0x02, 0x00]);
    }

    #[test]
    fn header_frames_are_padded() {
        let mut b = BytesMut::new();
        write_frame(
            &mut b,
            Transport::Header,
            Protocol::Binary,
            5,
            &[(b"k", b"v")],
            |w| {
                w.message_begin("m", 1, 5);
                w.stop();
            },
        )
        .unwrap();
        assert_eq!(&b[4..6], &[0x0f, 0xff]);
        assert_eq!(&b[8..12], &5u32.to_be_bytes());
        let words = u16::from_be_bytes([b[12], b[13]]) as usize;
        // protocol 0, 0 transforms, info 1, count 1, "k", "v" = 8 bytes -> 2 words
        assert_eq!(words, 2);
        assert_eq!(&b[14..22], &[0, 0, 1, 1, 1, b'k', 1, b'v']);
        assert_eq!(
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len() - 4
        );
    }
}
