//! The Hessian 2 writer: every value type in its most compact form, with chunking for
//! long strings and binaries.

use bytes::{BufMut, BytesMut};

use super::code;
use super::value::Value;

/// Most UTF-16 code units in one string chunk (as Java's Hessian2Output writes).
pub const STRING_CHUNK_UNITS: usize = 0x8000;

/// Most bytes in one binary chunk.
pub const BINARY_CHUNK: usize = 0x8000;

/// The type of a typed list or map: a name, or a reference to an earlier type name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeName<'a> {
    /// A type name such as `java.util.HashMap` or `[int`.
    Name(&'a str),
    /// The index of a type name written earlier in the same body.
    Ref(u32),
}

/// Writes Hessian 2 values into a [`BytesMut`]. Keeps the class definitions it wrote, so
/// one writer per body keeps indexes right (as Java's encoder does).
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut BytesMut,
    classes: Vec<(String, Vec<String>)>,
}

/// UTF-16 length of `s`.
fn utf16_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().map(char::len_utf16).sum()
    }
}

/// Appends `s` as Java and hessian.js write strings: UTF-8, except that a supplementary
/// character is written as its UTF-16 surrogate pair, each half as a 3-byte sequence
/// (CESU-8 / "modified UTF-8"). Both peers reject 4-byte UTF-8 sequences.
fn put_str(buf: &mut BytesMut, s: &str) {
    if !s.as_bytes().iter().any(|&b| b >= 0xf0) {
        buf.put_slice(s.as_bytes());
        return;
    }
    let mut units = [0u16; 2];
    for c in s.chars() {
        if c.len_utf16() == 1 {
            let mut tmp = [0u8; 4];
            buf.put_slice(c.encode_utf8(&mut tmp).as_bytes());
        } else {
            for u in c.encode_utf16(&mut units).iter() {
                let u = *u;
                buf.put_u8(0xe0 | (u >> 12) as u8);
                buf.put_u8(0x80 | ((u >> 6) & 0x3f) as u8);
                buf.put_u8(0x80 | (u & 0x3f) as u8);
            }
        }
    }
}

