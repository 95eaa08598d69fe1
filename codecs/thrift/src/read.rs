//! Reading Thrift without a schema: a bounds-checked cursor, the struct skipper for
//! both protocols, message headers and THeader sections.
//!
//! Nothing here panics on any input: every read is checked, lengths are validated
//! before use, and nesting is bounded by [`MAX_DEPTH`].

use std::borrow::Cow;

use crate::format::Protocol;

/// Deepest nesting of structs and containers the skipper follows (Apache Thrift's
/// default recursion limit).
pub const MAX_DEPTH: usize = 64;

/// Binary-protocol type ids (compact ids differ, see [`compact_to_binary_type`]).
pub(crate) mod ttype {
    pub const STOP: u8 = 0;
    pub const BOOL: u8 = 2;
    pub const BYTE: u8 = 3;
    pub const DOUBLE: u8 = 4;
    pub const I16: u8 = 6;
    pub const I32: u8 = 8;
    pub const I64: u8 = 10;
    pub const STRING: u8 = 11;
    pub const STRUCT: u8 = 12;
    pub const MAP: u8 = 13;
    pub const SET: u8 = 14;
    pub const LIST: u8 = 15;
    pub const UUID: u8 = 16;
}

/// Message types.
pub(crate) mod mtype {
    pub const CALL: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const EXCEPTION: u8 = 3;
    pub const ONEWAY: u8 = 4;
}

