//! The Hessian 2 reader: skips values exactly, reads strings and string maps without
//! copying where the wire form is plain UTF-8.

use std::ops::Range;

use bytes::Bytes;
use meta_protocol::MetaStr;
use smallvec::SmallVec;

use super::code;
use super::value::Value;

/// Default nesting limit for lists, maps and objects.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Most class definitions one body may declare.
pub const MAX_CLASS_DEFS: usize = 65_536;

/// Why a Hessian 2 value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HessianError {
    /// The input ends inside a value.
    #[error("hessian2 value truncated at offset {at}")]
    UnexpectedEnd {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// A type code that cannot start the expected value.
    #[error("unexpected hessian2 code 0x{code:02x} at offset {at}, expected {expected}")]
    UnexpectedCode {
        /// The code read.
        code: u8,
        /// Its offset.
        at: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// A string whose bytes are not UTF-8 (or modified UTF-8).
    #[error("invalid UTF-8 in hessian2 string at offset {at}")]
    BadUtf8 {
        /// Offset of the string's data.
        at: usize,
    },
    /// An object refers to a class definition that was not declared.
    #[error("object at offset {at} refers to undefined class definition {index}")]
    UnknownClass {
        /// The index used.
        index: i64,
        /// Offset of the object.
        at: usize,
    },
    /// Too many class definitions in one body.
    #[error("more than {0} class definitions")]
    TooManyClasses(usize),
    /// A numeric field out of its valid range (a negative length, a huge count).
    #[error("{what} {value} out of range at offset {at}")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: i64,
        /// Its offset.
        at: usize,
    },
    /// Lists, maps and objects nested deeper than the limit.
    #[error("hessian2 nesting deeper than {0} levels")]
    TooDeep(usize),
}

type Result<T> = std::result::Result<T, HessianError>;

/// Where a string's bytes are, and whether they can be used as UTF-8 as they stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrSpan {
    /// Byte range of the data of a single-chunk string, or of the whole value (chunk
    /// headers included) when chunked.
    pub data: Range<usize>,
    /// True when the value is one chunk with no surrogate-pair encoding: `data` is the
    /// string's UTF-8 (still to be validated).
    pub plain: bool,
    /// True when `plain` and every byte is ASCII: `data` is valid UTF-8 as it stands.
    pub ascii: bool,
}

/// A class definition seen in the body: field count and where it starts.
#[derive(Clone, Copy, Debug)]
struct ClassDef {
    fields: u32,
    offset: u32,
}

/// Reads Hessian 2 values from a frame, sharing class definitions across every value
/// of one body (create one reader per body).
///
/// Every method checks bounds; none panics on any input.
#[derive(Debug)]
pub struct Reader<'a> {
    frame: &'a Bytes,
    buf: &'a [u8],
    pos: usize,
    classes: SmallVec<[ClassDef; 8]>,
    max_depth: usize,
}

/// Length of a UTF-8 sequence from its lead byte, and its UTF-16 unit count.
#[inline]
fn lead_len(b: u8) -> Option<(usize, usize)> {
    match b {
        0x00..=0x7f => Some((1, 1)),
        0xc0..=0xdf => Some((2, 1)),
        0xe0..=0xef => Some((3, 1)),
        0xf0..=0xf7 => Some((4, 2)),
        _ => None,
    }
}

impl<'a> Reader<'a> {
    /// A reader over the whole of `frame`.
    pub fn new(frame: &'a Bytes) -> Self {
        Self::with_range(frame, 0, frame.len())
    }

