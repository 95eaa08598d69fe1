//! The 16-byte Dubbo header, its flags, and the protocol's status and response-type
//! codes.

/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// The magic number, bytes 0-1.
pub const MAGIC: [u8; 2] = [0xda, 0xbb];
/// Flag: the frame is a request.
pub const FLAG_REQUEST: u8 = 0x80;
/// Flag: the request expects a response.
pub const FLAG_TWO_WAY: u8 = 0x40;
/// Flag: the frame is an event (heartbeat, read-only notice).
pub const FLAG_EVENT: u8 = 0x20;
/// Mask of the serialization id in the flag byte.
pub const SERIALIZATION_MASK: u8 = 0x1f;
/// Serialization id of hessian2, the only one supported.
pub const HESSIAN2: u8 = 2;

/// Response status codes (header byte 3).
pub mod status {
    /// 20: OK.
    pub const OK: u8 = 20;
    /// 30: client-side timeout.
    pub const CLIENT_TIMEOUT: u8 = 30;
    /// 31: server-side timeout.
    pub const SERVER_TIMEOUT: u8 = 31;
    /// 40: bad request.
    pub const BAD_REQUEST: u8 = 40;
    /// 50: bad response.
    pub const BAD_RESPONSE: u8 = 50;
    /// 60: service not found.
    pub const SERVICE_NOT_FOUND: u8 = 60;
    /// 70: service error.
    pub const SERVICE_ERROR: u8 = 70;
    /// 80: server error.
    pub const SERVER_ERROR: u8 = 80;
    /// 90: client error.
    pub const CLIENT_ERROR: u8 = 90;
    /// 100: server thread pool exhausted.
    pub const SERVER_THREADPOOL_EXHAUSTED_ERROR: u8 = 100;
}

/// Response types (first value of an OK response body).
pub mod response_type {
    /// 0: an exception follows.
    pub const EXCEPTION: i32 = 0;
    /// 1: a value follows.
    pub const VALUE: i32 = 1;
    /// 2: null result, nothing follows.
    pub const NULL: i32 = 2;
    /// 3: an exception, then attachments.
    pub const EXCEPTION_WITH_ATTACHMENTS: i32 = 3;
    /// 4: a value, then attachments.
    pub const VALUE_WITH_ATTACHMENTS: i32 = 4;
    /// 5: null result, then attachments.
    pub const NULL_WITH_ATTACHMENTS: i32 = 5;

    /// Whether responses of type `t` carry an attachments map.
    pub fn has_attachments(t: i32) -> bool {
        matches!(t, 3..=5)
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The flag byte.
    pub flags: u8,
    /// The status byte (responses).
    pub status: u8,
    /// The request id.
    pub id: u64,
    /// The announced body length (may be negative on a bad frame).
    pub body_len: i32,
}

impl Header {
    /// Parses the first 16 bytes of `buf` (no magic check); `None` when shorter.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[4..12]);
        Some(Header {
            flags: h[2],
            status: h[3],
            id: u64::from_be_bytes(id),
            body_len: i32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// Whether the frame is a request.
    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }

    /// Whether the two-way flag is set.
    pub fn is_two_way(&self) -> bool {
        self.flags & FLAG_TWO_WAY != 0
    }

    /// Whether the event flag is set.
    pub fn is_event(&self) -> bool {
        self.flags & FLAG_EVENT != 0
    }

    /// The serialization id.
    pub fn serialization(&self) -> u8 {
        self.flags & SERIALIZATION_MASK
    }

    /// Writes a header with these fields.
    pub fn write(&self, dst: &mut bytes::BytesMut) {
        use bytes::BufMut;
        dst.put_slice(&MAGIC);
        dst.put_u8(self.flags);
        dst.put_u8(self.status);
        dst.put_u64(self.id);
        dst.put_i32(self.body_len);
    }
}

/// A readable name for a serialization id (for error messages).
pub fn serialization_name(id: u8) -> &'static str {
    match id {
        2 => "hessian2",
        3 => "java",
        4 => "compactedjava",
        6 => "fastjson",
        7 => "nativejava",
        8 => "kryo",
        9 => "fst",
        10 => "native-hessian",
        11 => "avro",
        12 => "protostuff",
        16 => "gson",
        21 => "protobuf-json",
        22 => "protobuf",
        25 => "kryo2",
        26 => "fastjson2",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_the_same_header() {
        let h = Header {
            flags: FLAG_REQUEST | FLAG_TWO_WAY | HESSIAN2,
            status: 0,
            id: 0x0102_0304_0506_0708,
            body_len: 300,
        };
        let mut b = bytes::BytesMut::new();
        h.write(&mut b);
        assert_eq!(
            &b[..],
            b"\xda\xbb\xc2\x00\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x01\x2c"
        );
        assert_eq!(Header::parse(&b), Some(h));
        assert!(h.is_request() && h.is_two_way() && !h.is_event());
        assert_eq!(h.serialization(), HESSIAN2);
        assert_eq!(Header::parse(&b[..15]), None);
    }
}