/// Why reading stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// At least this many bytes (counted from the start of the buffer) are needed.
    Incomplete(usize),
    /// The bytes violate the protocol.
    Malformed(&'static str),
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not the expected protocol.
    BadMagic(&'static str),
    /// Valid but not supported here.
    Unsupported(Cow<'static, str>),
}

pub(crate) type Res<T> = Result<T, Fault>;

/// A bounds-checked reader over a byte slice.
#[derive(Clone, Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    #[inline]
    fn need(&self, n: usize) -> Res<()> {
        if self.buf.len().saturating_sub(self.pos) < n {
            Err(Fault::Incomplete(self.pos.saturating_add(n)))
        } else {
            Ok(())
        }
    }

    #[inline]
    pub(crate) fn advance(&mut self, n: usize) -> Res<()> {
        self.need(n)?;
        self.pos += n;
        Ok(())
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        self.need(n)?;
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(Fault::Incomplete(self.pos + n))?;
        self.pos += n;
        Ok(s)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Res<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(Fault::Incomplete(self.pos + 1))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Res<u16> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Res<u32> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// Skips a varint of at most `max_bytes` bytes without decoding it.
    #[inline]
    pub(crate) fn skip_varint(&mut self, max_bytes: usize) -> Res<()> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match rest.iter().take(max_bytes).position(|&b| b & 0x80 == 0) {
            Some(i) => {
                self.pos += i + 1;
                Ok(())
            }
            None if rest.len() < max_bytes => Err(Fault::Incomplete(self.pos + rest.len() + 1)),
            None => Err(Fault::Malformed("varint too long")),
        }
    }

    /// An unsigned LEB128 varint of at most `max_bytes` bytes.
    #[inline]
    pub(crate) fn varint(&mut self, max_bytes: usize) -> Res<u64> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        let mut out = 0u64;
        for i in 0..max_bytes {
            let b = self.u8()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(Fault::Malformed("varint too long"))
    }

    /// A varint-encoded 32-bit length that must not be negative as an i32.
    #[inline]
    pub(crate) fn varint_len(&mut self) -> Res<usize> {
        let v = self.varint(5)?;
        let v =
            u32::try_from(v).map_err(|_| Fault::Malformed("varint length overflows 32 bits"))?;
        if v > i32::MAX as u32 {
            return Err(Fault::Malformed("negative length"));
        }
        Ok(v as usize)
    }

    /// A big-endian i32 length that must not be negative.
    #[inline]
    fn be_len(&mut self) -> Res<usize> {
        let v = self.u32()?;
        if v > i32::MAX as u32 {
            return Err(Fault::Malformed("negative length"));
        }
        Ok(v as usize)
    }
}

/// Maps a compact type id to the binary-protocol type id (`None` when invalid).
pub(crate) fn compact_to_binary_type(t: u8) -> Option<u8> {
    Some(match t {
        1 | 2 => ttype::BOOL,
        3 => ttype::BYTE,
        4 => ttype::I16,
        5 => ttype::I32,
        6 => ttype::I64,
        7 => ttype::DOUBLE,
        8 => ttype::STRING,
        9 => ttype::LIST,
        10 => ttype::SET,
        11 => ttype::MAP,
        12 => ttype::STRUCT,
        13 => ttype::UUID,
        _ => return None,
    })
}

/// Encoded size of a fixed-size binary-protocol value (`None` for variable ones).
fn binary_fixed_size(t: u8) -> Option<usize> {
    match t {
        ttype::BOOL | ttype::BYTE => Some(1),
        ttype::I16 => Some(2),
        ttype::I32 => Some(4),
        ttype::DOUBLE | ttype::I64 => Some(8),
        ttype::UUID => Some(16),
        _ => None,
    }
}

/// Skips one binary-protocol value of type `t`.
pub(crate) fn skip_binary(c: &mut Cursor<'_>, t: u8, depth: usize) -> Res<()> {
    if let Some(n) = binary_fixed_size(t) {
        return c.advance(n);
    }
    match t {
        ttype::STRING => {
            let n = c.be_len()?;
            c.advance(n)
        }
        ttype::STRUCT => skip_binary_struct(c, depth),
        ttype::MAP => {
            if depth >= MAX_DEPTH {
                return Err(Fault::TooDeep);
            }
            let kt = c.u8()?;
            let vt = c.u8()?;
            let n = c.be_len()?;
            if n == 0 {
                return Ok(());
            }
            match (binary_fixed_size(kt), binary_fixed_size(vt)) {
                (Some(a), Some(b)) => c.advance(n.saturating_mul(a + b)),
                _ => {
                    for _ in 0..n {
                        skip_binary(c, kt, depth + 1)?;
                        skip_binary(c, vt, depth + 1)?;
                    }
                    Ok(())
                }
            }
        }
        ttype::SET | ttype::LIST => {
            if depth >= MAX_DEPTH {
                return Err(Fault::TooDeep);
            }
            let et = c.u8()?;
            let n = c.be_len()?;
            if n == 0 {
                return Ok(());
            }
            match binary_fixed_size(et) {
                Some(a) => c.advance(n.saturating_mul(a)),
                None => {
                    for _ in 0..n {
                        skip_binary(c, et, depth + 1)?;
                    }
                    Ok(())
                }
            }
        }
        _ => Err(Fault::Malformed("unknown binary-protocol type")),
    }
}

/// Skips a binary-protocol struct (fields up to and including the stop byte).
pub(crate) fn skip_binary_struct(c: &mut Cursor<'_>, depth: usize) -> Res<()> {
    if depth >= MAX_DEPTH {
        return Err(Fault::TooDeep);
    }
    loop {
        let t = c.u8()?;
        if t == ttype::STOP {
            return Ok(());
        }
        c.advance(2)?;
        skip_binary(c, t, depth + 1)?;
    }
}

/// Encoded size of a fixed-size compact container element (`None` for variable ones).
fn compact_fixed_elem(t: u8) -> Option<usize> {
    match t {
        1..=3 => Some(1),
        7 => Some(8),
        13 => Some(16),
        _ => None,
    }
}

/// Skips one compact-protocol value of compact type `t`. `in_field` is true for a
/// struct field, whose booleans live in the field header and take no bytes.
pub(crate) fn skip_compact(c: &mut Cursor<'_>, t: u8, depth: usize, in_field: bool) -> Res<()> {
    match t {
        1 | 2 => {
            if in_field {
                Ok(())
            } else {
                c.advance(1)
            }
        }
        3 => c.advance(1),
        4 => c.skip_varint(3),
        5 => c.skip_varint(5),
        6 => c.skip_varint(10),
        7 => c.advance(8),
        8 => {
            let n = c.varint_len()?;
            c.advance(n)
        }
        9 | 10 => {
            if depth >= MAX_DEPTH {
                return Err(Fault::TooDeep);
            }
            let b = c.u8()?;
            let et = b & 0x0f;
            let n = match b >> 4 {
                15 => c.varint_len()?,
                small => usize::from(small),
            };
            if n == 0 {
                return Ok(());
            }
            match compact_fixed_elem(et) {
                Some(a) => c.advance(n.saturating_mul(a)),
                None => {
                    for _ in 0..n {
                        skip_compact(c, et, depth + 1, false)?;
                    }
                    Ok(())
                }
            }
        }
        11 => {
            if depth >= MAX_DEPTH {
                return Err(Fault::TooDeep);
            }
            let n = c.varint_len()?;
            if n == 0 {
                return Ok(());
            }
            let kv = c.u8()?;
            let (kt, vt) = (kv >> 4, kv & 0x0f);
            match (compact_fixed_elem(kt), compact_fixed_elem(vt)) {
                (Some(a), Some(b)) => c.advance(n.saturating_mul(a + b)),
                _ => {
                    for _ in 0..n {
                        skip_compact(c, kt, depth + 1, false)?;
                        skip_compact(c, vt, depth + 1, false)?;
                    }
                    Ok(())
                }
            }
        }
        12 => skip_compact_struct(c, depth),
        13 => c.advance(16),
        _ => Err(Fault::Malformed("unknown compact-protocol type")),
    }
}

/// Skips a compact-protocol struct (fields up to and including the stop byte).
pub(crate) fn skip_compact_struct(c: &mut Cursor<'_>, depth: usize) -> Res<()> {
    if depth >= MAX_DEPTH {
        return Err(Fault::TooDeep);
    }
    loop {
        let b = c.u8()?;
        if b == 0 {
            return Ok(());
        }
        if b >> 4 == 0 {
            c.skip_varint(3)?;
        }
        skip_compact(c, b & 0x0f, depth + 1, true)?;
    }
}

/// Skips a whole struct in `protocol`.
pub(crate) fn skip_struct(c: &mut Cursor<'_>, protocol: Protocol) -> Res<()> {
    match protocol {
        Protocol::Binary => skip_binary_struct(c, 0),
        Protocol::Compact => skip_compact_struct(c, 0),
    }
}

/// One field of a struct, as seen by [`next_field`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    /// Field id.
    pub id: i16,
    /// Binary-protocol type id of the value.
    pub ttype: u8,
    /// For compact booleans: the value carried in the field header.
    pub bool_value: Option<bool>,
    /// Offset of the value.
    pub start: usize,
    /// Offset just past the value.
    pub end: usize,
}