    /// A reader over `frame[start..end]` (positions stay absolute in `frame`). An
    /// out-of-range `end` is clamped to the frame.
    pub fn with_range(frame: &'a Bytes, start: usize, end: usize) -> Self {
        let end = end.min(frame.len());
        Reader {
            frame,
            buf: &frame[..end],
            pos: start.min(end),
            classes: SmallVec::new(),
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    /// Sets the nesting limit.
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// The absolute offset of the next byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left before the end.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been read.
    pub fn is_at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The next byte without consuming it.
    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Whether a string (of any form) is next.
    #[inline]
    pub fn at_string(&self) -> bool {
        matches!(
            self.peek(),
            Some(0x00..=0x1f | 0x30..=0x33 | code::STRING_FINAL | code::STRING_CHUNK)
        )
    }

    /// Consumes `code` if it is next, returning whether it did.
    #[inline]
    pub fn skip_code(&mut self, code: u8) -> bool {
        let next = self.peek() == Some(code);
        self.pos += usize::from(next);
        next
    }

    /// Moves back to `pos`, an offset this reader returned from [`Reader::position`].
    #[inline]
    pub fn rewind_to(&mut self, pos: usize) {
        self.pos = pos.min(self.pos);
    }

    /// A string of the short or medium form (at most 1,023 units) made only of ASCII:
    /// consumes it and returns its data's range. Anything else (another form, a
    /// non-ASCII byte, too few bytes) returns `None` and consumes nothing: the common
    /// case without the general path's bookkeeping.
    #[inline]
    pub fn read_ascii_str(&mut self) -> Option<Range<usize>> {
        let (start, units) = match *self.buf.get(self.pos)? {
            c @ 0x00..=0x1f => (self.pos + 1, usize::from(c)),
            c @ 0x30..=0x33 => (
                self.pos + 2,
                (usize::from(c - 0x30) << 8) | usize::from(*self.buf.get(self.pos + 1)?),
            ),
            _ => return None,
        };
        let end = start + units;
        if !meta_protocol::is_ascii(self.buf.get(start..end)?) {
            return None;
        }
        self.pos = end;
        Some(start..end)
    }

    #[inline]
    fn eof(&self) -> HessianError {
        HessianError::UnexpectedEnd { at: self.pos }
    }

    #[inline]
    fn byte(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.eof())?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let buf: &'a [u8] = self.buf;
        let end = self.pos.checked_add(n).ok_or_else(|| self.eof())?;
        let s = buf.get(self.pos..end).ok_or_else(|| self.eof())?;
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn advance(&mut self, n: usize) -> Result<()> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.eof())?;
        if end > self.buf.len() {
            return Err(self.eof());
        }
        self.pos = end;
        Ok(())
    }

