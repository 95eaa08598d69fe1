//! Bytes waiting for a socket, in pooled chunks that are never moved.
//!
//! A connection's write buffer collects a whole batch before one write: every answer of a
//! read for a client, or every request its clients sent since an upstream connection's
//! task last ran (up to 256 KiB). One growing `BytesMut` copied everything buffered at
//! each doubling, and a buffer grown past the pool's size was freed after its write, so
//! the next batch grew it again: at 4 KiB messages, pipeline 16, that copying was 40 %
//! of the proxy's instructions. Here a message that does not fit the last chunk starts
//! a new one from the worker's pool ([`crate::buffer_pool`]), and one `writev` sends
//! up to [`MAX_SLICES`] chunks.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

use crate::buffer_pool;

/// Chunks handed to one `writev` (with 32 KiB chunks, 512 KiB: beyond any batch).
pub(crate) const MAX_SLICES: usize = 16;

/// A write buffer made of chunks: full ones waiting, oldest first, and the one being
/// written into. Holds no allocation while empty (its list keeps its few slots).
#[derive(Default)]
pub(crate) struct WriteBuf {
    /// Chunks no longer written into, oldest first.
    full: VecDeque<BytesMut>,
    /// Bytes in `full`.
    full_len: usize,
    /// The chunk messages are encoded into.
    tail: BytesMut,
}

impl WriteBuf {
    /// Bytes waiting.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.full_len + self.tail.len()
    }

    /// Whether nothing waits.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk to encode the next message into, with room for `need` bytes: the
    /// current one when it has that room, else a new one from the pool. What is
    /// buffered already stays where it is; a message larger than a pooled chunk grows
    /// its own.
    #[inline]
    pub(crate) fn tail(&mut self, need: usize) -> &mut BytesMut {
        if self.tail.capacity() - self.tail.len() < need {
            if !self.tail.is_empty() {
                self.seal_tail();
            }
            buffer_pool::ready_for_write(&mut self.tail);
            if self.tail.capacity() - self.tail.len() < need {
                self.tail.reserve(need.max(buffer_pool::BUFFER_SIZE));
            }
        }
        &mut self.tail
    }

    /// Moves the current chunk to the full ones; the next is taken from the pool.
    #[cold]
    fn seal_tail(&mut self) {
        self.full_len += self.tail.len();
        self.full.push_back(std::mem::take(&mut self.tail));
    }

    /// Drops the bytes after the first `len` (a message whose encoding failed). Only
    /// bytes of the current chunk can go, which is all a failed encode wrote.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.tail.truncate(len.saturating_sub(self.full_len));
    }

    /// Drops everything and gives the chunks back to the pool.
    pub(crate) fn clear(&mut self) {
        for mut chunk in self.full.drain(..) {
            chunk.clear();
            buffer_pool::release(&mut chunk);
        }
        self.full_len = 0;
        self.tail.clear();
        buffer_pool::release(&mut self.tail);
    }

    /// One `write` (one `writev` over several chunks) of what waits; written chunks go
    /// back to the pool. Returns the bytes written: 0 when nothing waits or the socket
    /// would block.
    #[inline]
    pub(crate) fn write_to(&mut self, stream: &TcpStream) -> io::Result<usize> {
        if self.full.is_empty() {
            return crate::socket_io::write_once(stream, &mut self.tail);
        }
        self.write_chunks(stream)
    }

    /// [`WriteBuf::write_to`] with full chunks waiting: one `writev`.
    fn write_chunks(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (slot, chunk) in slices
            .iter_mut()
            .zip(self.full.iter().chain(std::iter::once(&self.tail)))
        {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        let written = match stream.try_write_vectored(&slices[..count]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        self.consume(written);
        Ok(written)
    }

    /// Removes the first `n` bytes (written), releasing emptied chunks.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.full.front_mut() else {
                self.tail.advance(n.min(self.tail.len()));
                break;
            };
            if n < front.len() {
                front.advance(n);
                self.full_len -= n;
                return;
            }
            n -= front.len();
            self.full_len -= front.len();
            if let Some(mut chunk) = self.full.pop_front() {
                chunk.clear();
                buffer_pool::release(&mut chunk);
            }
        }
        buffer_pool::release(&mut self.tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Appends `n` messages of `size` bytes (byte `i % 251` of the stream at offset
    /// `i`), as a codec would.
    fn fill(buf: &mut WriteBuf, n: usize, size: usize) {
        for _ in 0..n {
            let at = buf.len();
            let tail = buf.tail(size);
            tail.extend((at..at + size).map(|i| (i % 251) as u8));
        }
    }

    #[test]
    fn messages_that_do_not_fit_start_a_chunk_and_nothing_moves() {
        let mut buf = WriteBuf::default();
        fill(&mut buf, 1, 100);
        let first = buf.tail.as_ptr();
        fill(&mut buf, 20, 4096);
        assert_eq!(buf.len(), 100 + 20 * 4096);
        assert!(buf.full.len() >= 2, "{} full chunks", buf.full.len());
        assert_eq!(buf.full[0].as_ptr(), first, "the first chunk never moved");
        for chunk in &buf.full {
            assert!(
                chunk.capacity() <= buffer_pool::BUFFER_SIZE,
                "no chunk grew"
            );
        }
        // A failed encode is undone in the current chunk only.
        let before = buf.len();
        buf.tail(10).extend_from_slice(b"half a mes");
        buf.truncate(before);
        assert_eq!(buf.len(), before);
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(buf.tail.capacity(), 0, "the chunks went back to the pool");
    }

    #[test]
    fn a_message_larger_than_a_chunk_gets_a_chunk_of_its_own() {
        let mut buf = WriteBuf::default();
        fill(&mut buf, 1, 10);
        fill(&mut buf, 1, 3 * buffer_pool::BUFFER_SIZE);
        assert_eq!(buf.full.len(), 1);
        assert_eq!(buf.tail.len(), 3 * buffer_pool::BUFFER_SIZE);
    }

    #[tokio::test]
    async fn chunks_are_written_in_order_across_partial_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut buf = WriteBuf::default();
        // More than MAX_SLICES chunks and more than the socket takes at once.
        let total = 8 * 1024 * 1024 + 77;
        let mut left = total;
        while left > 0 {
            let n = left.min(3000);
            fill(&mut buf, 1, n);
            left -= n;
        }
        assert!(buf.full.len() > MAX_SLICES);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut writes = 0;
        while !buf.is_empty() {
            client.writable().await.unwrap();
            let before = buf.len();
            let n = buf.write_to(&client).unwrap();
            assert_eq!(buf.len(), before - n);
            writes += usize::from(n > 0);
        }
        assert!(writes > 1, "written in several calls");
        assert!(buf.full.is_empty());
        drop(client);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), total);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
}