/// Reads the next field of a struct (`None` at the stop byte), skipping its value.
/// `last_id` carries the compact protocol's field-id delta base between calls.
pub(crate) fn next_field(
    c: &mut Cursor<'_>,
    protocol: Protocol,
    last_id: &mut i16,
) -> Res<Option<Field>> {
    let b = c.u8()?;
    if b == 0 {
        return Ok(None);
    }
    match protocol {
        Protocol::Binary => {
            let id = c.u16()? as i16;
            let start = c.pos();
            skip_binary(c, b, 1)?;
            Ok(Some(Field {
                id,
                ttype: b,
                bool_value: None,
                start,
                end: c.pos(),
            }))
        }
        Protocol::Compact => {
            let ct = b & 0x0f;
            let id = match b >> 4 {
                0 => zigzag16(c.varint(3)?)?,
                delta => last_id.wrapping_add(i16::from(delta)),
            };
            *last_id = id;
            let ttype = compact_to_binary_type(ct)
                .ok_or(Fault::Malformed("unknown compact-protocol type"))?;
            let bool_value = match ct {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            };
            let start = c.pos();
            skip_compact(c, ct, 1, true)?;
            Ok(Some(Field {
                id,
                ttype,
                bool_value,
                start,
                end: c.pos(),
            }))
        }
    }
}

