//! Building and reading kv frames (for clients, backends and tests).

use bytes::{BufMut, Bytes, BytesMut};
use meta_protocol::Message;

use crate::codec::{KvLayout, HEAD_LEN};

/// Appends one frame to `dst`.
pub fn put_frame(
    dst: &mut BytesMut,
    kind: u8,
    status: u8,
    id: u64,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let len = HEAD_LEN - 4
        + headers
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>()
        + body.len();
    dst.reserve(len + 4);
    dst.put_u32(len as u32);
    dst.put_u8(kind);
    dst.put_u8(status);
    dst.put_u64(id);
    dst.put_u16(headers.len() as u16);
    for (k, v) in headers {
        dst.put_u16(k.len() as u16);
        dst.put_slice(k.as_bytes());
        dst.put_u16(v.len() as u16);
        dst.put_slice(v.as_bytes());
    }
    dst.put_slice(body);
}

/// A two-way request frame.
pub fn request(id: u64, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    put_frame(&mut b, 0, 0, id, headers, body);
    b.freeze()
}

/// A one-way request frame.
pub fn one_way(id: u64, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    put_frame(&mut b, 1, 0, id, headers, body);
    b.freeze()
}

/// A heartbeat frame.
pub fn heartbeat(id: u64) -> Bytes {
    let mut b = BytesMut::new();
    put_frame(&mut b, 3, 0, id, &[], b"");
    b.freeze()
}

/// A response frame with `status` (0 ok).
pub fn response(id: u64, status: u8, headers: &[(&str, &str)], body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    put_frame(&mut b, 2, status, id, headers, body);
    b.freeze()
}

/// The status byte of a decoded kv message.
pub fn status(msg: &Message) -> u8 {
    msg.frame().get(5).copied().unwrap_or(0)
}

/// The body of a decoded kv message (the bytes after its headers).
pub fn body(msg: &Message) -> &[u8] {
    let end = msg.layout::<KvLayout>().headers_end as usize;
    msg.frame().get(end..).unwrap_or(&[])
}