impl<'b> Writer<'b> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'b mut BytesMut) -> Self {
        Writer {
            buf,
            classes: Vec::new(),
        }
    }

    /// Appends raw, already-encoded bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.put_slice(bytes);
        self
    }

    /// `N`.
    pub fn write_null(&mut self) -> &mut Self {
        self.buf.put_u8(code::NULL);
        self
    }

    /// `T` or `F`.
    pub fn write_bool(&mut self, v: bool) -> &mut Self {
        self.buf.put_u8(if v { code::TRUE } else { code::FALSE });
        self
    }

    /// An int in its most compact form.
    pub fn write_int(&mut self, v: i32) -> &mut Self {
        match v {
            -16..=47 => self.buf.put_u8((0x90 + v) as u8),
            -2048..=2047 => {
                self.buf.put_u8((0xc8 + (v >> 8)) as u8);
                self.buf.put_u8(v as u8);
            }
            -262_144..=262_143 => {
                self.buf.put_u8((0xd4 + (v >> 16)) as u8);
                self.buf.put_u16(v as u16);
            }
            _ => {
                self.buf.put_u8(code::INT);
                self.buf.put_i32(v);
            }
        }
        self
    }

    /// A long in its most compact form.
    pub fn write_long(&mut self, v: i64) -> &mut Self {
        match v {
            -8..=15 => self.buf.put_u8((0xe0 + v) as u8),
            -2048..=2047 => {
                self.buf.put_u8((0xf8 + (v >> 8)) as u8);
                self.buf.put_u8(v as u8);
            }
            -262_144..=262_143 => {
                self.buf.put_u8((0x3c + (v >> 16)) as u8);
                self.buf.put_u16(v as u16);
            }
            _ if i32::try_from(v).is_ok() => {
                self.buf.put_u8(code::LONG_INT);
                self.buf.put_i32(v as i32);
            }
            _ => {
                self.buf.put_u8(code::LONG);
                self.buf.put_i64(v);
            }
        }
        self
    }

    /// A double in its most compact exact form (`-0.0` and NaN keep their bits).
    pub fn write_double(&mut self, v: f64) -> &mut Self {
        if v.to_bits() == 0.0f64.to_bits() {
            self.buf.put_u8(code::DOUBLE_ZERO);
        } else if v == 1.0 {
            self.buf.put_u8(code::DOUBLE_ONE);
        } else if v.fract() == 0.0 && (-128.0..=127.0).contains(&v) {
            self.buf.put_u8(code::DOUBLE_BYTE);
            self.buf.put_i8(v as i8);
        } else if v.fract() == 0.0 && (-32768.0..=32767.0).contains(&v) {
            self.buf.put_u8(code::DOUBLE_SHORT);
            self.buf.put_i16(v as i16);
        } else {
            let mills = v * 1000.0;
            if mills.is_finite()
                && mills.fract() == 0.0
                && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&mills)
                && 0.001 * f64::from(mills as i32) == v
            {
                self.buf.put_u8(code::DOUBLE_MILLS);
                self.buf.put_i32(mills as i32);
            } else {
                self.buf.put_u8(code::DOUBLE);
                self.buf.put_f64(v);
            }
        }
        self
    }

    /// A date (milliseconds since the epoch); whole minutes use the 4-byte form.
    pub fn write_date(&mut self, millis: i64) -> &mut Self {
        let minutes = millis / 60_000;
        if millis % 60_000 == 0 && i32::try_from(minutes).is_ok() {
            self.buf.put_u8(code::DATE_MINUTES);
            self.buf.put_i32(minutes as i32);
        } else {
            self.buf.put_u8(code::DATE_MILLIS);
            self.buf.put_i64(millis);
        }
        self
    }

    fn string_chunk_header(&mut self, units: usize, last: bool) {
        if !last {
            self.buf.put_u8(code::STRING_CHUNK);
            self.buf.put_u16(units as u16);
        } else if units <= 0x1f {
            self.buf.put_u8(units as u8);
        } else if units <= 0x3ff {
            self.buf.put_u8(0x30 + (units >> 8) as u8);
            self.buf.put_u8(units as u8);
        } else {
            self.buf.put_u8(code::STRING_FINAL);
            self.buf.put_u16(units as u16);
        }
    }

    /// A string, in chunks of at most [`STRING_CHUNK_UNITS`] UTF-16 units (never
    /// splitting a surrogate pair). Supplementary characters are written as surrogate
    /// pairs of 3-byte sequences, as Java's and hessian.js's readers require.
    pub fn write_string(&mut self, s: &str) -> &mut Self {
        let total = utf16_len(s);
        if total <= STRING_CHUNK_UNITS {
            self.string_chunk_header(total, true);
            put_str(self.buf, s);
            return self;
        }
        let mut rest = s;
        let mut left = total;
        while left > STRING_CHUNK_UNITS {
            let mut units = 0;
            let mut bytes = 0;
            for c in rest.chars() {
                let u = c.len_utf16();
                if units + u > STRING_CHUNK_UNITS {
                    break;
                }
                units += u;
                bytes += c.len_utf8();
            }
            self.string_chunk_header(units, false);
            put_str(self.buf, &rest[..bytes]);
            rest = &rest[bytes..];
            left -= units;
        }
        self.string_chunk_header(left, true);
        put_str(self.buf, rest);
        self
    }

    /// A string or null.
    pub fn write_nullable_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.write_string(s),
            None => self.write_null(),
        }
    }

    /// Binary data, in chunks of at most [`BINARY_CHUNK`] bytes.
    pub fn write_binary(&mut self, data: &[u8]) -> &mut Self {
        let mut rest = data;
        while rest.len() > BINARY_CHUNK {
            self.buf.put_u8(code::BINARY_CHUNK);
            self.buf.put_u16(BINARY_CHUNK as u16);
            self.buf.put_slice(&rest[..BINARY_CHUNK]);
            rest = &rest[BINARY_CHUNK..];
        }
        self.binary_header(rest.len());
        self.buf.put_slice(rest);
        self
    }

    /// The header of a final binary chunk of `len` bytes (`len` at most 65535); the
    /// caller appends the bytes. Lets a caller fill large payloads without a copy.
    pub fn binary_header(&mut self, len: usize) -> &mut Self {
        if len <= 0x0f {
            self.buf.put_u8(0x20 + len as u8);
        } else if len <= 0x3ff {
            self.buf.put_u8(0x34 + (len >> 8) as u8);
            self.buf.put_u8(len as u8);
        } else {
            self.buf.put_u8(code::BINARY_FINAL);
            self.buf.put_u16(len as u16);
        }
        self
    }

    fn write_type(&mut self, ty: TypeName<'_>) {
        match ty {
            TypeName::Name(n) => {
                self.write_string(n);
            }
            TypeName::Ref(i) => {
                self.write_int(i as i32);
            }
        }
    }

    /// Starts a list. With `len`, a fixed-length list (compact form up to 7 elements)
    /// whose `len` values follow; without, a variable-length list to close with
    /// [`Writer::write_end`].
    pub fn write_list_start(&mut self, len: Option<usize>, ty: Option<TypeName<'_>>) -> &mut Self {
        match (len, ty) {
            (Some(n), Some(t)) if n <= 7 => {
                self.buf.put_u8(0x70 + n as u8);
                self.write_type(t);
            }
            (Some(n), None) if n <= 7 => self.buf.put_u8(0x78 + n as u8),
            (Some(n), Some(t)) => {
                self.buf.put_u8(code::LIST_TYPED_FIXED);
                self.write_type(t);
                self.write_int(n as i32);
            }
            (Some(n), None) => {
                self.buf.put_u8(code::LIST_UNTYPED_FIXED);
                self.write_int(n as i32);
            }
            (None, Some(t)) => {
                self.buf.put_u8(code::LIST_TYPED_VAR);
                self.write_type(t);
            }
            (None, None) => self.buf.put_u8(code::LIST_UNTYPED_VAR),
        }
        self
    }

    /// Starts a map (`M` typed or `H` untyped); write keys and values, then
    /// [`Writer::write_end`].
    pub fn write_map_start(&mut self, ty: Option<TypeName<'_>>) -> &mut Self {
        match ty {
            Some(t) => {
                self.buf.put_u8(code::MAP_TYPED);
                self.write_type(t);
            }
            None => self.buf.put_u8(code::MAP_UNTYPED),
        }
        self
    }

    /// `Z`: ends a map or a variable-length list.
    pub fn write_end(&mut self) -> &mut Self {
        self.buf.put_u8(code::END);
        self
    }

    /// An untyped map of strings.
    pub fn write_string_map<'s>(
        &mut self,
        entries: impl IntoIterator<Item = (&'s str, &'s str)>,
    ) -> &mut Self {
        self.write_map_start(None);
        for (k, v) in entries {
            self.write_string(k);
            self.write_string(v);
        }
        self.write_end()
    }

    /// A class definition; returns its index for [`Writer::write_object_start`].
    pub fn write_class_def(&mut self, name: &str, fields: &[&str]) -> u32 {
        self.buf.put_u8(code::CLASS_DEF);
        self.write_string(name);
        self.write_int(fields.len() as i32);
        for f in fields {
            self.write_string(f);
        }
        self.classes.push((
            name.to_owned(),
            fields.iter().map(|f| (*f).to_owned()).collect(),
        ));
        (self.classes.len() - 1) as u32
    }

    /// Starts an object of class definition `index`; one value per field follows.
    pub fn write_object_start(&mut self, index: u32) -> &mut Self {
        if index <= 0x0f {
            self.buf.put_u8(0x60 + index as u8);
        } else {
            self.buf.put_u8(code::OBJECT);
            self.write_int(index as i32);
        }
        self
    }

    /// `Q`: a reference to the `index`-th list, map or object of the body.
    pub fn write_ref(&mut self, index: u32) -> &mut Self {
        self.buf.put_u8(code::REF);
        self.write_int(index as i32)
    }

    /// Writes any [`Value`], defining classes the first time they are used.
    pub fn write_value(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Null => self.write_null(),
            Value::Bool(b) => self.write_bool(*b),
            Value::Int(i) => self.write_int(*i),
            Value::Long(l) => self.write_long(*l),
            Value::Double(d) => self.write_double(*d),
            Value::Date(d) => self.write_date(*d),
            Value::String(s) => self.write_string(s),
            Value::Binary(b) => self.write_binary(b),
            Value::List { ty, items } => {
                self.write_list_start(None, ty.as_deref().map(TypeName::Name));
                for i in items {
                    self.write_value(i);
                }
                self.write_end()
            }
            Value::FixedList { ty, items } => {
                self.write_list_start(Some(items.len()), ty.as_deref().map(TypeName::Name));
                for i in items {
                    self.write_value(i);
                }
                self
            }
            Value::Map { ty, entries } => {
                self.write_map_start(ty.as_deref().map(TypeName::Name));
                for (k, v) in entries {
                    self.write_value(k);
                    self.write_value(v);
                }
                self.write_end()
            }
            Value::Object { class, fields } => {
                let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                let found = self.classes.iter().position(|(c, f)| {
                    c == class
                        && f.len() == names.len()
                        && f.iter().zip(&names).all(|(a, b)| a == b)
                });
                let index = match found {
                    Some(i) => i as u32,
                    None => self.write_class_def(class, &names),
                };
                self.write_object_start(index);
                for (_, v) in fields {
                    self.write_value(v);
                }
                self
            }
            Value::Ref(i) => self.write_ref(*i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Reader;
    use super::*;
    use bytes::Bytes;

    fn written(f: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
        let mut b = BytesMut::new();
        f(&mut Writer::new(&mut b));
        b.to_vec()
    }

    #[test]
    fn compact_forms_match_the_spec() {
        // Examples from the Hessian 2.0 serialization specification.
        assert_eq!(
            written(|w| {
                w.write_int(0);
            }),
            [0x90]
        );
        assert_eq!(
            written(|w| {
                w.write_int(-16);
            }),
            [0x80]
        );
        assert_eq!(
            written(|w| {
                w.write_int(-2048);
            }),
            [0xc0, 0x00]
        );
        assert_eq!(
            written(|w| {
                w.write_int(262_143);
            }),
            [0xd7, 0xff, 0xff]
        );
        assert_eq!(
            written(|w| {
                w.write_long(15);
            }),
            [0xef]
        );
        assert_eq!(
            written(|w| {
                w.write_long(-2048);
            }),
            [0xf0, 0x00]
        );
        assert_eq!(
            written(|w| {
                w.write_long(262_143);
            }),
            [0x3f, 0xff, 0xff]
        );
        assert_eq!(
            written(|w| {
                w.write_long(300_000);
            }),
            [b'Y', 0, 4, 0x93, 0xe0]
        );
        assert_eq!(
            written(|w| {
                w.write_double(12.25);
            }),
            [0x5f, 0x00, 0x00, 0x2f, 0xda]
        );
        assert_eq!(
            written(|w| {
                w.write_double(-128.0);
            }),
            [0x5d, 0x80]
        );
        assert_eq!(
            written(|w| {
                w.write_string("hello");
            }),
            b"\x05hello"
        );
        assert_eq!(
            written(|w| {
                w.write_date(894_621_060_000);
            }),
            [0x4b, 0x00, 0xe3, 0x83, 0x8f]
        );
    }

    #[test]
    fn supplementary_characters_are_written_as_surrogate_pairs() {
        assert_eq!(
            written(|w| {
                w.write_string("a\u{1F600}");
            }),
            b"\x03a\xed\xa0\xbd\xed\xb8\x80"
        );
        assert_eq!(
            written(|w| {
                w.write_string("\u{4E2D}");
            }),
            "\x01\u{4E2D}".as_bytes()
        );
    }

    #[test]
    fn long_strings_are_chunked_without_splitting_pairs() {
        // 32767 ASCII units then an emoji: the pair does not fit the first chunk.
        let s = format!("{}\u{1F600}tail", "a".repeat(STRING_CHUNK_UNITS - 1));
        let bytes = Bytes::from(written(|w| {
            w.write_string(&s);
        }));
        assert_eq!(bytes[0], code::STRING_CHUNK);
        assert_eq!(
            u16::from_be_bytes([bytes[1], bytes[2]]) as usize,
            STRING_CHUNK_UNITS - 1
        );
        let mut r = Reader::new(&bytes);
        assert_eq!(&*r.read_string().unwrap(), s);
        assert!(r.is_at_end());
    }

    #[test]
    fn objects_reuse_their_class_definition() {
        let obj = Value::Object {
            class: "com.example.Pair".into(),
            fields: vec![("a".into(), Value::Int(1)), ("b".into(), Value::Null)],
        };
        let bytes = Bytes::from(written(|w| {
            w.write_value(&obj).write_value(&obj);
        }));
        assert_eq!(bytes.iter().filter(|&&b| b == code::CLASS_DEF).count(), 1);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.read_value().unwrap(), obj);
        assert_eq!(r.read_value().unwrap(), obj);
        assert!(r.is_at_end());
    }
}