/// The id of a struct's first field, reading only its header (`None` for an empty
/// struct). Used to tell a reply's success (field 0) from a declared exception.
pub(crate) fn first_field_id(c: &mut Cursor<'_>, protocol: Protocol) -> Res<Option<i16>> {
    let b = c.u8()?;
    if b == 0 {
        return Ok(None);
    }
    match protocol {
        Protocol::Binary => Ok(Some(c.u16()? as i16)),
        Protocol::Compact => match b >> 4 {
            0 => Ok(Some(zigzag16(c.varint(3)?)?)),
            delta => Ok(Some(i16::from(delta))),
        },
    }
}

fn zigzag16(v: u64) -> Res<i16> {
    let v = u16::try_from(v).map_err(|_| Fault::Malformed("field id overflows i16"))?;
    Ok(((v >> 1) as i16) ^ -((v & 1) as i16))
}

/// Decodes a zigzag varint i32 value read as raw bytes by the skipper.
pub(crate) fn zigzag32(v: u64) -> Res<i32> {
    let v = u32::try_from(v).map_err(|_| Fault::Malformed("i32 overflows"))?;
    Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
}

/// A parsed message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsgHead {
    /// Message type (1 call, 2 reply, 3 exception, 4 one-way).
    pub mtype: u8,
    /// Name offsets.
    pub name_start: usize,
    /// End of the name.
    pub name_end: usize,
    /// Sequence id as written (negative ids are large u32s).
    pub seqid: u32,
    /// Offset of the encoded sequence id.
    pub seqid_off: usize,
    /// Its encoded length (4 in binary, 1-5 in compact).
    pub seqid_len: usize,
    /// Offset of the argument/result struct.
    pub body: usize,
}

/// Which protocol a message starting with `b0` is in: `0x80` strict binary, `0x82`
/// compact, anything below `0x80` old non-strict binary (a positive name length).
pub(crate) fn sniff_protocol(b0: u8) -> Res<Protocol> {
    match b0 {
        0x82 => Ok(Protocol::Compact),
        0x80 => Ok(Protocol::Binary),
        b if b < 0x80 => Ok(Protocol::Binary),
        _ => Err(Fault::BadMagic("not a thrift binary or compact message")),
    }
}

/// Fast path for the common strict-binary header at `at` in `f`; `None` when the bytes
/// are anything else (the general [`read_msg_head`] then decides).
#[inline(always)]
pub(crate) fn strict_binary_head(f: &[u8], at: usize) -> Option<MsgHead> {
    let w = f.get(at..at + 8)?;
    if w[0] != 0x80 || w[1] != 0x01 || w[4] & 0x80 != 0 {
        return None;
    }
    let n = u32::from_be_bytes([w[4], w[5], w[6], w[7]]) as usize;
    let name_start = at + 8;
    let seqid_off = name_start + n;
    let s = f.get(seqid_off..seqid_off + 4)?;
    Some(MsgHead {
        mtype: w[3],
        name_start,
        name_end: seqid_off,
        seqid: u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        seqid_off,
        seqid_len: 4,
        body: seqid_off + 4,
    })
}

