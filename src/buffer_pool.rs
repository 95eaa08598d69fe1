//! A per-worker pool of I/O buffers (as HAProxy keeps one), so memory returns after a
//! burst.
//!
//! A connection holds a read buffer only while a frame is incomplete, and a write buffer
//! only while bytes wait for the socket; an idle connection holds none. Buffers go back
//! to a free list of the worker thread (at most [`POOL_MAX`] of them, each at most
//! [`POOL_MAX_CAPACITY`] bytes: anything beyond is freed), and the next connection that
//! reads or writes on that worker takes one from there, so steady traffic allocates
//! nothing. Frames split off a pooled buffer keep their bytes alive as usual (`Bytes`
//! share the allocation); the pool only ever holds the unused tail.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a buffer made for the pool; a read asks for at least a quarter of it free.
pub(crate) const BUFFER_SIZE: usize = 32 * 1024;
/// Free buffers kept per worker thread: with [`BUFFER_SIZE`] at most 512 KiB per worker
/// (a connection holds a buffer only while it reads or writes, so few are out at once).
pub(crate) const POOL_MAX: usize = 16;
/// Buffers that grew beyond this (a large frame) are freed instead of kept.
pub(crate) const POOL_MAX_CAPACITY: usize = 2 * BUFFER_SIZE;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Makes sure `buf` has room for a read: an empty buffer without room is swapped for a
/// pooled one (or a new one); a buffer holding part of a frame grows in place.
pub(crate) fn ready_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() >= BUFFER_SIZE / 4 {
        return;
    }
    if buf.is_empty() {
        if let Some(pooled) = FREE.with(|f| f.borrow_mut().pop()) {
            *buf = pooled;
        }
    }
    if buf.capacity() - buf.len() < BUFFER_SIZE / 4 {
        buf.reserve(BUFFER_SIZE);
    }
}

/// Makes sure an empty write buffer has room before a message is encoded into it: a
/// pooled buffer when there is one (the codec grows it as it needs).
pub(crate) fn ready_for_write(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() < BUFFER_SIZE / 4 {
        ready_for_read(buf);
    }
}

/// Gives an empty buffer with an allocation back to the pool (or frees it when the pool
/// is full or the buffer grew large); leaves `buf` without one. Does nothing to a
/// buffer that holds bytes.
pub(crate) fn release(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let buf = std::mem::take(buf);
    if buf.capacity() > POOL_MAX_CAPACITY {
        return;
    }
    FREE.with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < POOL_MAX {
            free.push(buf);
        }
    });
}

/// Buffers in this thread's pool.
#[cfg(test)]
fn pooled() -> usize {
    FREE.with(|f| f.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_without_new_allocations() {
        let mut a = BytesMut::new();
        ready_for_read(&mut a);
        assert!(a.capacity() >= BUFFER_SIZE / 4);
        a.extend_from_slice(b"frame");
        let frame = a.split().freeze();
        let ptr = a.as_ptr();
        release(&mut a);
        assert_eq!(a.capacity(), 0, "the connection keeps nothing");
        assert_eq!(pooled(), 1);
        let mut b = BytesMut::new();
        ready_for_read(&mut b);
        assert_eq!(b.as_ptr(), ptr, "the next read uses the pooled tail");
        assert_eq!(pooled(), 0);
        assert_eq!(&frame[..], b"frame", "frames keep their bytes");
    }

    #[test]
    fn a_partial_frame_keeps_its_buffer_and_the_pool_is_bounded() {
        let mut partial = BytesMut::new();
        ready_for_read(&mut partial);
        partial.extend_from_slice(b"half a fr");
        release(&mut partial);
        assert_eq!(&partial[..], b"half a fr", "bytes are never taken away");

        let mut big = BytesMut::with_capacity(POOL_MAX_CAPACITY + 1);
        release(&mut big);
        assert_eq!(pooled(), 0, "a grown buffer is freed, not kept");

        for _ in 0..POOL_MAX + 10 {
            let mut b = BytesMut::with_capacity(BUFFER_SIZE);
            release(&mut b);
        }
        assert_eq!(pooled(), POOL_MAX);
    }
}
