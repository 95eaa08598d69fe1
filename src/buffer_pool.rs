//! A per-worker pool of I/O buffers (as HAProxy keeps one), so memory returns after a
//! burst.
//!
//! A connection holds a read buffer only while a frame is incomplete, and a write buffer
//! only while bytes wait for the socket; an idle connection holds none. Buffers go back
//! to a free list of the worker thread (at most [`POOL_MAX`] of them, each at most
//! [`POOL_MAX_CAPACITY`] bytes: anything beyond is freed), and the next connection that
//! reads or writes on that worker takes one from there, so steady traffic allocates
//! nothing. Frames split off a pooled buffer keep their bytes alive as usual (`Bytes`
//! share the allocation); the pool only ever holds the unused tail. A worker that goes
//! idle empties its pool ([`trim_when_idle`]).

use std::cell::{Cell, RefCell};

use bytes::BytesMut;

/// Size of a buffer made for the pool; a read asks for at least a quarter of it free.
pub(crate) const BUFFER_SIZE: usize = 32 * 1024;
/// Free buffers kept per worker thread: with [`BUFFER_SIZE`] at most 2 MiB per worker,
/// held only while the worker is busy ([`trim_when_idle`]). A connection holds a buffer
/// only while it reads or writes, but with hundreds of pipelined clients that is many
/// at once: with room for 16, 256 clients × 16 in flight allocated and freed a buffer
/// every 17 requests (and the allocator returned their pages, which the next ones
/// faulted in again); with 64, every 70 (both counted under callgrind).
pub(crate) const POOL_MAX: usize = 64;
/// Buffers that grew beyond this (a large frame) are freed instead of kept.
pub(crate) const POOL_MAX_CAPACITY: usize = 2 * BUFFER_SIZE;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// Buffers taken from or given back to this thread's pool, ever (wrapping).
    static TRAFFIC: Cell<u32> = const { Cell::new(0) };
    /// [`TRAFFIC`] when the thread last parked.
    static TRAFFIC_AT_PARK: Cell<u32> = const { Cell::new(0) };
}

/// Frees this thread's pooled buffers when the thread is about to park (a worker's
/// `on_thread_park` hook) after a wake-up in which no buffer was taken or given back:
/// a worker woken only by timers is idle, and the memory a burst left in the pool
/// goes back to the allocator (and, with the `metaproxy` binary's jemalloc settings,
/// to the system within a quarter of a second). A busy worker moves buffers on every
/// wake-up, so its pool stays.
pub(crate) fn trim_when_idle() {
    let traffic = TRAFFIC.with(Cell::get);
    if TRAFFIC_AT_PARK.with(|t| t.replace(traffic)) == traffic {
        FREE.with(|f| {
            if let Ok(mut free) = f.try_borrow_mut() {
                if free.capacity() > 0 {
                    *free = Vec::new();
                }
            }
        });
    }
}

fn count_traffic() {
    TRAFFIC.with(|t| t.set(t.get().wrapping_add(1)));
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
            count_traffic();
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
            count_traffic();
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
    fn an_idle_park_empties_the_pool_and_a_busy_one_keeps_it() {
        let mut a = BytesMut::with_capacity(BUFFER_SIZE);
        release(&mut a);
        trim_when_idle();
        assert_eq!(pooled(), 1, "a buffer moved since the last park: busy");
        let mut b = BytesMut::new();
        ready_for_read(&mut b);
        release(&mut b);
        trim_when_idle();
        assert_eq!(pooled(), 1, "still busy");
        trim_when_idle();
        assert_eq!(
            pooled(),
            0,
            "a wake-up without buffer traffic: idle, emptied"
        );
        let mut c = BytesMut::new();
        ready_for_read(&mut c);
        assert!(c.capacity() >= BUFFER_SIZE / 4, "reads still get a buffer");
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