/// Parses the message header at `c` (positions are relative to `c`'s buffer).
#[inline]
pub(crate) fn read_msg_head(c: &mut Cursor<'_>, protocol: Protocol) -> Res<MsgHead> {
    match protocol {
        Protocol::Binary => {
            let word = c.u32()?;
            if word & 0x8000_0000 != 0 {
                if word & 0xffff_0000 != 0x8001_0000 {
                    return Err(Fault::BadMagic("unsupported binary-protocol version"));
                }
                let mtype = (word & 0xff) as u8;
                let n = c.be_len()?;
                let name_start = c.pos();
                c.advance(n)?;
                let seqid_off = c.pos();
                let seqid = c.u32()?;
                Ok(MsgHead {
                    mtype,
                    name_start,
                    name_end: name_start + n,
                    seqid,
                    seqid_off,
                    seqid_len: 4,
                    body: c.pos(),
                })
            } else {
                let n = word as usize;
                let name_start = c.pos();
                c.advance(n)?;
                let mtype = c.u8()?;
                let seqid_off = c.pos();
                let seqid = c.u32()?;
                Ok(MsgHead {
                    mtype,
                    name_start,
                    name_end: name_start + n,
                    seqid,
                    seqid_off,
                    seqid_len: 4,
                    body: c.pos(),
                })
            }
        }
        Protocol::Compact => {
            if c.u8()? != 0x82 {
                return Err(Fault::BadMagic("not a compact-protocol message"));
            }
            let b = c.u8()?;
            if b & 0x1f != 1 {
                return Err(Fault::BadMagic("unsupported compact-protocol version"));
            }
            let mtype = b >> 5;
            let seqid_off = c.pos();
            let seqid = u32::try_from(c.varint(5)?)
                .map_err(|_| Fault::Malformed("sequence id overflows 32 bits"))?;
            let seqid_len = c.pos() - seqid_off;
            let n = c.varint_len()?;
            let name_start = c.pos();
            c.advance(n)?;
            Ok(MsgHead {
                mtype,
                name_start,
                name_end: name_start + n,
                seqid,
                seqid_off,
                seqid_len,
                body: c.pos(),
            })
        }
    }
}

/// THeader magic.
pub(crate) const HEADER_MAGIC: u16 = 0x0fff;
/// Offset of the header section inside a THeader frame (after length, magic, flags,
/// sequence id and header length).
pub(crate) const HEADER_SECTION: usize = 14;
/// Info section id of key/value headers.
pub(crate) const INFO_KEYVALUE: u64 = 1;

/// A parsed THeader (offsets are within the whole frame, length prefix included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct THead {
    /// Protocol of the payload.
    pub protocol: Protocol,
    /// Where the info sections start (after protocol id and transforms).
    pub info_start: usize,
    /// End of the header section (start of the payload).
    pub payload: usize,
}

fn transform_name(id: u64) -> Cow<'static, str> {
    match id {
        1 => "THeader transform zlib (1) is not supported".into(),
        2 => "THeader transform hmac (2) is not supported".into(),
        3 => "THeader transform snappy (3) is not supported".into(),
        4 => "THeader transform qlz (4) is not supported".into(),
        5 => "THeader transform zstd (5) is not supported".into(),
        other => format!("THeader transform {other} is not supported").into(),
    }
}

/// Parses the THeader of a complete frame `f` (length prefix included; the caller
/// checked the magic and that the whole frame is present).
pub(crate) fn read_theader(f: &[u8]) -> Res<THead> {
    let mut c = Cursor::at(f, 12);
    let words = usize::from(c.u16()?);
    let payload = HEADER_SECTION + words * 4;
    let hs = f
        .get(..payload)
        .ok_or(Fault::Malformed("THeader header runs past the frame"))?;
    let mut c = Cursor::at(hs, HEADER_SECTION);
    let pid = c.varint(5).map_err(in_header)?;
    let protocol = match pid {
        0 => Protocol::Binary,
        2 => Protocol::Compact,
        1 => {
            return Err(Fault::Unsupported(
                "THeader protocol JSON (1) is not supported".into(),
            ))
        }
        _ => {
            return Err(Fault::Unsupported(
                format!("THeader protocol id {pid} is not supported").into(),
            ))
        }
    };
    let transforms = c.varint(5).map_err(in_header)?;
    if transforms > 0 {
        let id = c.varint(5).map_err(in_header)?;
        return Err(Fault::Unsupported(transform_name(id)));
    }
    Ok(THead {
        protocol,
        info_start: c.pos(),
        payload,
    })
}