    #[inline]
    fn u16(&mut self) -> Result<usize> {
        let s = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([s[0], s[1]])))
    }

    fn be_i32(&mut self) -> Result<i32> {
        let s = self.take(4)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn be_i64(&mut self) -> Result<i64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_be_bytes(a))
    }

    fn unexpected(&self, code: u8, at: usize, expected: &'static str) -> HessianError {
        HessianError::UnexpectedCode { code, at, expected }
    }

    /// Consumes a null if one is next, returning whether it did.
    pub fn read_null(&mut self) -> Result<bool> {
        if self.peek() == Some(code::NULL) {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Reads a boolean.
    pub fn read_bool(&mut self) -> Result<bool> {
        let at = self.pos;
        match self.byte()? {
            code::TRUE => Ok(true),
            code::FALSE => Ok(false),
            c => Err(self.unexpected(c, at, "a boolean")),
        }
    }

    /// Reads an int or a long in any compact form, as an i64.
    pub fn read_long(&mut self) -> Result<i64> {
        let at = self.pos;
        let c = self.byte()?;
        self.long_after(c, at)
    }

    /// Reads an int (any int or long form whose value fits 32 bits).
    pub fn read_int(&mut self) -> Result<i32> {
        let at = self.pos;
        let v = self.read_long()?;
        i32::try_from(v).map_err(|_| HessianError::OutOfRange {
            what: "int",
            value: v,
            at,
        })
    }

    fn long_after(&mut self, c: u8, at: usize) -> Result<i64> {
        Ok(match c {
            0x80..=0xbf => i64::from(c) - 0x90,
            0xc0..=0xcf => ((i64::from(c) - 0xc8) << 8) + i64::from(self.byte()?),
            0xd0..=0xd7 => {
                let s = self.take(2)?;
                ((i64::from(c) - 0xd4) << 16) + (i64::from(s[0]) << 8) + i64::from(s[1])
            }
            code::INT | code::LONG_INT => i64::from(self.be_i32()?),
            0xd8..=0xef => i64::from(c) - 0xe0,
            0xf0..=0xff => ((i64::from(c) - 0xf8) << 8) + i64::from(self.byte()?),
            0x38..=0x3f => {
                let s = self.take(2)?;
                ((i64::from(c) - 0x3c) << 16) + (i64::from(s[0]) << 8) + i64::from(s[1])
            }
            code::LONG => self.be_i64()?,
            _ => return Err(self.unexpected(c, at, "an int or a long")),
        })
    }

    /// Reads a double in any compact form.
    pub fn read_double(&mut self) -> Result<f64> {
        let at = self.pos;
        Ok(match self.byte()? {
            code::DOUBLE_ZERO => 0.0,
            code::DOUBLE_ONE => 1.0,
            code::DOUBLE_BYTE => f64::from(self.byte()? as i8),
            code::DOUBLE_SHORT => {
                let s = self.take(2)?;
                f64::from(i16::from_be_bytes([s[0], s[1]]))
            }
            code::DOUBLE_MILLS => 0.001 * f64::from(self.be_i32()?),
            code::DOUBLE => f64::from_bits(self.be_i64()? as u64),
            c => return Err(self.unexpected(c, at, "a double")),
        })
    }

    /// Reads a date as milliseconds since the epoch.
    pub fn read_date(&mut self) -> Result<i64> {
        let at = self.pos;
        match self.byte()? {
            code::DATE_MILLIS => self.be_i64(),
            code::DATE_MINUTES => Ok(i64::from(self.be_i32()?) * 60_000),
            c => Err(self.unexpected(c, at, "a date")),
        }
    }

    /// Reads one string chunk header: `(units, is_final)`, or `None` when the next code
    /// does not start a string.
    #[inline]
    fn string_chunk_header(&mut self, c: u8) -> Result<Option<(usize, bool)>> {
        Ok(Some(match c {
            0x00..=0x1f => (usize::from(c), true),
            0x30..=0x33 => (
                (usize::from(c - 0x30) << 8) + usize::from(self.byte()?),
                true,
            ),
            code::STRING_FINAL => (self.u16()?, true),
            code::STRING_CHUNK => (self.u16()?, false),
            _ => return Ok(None),
        }))
    }

    /// Advances over `units` UTF-16 code units of string data, returning whether a
    /// surrogate pair encoded as modified UTF-8 was seen.
    #[inline]
    fn scan_units(&mut self, units: usize) -> Result<bool> {
        // Fast path: all ASCII, one byte per unit.
        if let Some(s) = self
            .pos
            .checked_add(units)
            .and_then(|e| self.buf.get(self.pos..e))
        {
            if s.is_ascii() {
                self.pos += units;
                return Ok(false);
            }
        }
        let mut surrogate = false;
        let mut left = units;
        while left > 0 {
            let at = self.pos;
            let b = self.byte()?;
            let (len, u) = lead_len(b).ok_or(HessianError::BadUtf8 { at })?;
            if u > left {
                return Err(HessianError::BadUtf8 { at });
            }
            if b == 0xed && self.peek().is_some_and(|n| n >= 0xa0) {
                surrogate = true;
            }
            self.advance(len - 1)?;
            left -= u;
        }
        Ok(surrogate)
    }

    /// Reads a string's position without materialising it. Errors on null.
    #[inline]
    pub fn read_str_span(&mut self) -> Result<StrSpan> {
        match self.read_ascii_str() {
            Some(data) => Ok(StrSpan {
                data,
                plain: true,
                ascii: true,
            }),
            None => self.read_str_span_slow(),
        }
    }

    fn read_str_span_slow(&mut self) -> Result<StrSpan> {
        let at = self.pos;
        let value_start = at;
        let c = self.byte()?;
        let (units, is_final) = self
            .string_chunk_header(c)?
            .ok_or_else(|| self.unexpected(c, at, "a string"))?;
        let start = self.pos;
        let mut surrogate = self.scan_units(units)?;
        if is_final {
            return Ok(StrSpan {
                ascii: !surrogate && self.buf[start..self.pos].is_ascii(),
                data: start..self.pos,
                plain: !surrogate,
            });
        }
        loop {
            let at = self.pos;
            let c = self.byte()?;
            let (units, is_final) = self
                .string_chunk_header(c)?
                .ok_or_else(|| self.unexpected(c, at, "a string chunk"))?;
            surrogate |= self.scan_units(units)?;
            if is_final {
                let _ = surrogate;
                return Ok(StrSpan {
                    data: value_start..self.pos,
                    plain: false,
                    ascii: false,
                });
            }
        }
    }

    /// Reads a string. Plain UTF-8 single-chunk strings slice the frame (no copy);
    /// chunked strings and surrogate-pair encodings are decoded into a new buffer.
    pub fn read_string(&mut self) -> Result<MetaStr> {
        let at = self.pos;
        let span = self.read_str_span()?;
        if span.plain {
            MetaStr::try_from(self.frame.slice(span.data.clone())).map_err(|_| {
                HessianError::BadUtf8 {
                    at: span.data.start,
                }
            })
        } else {
            let mut sub = Reader::with_range(self.frame, at, self.pos);
            let mut out = String::new();
            sub.decode_string_into(&mut out)?;
            Ok(MetaStr::from(out))
        }
    }

    /// Reads a string or a null (`None`).
    pub fn read_nullable_string(&mut self) -> Result<Option<MetaStr>> {
        if self.read_null()? {
            Ok(None)
        } else {
            self.read_string().map(Some)
        }
    }

    /// Decodes a (possibly chunked, possibly modified-UTF-8) string into `out`.
    /// Unpaired surrogates become U+FFFD.
    fn decode_string_into(&mut self, out: &mut String) -> Result<()> {
        let mut high: Option<u32> = None;
        loop {
            let at = self.pos;
            let c = self.byte()?;
            let (units, is_final) = self
                .string_chunk_header(c)?
                .ok_or_else(|| self.unexpected(c, at, "a string"))?;
            let mut left = units;
            while left > 0 {
                let at = self.pos;
                let b = self.byte()?;
                let bad = HessianError::BadUtf8 { at };
                let (len, u) = lead_len(b).ok_or(bad.clone())?;
                if u > left {
                    return Err(bad);
                }
                let mut cp = match len {
                    1 => u32::from(b),
                    2 => u32::from(b & 0x1f),
                    3 => u32::from(b & 0x0f),
                    _ => u32::from(b & 0x07),
                };
                for _ in 1..len {
                    let n = self.byte()?;
                    if n & 0xc0 != 0x80 {
                        return Err(bad);
                    }
                    cp = (cp << 6) | u32::from(n & 0x3f);
                }
                left -= u;
                match cp {
                    0xd800..=0xdbff => {
                        if high.replace(cp).is_some() {
                            out.push(char::REPLACEMENT_CHARACTER);
                        }
                    }
                    0xdc00..=0xdfff => match high.take() {
                        Some(h) => {
                            let full = 0x10000 + ((h - 0xd800) << 10) + (cp - 0xdc00);
                            out.push(char::from_u32(full).unwrap_or(char::REPLACEMENT_CHARACTER));
                        }
                        None => out.push(char::REPLACEMENT_CHARACTER),
                    },
                    _ => {
                        if high.take().is_some() {
                            out.push(char::REPLACEMENT_CHARACTER);
                        }
                        out.push(char::from_u32(cp).ok_or(bad)?);
                    }
                }
            }
            if is_final {
                if high.is_some() {
                    out.push(char::REPLACEMENT_CHARACTER);
                }
                return Ok(());
            }
        }
    }

    /// Reads a binary value. A single chunk slices the frame; chunks are joined.
    pub fn read_binary(&mut self) -> Result<Bytes> {
        let mut out: Option<Vec<u8>> = None;
        loop {
            let at = self.pos;
            let c = self.byte()?;
            let (len, is_final) = match c {
                0x20..=0x2f => (usize::from(c - 0x20), true),
                0x34..=0x37 => (
                    (usize::from(c - 0x34) << 8) + usize::from(self.byte()?),
                    true,
                ),
                code::BINARY_FINAL => (self.u16()?, true),
                code::BINARY_CHUNK => (self.u16()?, false),
                _ => return Err(self.unexpected(c, at, "a binary")),
            };
            let start = self.pos;
            self.advance(len)?;
            match (&mut out, is_final) {
                (None, true) => return Ok(self.frame.slice(start..self.pos)),
                (out, _) => {
                    let v = out.get_or_insert_with(Vec::new);
                    v.extend_from_slice(&self.buf[start..self.pos]);
                    if is_final {
                        return Ok(Bytes::from(std::mem::take(v)));
                    }
                }
            }
        }
    }

    /// Skips a type (a string, or an int referring to an earlier type).
    fn skip_type(&mut self) -> Result<()> {
        match self.peek() {
            Some(_) if self.at_string() => self.read_str_span().map(|_| ()),
            Some(_) => self.read_long().map(|_| ()),
            None => Err(self.eof()),
        }
    }

    fn read_len(&mut self, what: &'static str) -> Result<usize> {
        let at = self.pos;
        let v = self.read_long()?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or(HessianError::OutOfRange { what, value: v, at })
    }

    /// Reads a class definition (after its `C`), registering it.
    fn read_class_def(&mut self, offset: usize) -> Result<()> {
        self.read_str_span()?;
        let fields = self.read_len("class field count")?;
        for _ in 0..fields {
            self.read_str_span()?;
        }
        if self.classes.len() >= MAX_CLASS_DEFS {
            return Err(HessianError::TooManyClasses(MAX_CLASS_DEFS));
        }
        self.classes.push(ClassDef {
            fields: fields as u32,
            offset: offset as u32,
        });
        Ok(())
    }

    fn class(&self, index: i64, at: usize) -> Result<ClassDef> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.classes.get(i).copied())
            .ok_or(HessianError::UnknownClass { index, at })
    }

    /// Skips exactly one value of any type (with any class definitions before it).
    pub fn skip_value(&mut self) -> Result<()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Result<()> {
        loop {
            let at = self.pos;
            let c = self.byte()?;
            match c {
                code::NULL | code::TRUE | code::FALSE => {}
                // int
                0x80..=0xbf | 0xd8..=0xef | code::DOUBLE_ZERO | code::DOUBLE_ONE => {}
                0xc0..=0xcf | 0xf0..=0xff | code::DOUBLE_BYTE => self.advance(1)?,
                0xd0..=0xd7 | 0x38..=0x3f | code::DOUBLE_SHORT => self.advance(2)?,
                code::INT | code::LONG_INT | code::DOUBLE_MILLS | code::DATE_MINUTES => {
                    self.advance(4)?
                }
                code::LONG | code::DOUBLE | code::DATE_MILLIS => self.advance(8)?,
                // string
                0x00..=0x1f | 0x30..=0x33 | code::STRING_FINAL | code::STRING_CHUNK => {
                    self.pos = at;
                    self.read_str_span()?;
                }
                // binary
                0x20..=0x2f => self.advance(usize::from(c - 0x20))?,
                0x34..=0x37 => {
                    let n = (usize::from(c - 0x34) << 8) + usize::from(self.byte()?);
                    self.advance(n)?
                }
                code::BINARY_FINAL => {
                    let n = self.u16()?;
                    self.advance(n)?
                }
                code::BINARY_CHUNK => {
                    let n = self.u16()?;
                    self.advance(n)?;
                    // the next chunk belongs to the same value
                    let next = self.peek().ok_or_else(|| self.eof())?;
                    if !matches!(next, 0x20..=0x2f | 0x34..=0x37 | b'A' | b'B') {
                        return Err(self.unexpected(next, self.pos, "a binary chunk"));
                    }
                    continue;
                }
                // lists
                code::LIST_TYPED_VAR | code::LIST_UNTYPED_VAR => {
                    let depth = self.deeper(depth)?;
                    if c == code::LIST_TYPED_VAR {
                        self.skip_type()?;
                    }
                    self.skip_until_end(depth, 1)?;
                }
                code::LIST_TYPED_FIXED | code::LIST_UNTYPED_FIXED => {
                    let depth = self.deeper(depth)?;
                    if c == code::LIST_TYPED_FIXED {
                        self.skip_type()?;
                    }
                    let n = self.read_len("list length")?;
                    self.skip_n(depth, n)?;
                }
                0x70..=0x77 => {
                    let depth = self.deeper(depth)?;
                    self.skip_type()?;
                    self.skip_n(depth, usize::from(c - 0x70))?;
                }
                0x78..=0x7f => {
                    let depth = self.deeper(depth)?;
                    self.skip_n(depth, usize::from(c - 0x78))?;
                }
                // maps
                code::MAP_UNTYPED | code::MAP_TYPED => {
                    let depth = self.deeper(depth)?;
                    if c == code::MAP_TYPED {
                        self.skip_type()?;
                    }
                    self.skip_until_end(depth, 2)?;
                }
                // objects
                code::CLASS_DEF => {
                    self.read_class_def(at)?;
                    continue;
                }
                code::OBJECT | 0x60..=0x6f => {
                    let depth = self.deeper(depth)?;
                    let index = if c == code::OBJECT {
                        self.read_long()?
                    } else {
                        i64::from(c - 0x60)
                    };
                    let def = self.class(index, at)?;
                    self.skip_n(depth, def.fields as usize)?;
                }
                code::REF => {
                    self.read_long()?;
                }
                _ => return Err(self.unexpected(c, at, "a value")),
            }
            return Ok(());
        }
    }

    #[inline]
    fn deeper(&self, depth: usize) -> Result<usize> {
        if depth >= self.max_depth {
            Err(HessianError::TooDeep(self.max_depth))
        } else {
            Ok(depth + 1)
        }
    }

    fn skip_n(&mut self, depth: usize, n: usize) -> Result<()> {
        for _ in 0..n {
            self.skip_at(depth)?;
        }
        Ok(())
    }

    /// Skips groups of `per` values until `Z`.
    fn skip_until_end(&mut self, depth: usize, per: usize) -> Result<()> {
        loop {
            match self.peek() {
                Some(code::END) => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => self.skip_n(depth, per)?,
                None => return Err(self.eof()),
            }
        }
    }

    /// Reads a map whose string keys and string values matter (Dubbo attachments),
    /// calling `f(key, value)` for each string/string entry in order; other entries are
    /// skipped. Accepts untyped (`H`) and typed (`M`) maps, and null as an empty map.
    /// Returns the offset of the first entry.
    pub fn read_string_map(&mut self, mut f: impl FnMut(MetaStr, MetaStr)) -> Result<usize> {
        self.visit_map(|r, _| {
            let k = r.read_string_or_skip()?;
            let v = r.read_string_or_skip()?;
            if let (Some(k), Some(v)) = (k, v) {
                f(k, v);
            }
            Ok(())
        })
    }

    /// Reads a map's header (`H`, `M` + type, or `N`) and then calls `entry(reader,
    /// entry_start)` until the closing `Z`. Returns the offset of the first entry.
    pub fn visit_map(
        &mut self,
        mut entry: impl FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<usize> {
        let at = self.pos;
        match self.byte()? {
            code::NULL => return Ok(self.pos),
            code::MAP_UNTYPED => {}
            code::MAP_TYPED => self.skip_type()?,
            c => return Err(self.unexpected(c, at, "a map")),
        }
        let first = self.pos;
        loop {
            match self.peek() {
                Some(code::END) => {
                    self.pos += 1;
                    return Ok(first);
                }
                Some(_) => entry(self, self.pos)?,
                None => return Err(self.eof()),
            }
        }
    }

    /// Reads a string if one is next; otherwise skips the value and returns `None`.
    pub fn read_string_or_skip(&mut self) -> Result<Option<MetaStr>> {
        if self.at_string() {
            self.read_string().map(Some)
        } else {
            self.skip_value().map(|_| None)
        }
    }

    /// Materialises one value (for tests and tools; the proxy only skips).
    pub fn read_value(&mut self) -> Result<Value> {
        self.value_at(0)
    }

    fn read_type(&mut self) -> Result<String> {
        if self.at_string() {
            Ok(self.read_string()?.to_string())
        } else {
            Ok(format!("#{}", self.read_long()?))
        }
    }

    fn value_at(&mut self, depth: usize) -> Result<Value> {
        loop {
            let at = self.pos;
            let c = self.peek().ok_or_else(|| self.eof())?;
            return Ok(match c {
                code::NULL => {
                    self.pos += 1;
                    Value::Null
                }
                code::TRUE | code::FALSE => Value::Bool(self.read_bool()?),
                0x80..=0xd7 | code::INT => Value::Int(self.read_int()?),
                0xd8..=0xff | 0x38..=0x3f | code::LONG_INT | code::LONG => {
                    Value::Long(self.read_long()?)
                }
                0x5b..=0x5f | code::DOUBLE => Value::Double(self.read_double()?),
                code::DATE_MILLIS | code::DATE_MINUTES => Value::Date(self.read_date()?),
                0x00..=0x1f | 0x30..=0x33 | code::STRING_FINAL | code::STRING_CHUNK => {
                    Value::String(self.read_string()?.to_string())
                }
                0x20..=0x2f | 0x34..=0x37 | code::BINARY_FINAL | code::BINARY_CHUNK => {
                    Value::Binary(self.read_binary()?.to_vec())
                }
                code::LIST_TYPED_VAR | code::LIST_UNTYPED_VAR => {
                    self.pos += 1;
                    let depth = self.deeper(depth)?;
                    let ty = if c == code::LIST_TYPED_VAR {
                        Some(self.read_type()?)
                    } else {
                        None
                    };
                    let mut items = Vec::new();
                    loop {
                        match self.peek() {
                            Some(code::END) => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => items.push(self.value_at(depth)?),
                            None => return Err(self.eof()),
                        }
                    }
                    Value::List { ty, items }
                }
                code::LIST_TYPED_FIXED | code::LIST_UNTYPED_FIXED | 0x70..=0x7f => {
                    self.pos += 1;
                    let depth = self.deeper(depth)?;
                    let typed = matches!(c, code::LIST_TYPED_FIXED | 0x70..=0x77);
                    let ty = if typed { Some(self.read_type()?) } else { None };
                    let n = match c {
                        0x70..=0x77 => usize::from(c - 0x70),
                        0x78..=0x7f => usize::from(c - 0x78),
                        _ => self.read_len("list length")?,
                    };
                    let mut items = Vec::with_capacity(n.min(self.remaining()));
                    for _ in 0..n {
                        items.push(self.value_at(depth)?);
                    }
                    Value::FixedList { ty, items }
                }
                code::MAP_UNTYPED | code::MAP_TYPED => {
                    self.pos += 1;
                    let depth = self.deeper(depth)?;
                    let ty = if c == code::MAP_TYPED {
                        Some(self.read_type()?)
                    } else {
                        None
                    };
                    let mut entries = Vec::new();
                    loop {
                        match self.peek() {
                            Some(code::END) => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => {
                                let k = self.value_at(depth)?;
                                let v = self.value_at(depth)?;
                                entries.push((k, v));
                            }
                            None => return Err(self.eof()),
                        }
                    }
                    Value::Map { ty, entries }
                }
                code::CLASS_DEF => {
                    self.pos += 1;
                    self.read_class_def(at)?;
                    continue;
                }
                code::OBJECT | 0x60..=0x6f => {
                    self.pos += 1;
                    let depth = self.deeper(depth)?;
                    let index = if c == code::OBJECT {
                        self.read_long()?
                    } else {
                        i64::from(c - 0x60)
                    };
                    let def = self.class(index, at)?;
                    // Re-read the definition for its names.
                    let mut d = Reader::with_range(self.frame, def.offset as usize + 1, at);
                    let class = d.read_string()?.to_string();
                    let n = d.read_len("class field count")?;
                    let mut fields = Vec::with_capacity(n.min(self.remaining()));
                    for _ in 0..n {
                        let name = d.read_string()?.to_string();
                        fields.push((name, self.value_at(depth)?));
                    }
                    Value::Object { class, fields }
                }
                code::REF => {
                    self.pos += 1;
                    let v = self.read_long()?;
                    Value::Ref(u32::try_from(v).map_err(|_| HessianError::OutOfRange {
                        what: "ref",
                        value: v,
                        at,
                    })?)
                }
                _ => return Err(self.unexpected(c, at, "a value")),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(bytes: &'static [u8]) -> Result<usize> {
        let b = Bytes::from_static(bytes);
        let mut r = Reader::new(&b);
        r.skip_value()?;
        Ok(r.position())
    }

    #[test]
    fn ascii_strings_are_read_where_they_stand_and_others_left_alone() {
        let frame = Bytes::from_static(b"\x03abc\x30\x02hi\x01\xc3\xa9S\x00\x01x\x05ab");
        let mut r = Reader::new(&frame);
        assert_eq!(r.read_ascii_str(), Some(1..4));
        assert_eq!(r.read_ascii_str(), Some(6..8));
        let at = r.position();
        assert_eq!(r.read_ascii_str(), None, "non-ASCII");
        assert_eq!(r.position(), at, "nothing consumed");
        assert_eq!(r.read_string().unwrap(), "\u{e9}");
        assert_eq!(r.read_ascii_str(), None, "long form");
        r.skip_value().unwrap();
        assert_eq!(r.read_ascii_str(), None, "truncated");
        assert_eq!(r.position(), frame.len() - 3);
        r.rewind_to(0);
        assert!(r.skip_code(0x03));
        assert!(!r.skip_code(0x03));
    }

    #[test]
    fn skips_compact_numbers() {
        assert_eq!(skip_all(b"\x90").unwrap(), 1);
        assert_eq!(skip_all(b"\xc8\x30").unwrap(), 2);
        assert_eq!(skip_all(b"\xd4\x00\x01").unwrap(), 3);
        assert_eq!(skip_all(b"I\0\0\0\x01").unwrap(), 5);
        assert_eq!(skip_all(b"\x3c\x00\x01").unwrap(), 3);
        assert_eq!(skip_all(b"Y\0\0\0\x01").unwrap(), 5);
        assert_eq!(skip_all(b"L\0\0\0\0\0\0\0\x01").unwrap(), 9);
        assert_eq!(skip_all(b"\x5f\0\0\0\x01").unwrap(), 5);
        assert_eq!(skip_all(b"\x4b\0\0\0\x01").unwrap(), 5);
    }

    #[test]
    fn reads_spec_examples() {
        // Examples from the Hessian 2.0 serialization spec.
        for (wire, v) in [
            (&b"\x80"[..], -16),
            (b"\xbf", 47),
            (b"\xc0\x00", -2048),
            (b"\xc7\x00", -256),
            (b"\xcf\xff", 2047),
            (b"\xd0\x00\x00", -262_144),
        ] {
            let b = Bytes::copy_from_slice(wire);
            assert_eq!(Reader::new(&b).read_int().unwrap(), v);
        }
        let b = Bytes::from_static(b"\xd7\xff\xff");
        assert_eq!(Reader::new(&b).read_int().unwrap(), 262_143);
        let b = Bytes::from_static(b"\x5e\x80\x00");
        assert_eq!(Reader::new(&b).read_double().unwrap(), -32768.0);
        let b = Bytes::from_static(b"\x5f\x00\x00\x2f\xda");
        assert_eq!(Reader::new(&b).read_double().unwrap(), 12.25);
        let b = Bytes::from_static(b"\x4b\x00\xe3\x83\x8f");
        assert_eq!(Reader::new(&b).read_date().unwrap(), 894_621_060_000);
    }

    #[test]
    fn single_chunk_ascii_string_is_zero_copy() {
        let b = Bytes::from_static(b"\x05hello");
        let s = Reader::new(&b).read_string().unwrap();
        assert_eq!(&*s, "hello");
        assert_eq!(s.as_bytes().as_ptr(), b[1..].as_ptr());
    }

    #[test]
    fn supplementary_character_counts_two_units_in_both_encodings() {
        // U+1F600 as 4-byte UTF-8 (2 units) and as a CESU-8 surrogate pair.
        let std = Bytes::from_static(b"\x03a\xf0\x9f\x98\x80");
        assert_eq!(&*Reader::new(&std).read_string().unwrap(), "a\u{1F600}");
        let cesu = Bytes::from_static(b"\x03a\xed\xa0\xbd\xed\xb8\x80");
        assert_eq!(&*Reader::new(&cesu).read_string().unwrap(), "a\u{1F600}");
    }

    #[test]
    fn chunked_string_is_joined() {
        let b = Bytes::from_static(b"R\x00\x03abcS\x00\x02de");
        let mut r = Reader::new(&b);
        assert_eq!(&*r.read_string().unwrap(), "abcde");
        assert!(r.is_at_end());
    }

    #[test]
    fn object_needs_its_class_definition() {
        let b = Bytes::from_static(b"\x60\x90");
        assert!(matches!(
            Reader::new(&b).skip_value(),
            Err(HessianError::UnknownClass { index: 0, .. })
        ));
        let b = Bytes::from_static(b"C\x04Pair\x92\x01a\x01b\x60\x90\x91");
        let mut r = Reader::new(&b);
        r.skip_value().unwrap();
        assert!(r.is_at_end());
    }

    #[test]
    fn depth_limit_is_enforced() {
        let mut v = vec![0x79u8; 100];
        v.push(b'N');
        let b = Bytes::from(v);
        assert_eq!(
            Reader::new(&b).skip_value(),
            Err(HessianError::TooDeep(DEFAULT_MAX_DEPTH))
        );
    }

    #[test]
    fn truncated_values_error() {
        for s in [
            &b"S\x00\x05abc"[..],
            b"I\0\0",
            b"H\x01a",
            b"R\x00\x01a",
            b"A\x00\x01x",
        ] {
            let b = Bytes::copy_from_slice(s);
            assert!(matches!(
                Reader::new(&b).skip_value(),
                Err(HessianError::UnexpectedEnd { .. } | HessianError::UnexpectedCode { .. })
            ));
        }
    }

    #[test]
    fn string_map_reads_strings_and_skips_others() {
        let b = Bytes::from_static(b"H\x01a\x01b\x01n\x91\x91\x01c\x02ee\x01fZ");
        let mut got = Vec::new();
        Reader::new(&b)
            .read_string_map(|k, v| got.push((k.to_string(), v.to_string())))
            .unwrap();
        assert_eq!(
            got,
            [("a", "b"), ("ee", "f")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