fn in_header(f: Fault) -> Fault {
    match f {
        Fault::Incomplete(_) => Fault::Malformed("THeader section truncated"),
        other => other,
    }
}

/// Calls `each(key_range, value_range)` for every key/value info header in
/// `f[info_start..payload]`. Stops at padding or at an info section it does not know
/// (whose length cannot be known); returns the offset where it stopped.
pub(crate) fn for_each_info_header(
    f: &[u8],
    info_start: usize,
    payload: usize,
    mut each: impl FnMut((usize, usize), (usize, usize)) -> Res<()>,
) -> Res<usize> {
    let hs = f
        .get(..payload)
        .ok_or(Fault::Malformed("THeader header runs past the frame"))?;
    let mut c = Cursor::at(hs, info_start);
    while c.pos() < payload {
        let before = c.pos();
        let id = c.varint(5).map_err(in_header)?;
        if id != INFO_KEYVALUE {
            return Ok(before);
        }
        let n = c.varint_len().map_err(in_header)?;
        for _ in 0..n {
            let kl = c.varint_len().map_err(in_header)?;
            let ks = c.pos();
            c.advance(kl).map_err(in_header)?;
            let vl = c.varint_len().map_err(in_header)?;
            let vs = c.pos();
            c.advance(vl).map_err(in_header)?;
            each((ks, ks + kl), (vs, vs + vl))?;
        }
    }
    Ok(c.pos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_limits() {
        assert_eq!(Cursor::new(&[0x7f]).varint(1), Ok(127));
        assert_eq!(Cursor::new(&[0x80, 0x01]).varint(2), Ok(128));
        assert_eq!(
            Cursor::new(&[0x80, 0x80]).varint(2),
            Err(Fault::Malformed("varint too long"))
        );
        assert_eq!(Cursor::new(&[0x80]).varint(2), Err(Fault::Incomplete(2)));
        let mut c = Cursor::new(&[0x80, 0x80, 0x01, 0x05]);
        assert_eq!(c.skip_varint(3), Ok(()));
        assert_eq!(c.pos(), 3);
        assert_eq!(
            Cursor::new(&[0x80, 0x80]).skip_varint(3),
            Err(Fault::Incomplete(3))
        );
        assert_eq!(
            Cursor::new(&[0x80, 0x80, 0x80]).skip_varint(3),
            Err(Fault::Malformed("varint too long"))
        );
    }

    #[test]
    fn binary_struct_with_every_type() {
        // bool, byte, double, i16, i32, i64, string, list<i32>, map<string,i8>, set<struct>, uuid
        let mut v = vec![
            2, 0, 1, 1, //
            3, 0, 2, 0xff, //
            4, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, //
            6, 0, 4, 0, 1, //
            8, 0, 5, 0, 0, 0, 1, //
            10, 0, 6, 0, 0, 0, 0, 0, 0, 0, 1, //
            11, 0, 7, 0, 0, 0, 2, b'h', b'i', //
            15, 0, 8, 8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, //
            13, 0, 9, 11, 3, 0, 0, 0, 1, 0, 0, 0, 1, b'k', 7, //
            14, 0, 10, 12, 0, 0, 0, 2, 0, 0, //
            16, 0, 11,
        ];
        v.extend_from_slice(&[9; 16]);
        v.push(0);
        let mut c = Cursor::new(&v);
        skip_binary_struct(&mut c, 0).unwrap();
        assert_eq!(c.pos(), v.len());
        for cut in 0..v.len() {
            let mut c = Cursor::new(&v[..cut]);
            assert!(matches!(skip_binary_struct(&mut c, 0), Err(Fault::Incomplete(n)) if n > cut));
        }
    }

    #[test]
    fn compact_bools_live_in_field_headers() {
        // field 1 true, field 2 false (deltas), list<bool> of 3, long-form field id 300 i32 = -1
        let v = [
            0x11, 0x12, 0x19, 0x31, 1, 2, 1, 0x05, 0xd8, 0x04, 0x01, 0x00,
        ];
        let mut c = Cursor::new(&v);
        skip_compact_struct(&mut c, 0).unwrap();
        assert_eq!(c.pos(), v.len());
        let mut c = Cursor::new(&v);
        let mut last = 0;
        let f1 = next_field(&mut c, Protocol::Compact, &mut last)
            .unwrap()
            .unwrap();
        assert_eq!((f1.id, f1.bool_value), (1, Some(true)));
        let f2 = next_field(&mut c, Protocol::Compact, &mut last)
            .unwrap()
            .unwrap();
        assert_eq!((f2.id, f2.bool_value), (2, Some(false)));
        let f3 = next_field(&mut c, Protocol::Compact, &mut last)
            .unwrap()
            .unwrap();
        assert_eq!((f3.id, f3.ttype, f3.end - f3.start), (3, ttype::LIST, 4));
        let f4 = next_field(&mut c, Protocol::Compact, &mut last)
            .unwrap()
            .unwrap();
        assert_eq!((f4.id, f4.ttype), (300, ttype::I32));
        assert_eq!(
            next_field(&mut c, Protocol::Compact, &mut last).unwrap(),
            None
        );
    }

    #[test]
    fn hostile_nesting_is_too_deep() {
        let mut v = vec![];
        for _ in 0..1000 {
            v.extend_from_slice(&[12, 0, 1]);
        }
        assert_eq!(
            skip_binary_struct(&mut Cursor::new(&v), 0),
            Err(Fault::TooDeep)
        );
        let v = vec![0x1c; 1000];
        assert_eq!(
            skip_compact_struct(&mut Cursor::new(&v), 0),
            Err(Fault::TooDeep)
        );
        // lists of lists
        let mut v = vec![0x19];
        v.extend(std::iter::repeat_n(0x19, 1000));
        assert_eq!(
            skip_compact_struct(&mut Cursor::new(&v), 0),
            Err(Fault::TooDeep)
        );
    }

    #[test]
    fn huge_counts_of_fixed_elements_ask_for_everything_at_once() {
        // list<i64> of 1_000_000 elements: needs 8 MB after the header.
        let v = [15, 0, 1, 10, 0, 0x0f, 0x42, 0x40];
        let err = skip_binary_struct(&mut Cursor::new(&v), 0).unwrap_err();
        assert_eq!(err, Fault::Incomplete(8 + 8_000_000));
    }

    #[test]
    fn negative_lengths_are_malformed() {
        let v = [11, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            skip_binary_struct(&mut Cursor::new(&v), 0),
            Err(Fault::Malformed("negative length"))
        );
    }

    #[test]
    fn message_heads() {
        // strict binary call "ab" seqid 7
        let v = [0x80, 1, 0, 1, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 7, 0];
        let h = read_msg_head(&mut Cursor::new(&v), Protocol::Binary).unwrap();
        assert_eq!(
            (
                h.mtype,
                h.name_start,
                h.name_end,
                h.seqid,
                h.seqid_off,
                h.body
            ),
            (1, 8, 10, 7, 10, 14)
        );
        // non-strict
        let v = [0, 0, 0, 2, b'a', b'b', 4, 0, 0, 0, 9, 0];
        let h = read_msg_head(&mut Cursor::new(&v), Protocol::Binary).unwrap();
        assert_eq!(
            (h.mtype, h.name_start, h.seqid, h.seqid_off, h.body),
            (4, 4, 9, 7, 11)
        );
        // compact reply seqid 300 (varint ac 02)
        let v = [0x82, 0x41, 0xac, 0x02, 2, b'a', b'b', 0];
        let h = read_msg_head(&mut Cursor::new(&v), Protocol::Compact).unwrap();
        assert_eq!(
            (h.mtype, h.seqid, h.seqid_off, h.seqid_len, h.body),
            (2, 300, 2, 2, 7)
        );
        // bad version
        let v = [0x80, 2, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            read_msg_head(&mut Cursor::new(&v), Protocol::Binary),
            Err(Fault::BadMagic(_))
        ));
    }
}
