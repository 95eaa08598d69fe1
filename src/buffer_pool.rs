//! A per-worker pool of I/O buffers (as HAProxy keeps one), so memory returns after a
//! burst.
//!
//! A connection holds a read buffer only while a frame is incomplete, and a write buffer
//! only while bytes wait for the socket; an idle connection holds none. Buffers go back
//! to a free list of the worker thread (at most [`POOL_MAX`] of them, each at most
//! [`POOL_MAX_CAPACITY`] bytes: anything beyond is freed), and the next connection that
//! reads or writes on that worker takes one from there. Frames split off a pooled
//! buffer keep their bytes alive as usual (`Bytes` share the allocation); the pool only
//! ever holds the unused tail. A worker that goes idle empties its pool
//! ([`trim_when_idle`]).
//!
//! A tail runs out of room after a few hundred small frames. Its allocation is taken
//! back whole once no frame cut from it is alive any more, which takes a turn or two of
//! the worker (until the requests were written and the replies encoded): such a spent
//! tail waits in a second, short list ([`SPENT_MAX`]) and is reclaimed from there when
//! the free list runs dry, instead of a new buffer being allocated and the old one
//! freed. So steady traffic allocates nothing, however many clients pipeline at once.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use bytes::BytesMut;

/// Size of a buffer made for the pool; a read asks for at least a quarter of it free.
pub(crate) const BUFFER_SIZE: usize = 32 * 1024;
/// Room a read or an encode wants in a buffer: below it, the buffer is refilled.
const MIN_ROOM: usize = BUFFER_SIZE / 4;
/// Free buffers kept per worker thread: with [`BUFFER_SIZE`] at most 2 MiB per worker,
/// held only while the worker is busy ([`trim_when_idle`]). A connection holds a buffer
/// only while it reads or writes, but with hundreds of pipelined clients that is many
/// at once: with room for 16, 256 clients × 16 in flight allocated and freed a buffer
/// every 17 requests (and the allocator returned their pages, which the next ones
/// faulted in again); with 64, every 70 (both counted under callgrind).
pub(crate) const POOL_MAX: usize = 64;
/// Spent tails kept per worker thread until their allocation can be taken back: at most
/// 64 allocations of [`BUFFER_SIZE`] (2 MiB), which frames still in flight hold alive
/// anyway when a tail is set aside; the oldest is dropped (and freed with its last
/// frame) when more come. With 16, 64 clients × 8 in flight still allocated a buffer
/// every few hundred requests: tails were dropped before their frames were gone.
pub(crate) const SPENT_MAX: usize = 64;
/// Spent tails looked at before a new buffer is allocated.
const RECLAIM_TRIES: usize = 4;
/// Buffers that grew beyond this (a large frame) are freed instead of kept.
pub(crate) const POOL_MAX_CAPACITY: usize = 2 * BUFFER_SIZE;

/// A worker thread's buffers.
struct Pool {
    /// Empty buffers with at least [`MIN_ROOM`] free, the last given back on top.
    free: Vec<BytesMut>,
    /// Empty tails with less room, oldest first, whose allocations are taken back once
    /// the frames cut from them are gone.
    spent: VecDeque<BytesMut>,
    /// Buffers taken from or given back to the pool, ever (wrapping).
    traffic: u32,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            free: Vec::new(),
            spent: VecDeque::new(),
            traffic: 0,
        })
    };
    /// [`Pool::traffic`] when the thread last parked.
    static TRAFFIC_AT_PARK: Cell<u32> = const { Cell::new(0) };
}

/// Frees this thread's pooled buffers when the thread is about to park (a worker's
/// `on_thread_park` hook) after a wake-up in which no buffer was taken or given back:
/// a worker woken only by timers is idle, and the memory a burst left in the pool
/// goes back to the allocator (and, with the `metaproxy` binary's jemalloc settings,
/// to the system within a quarter of a second). A busy worker moves buffers on every
/// wake-up, so its pool stays.
pub(crate) fn trim_when_idle() {
    POOL.with(|p| {
        let Ok(mut pool) = p.try_borrow_mut() else {
            return;
        };
        if TRAFFIC_AT_PARK.with(|t| t.replace(pool.traffic)) == pool.traffic
            && (pool.free.capacity() > 0 || pool.spent.capacity() > 0)
        {
            pool.free = Vec::new();
            pool.spent = VecDeque::new();
        }
    });
}

/// Makes sure `buf` has room for a read (at least [`MIN_ROOM`] free). A buffer that ran
/// out of room is taken back in place when no frame cut from it is alive (keeping a
/// partial frame at its start); otherwise its bytes move to a pooled buffer (or, when
/// the pool has none to give, a new one) and the spent tail waits to be reclaimed. A
/// partial frame too large for that grows its buffer instead.
#[inline]
pub(crate) fn ready_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_ROOM {
        refill(buf);
    }
}

fn refill(buf: &mut BytesMut) {
    let len = buf.len();
    if len > BUFFER_SIZE - MIN_ROOM {
        // A large frame: it grows its own buffer, which is freed when given back.
        buf.reserve(BUFFER_SIZE);
        return;
    }
    if buf.capacity() > 0 && buf.try_reclaim(BUFFER_SIZE - len) {
        return;
    }
    let Ok(fresh) = POOL.with(|p| p.try_borrow_mut().map(|mut pool| pool.take())) else {
        buf.reserve(BUFFER_SIZE);
        return;
    };
    let mut spent = std::mem::replace(buf, fresh);
    if len > 0 {
        buf.extend_from_slice(&spent);
        spent.clear();
        if buf.capacity() - buf.len() < MIN_ROOM {
            // A pooled buffer with less room than the partial frame and a read need.
            buf.reserve(MIN_ROOM);
        }
    }
    if spent.capacity() > 0 {
        give_back(spent);
    }
}

/// Makes sure an empty write buffer has room before a message is encoded into it: a
/// pooled buffer when there is one (the codec grows it as it needs).
#[inline]
pub(crate) fn ready_for_write(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() < MIN_ROOM {
        refill(buf);
    }
}

/// Gives an empty buffer with an allocation back to the pool (or frees it when the pool
/// is full or the buffer grew large); leaves `buf` without one. Does nothing to a
/// buffer that holds bytes.
#[inline]
pub(crate) fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        give_back(std::mem::take(buf));
    }
}

fn give_back(buf: BytesMut) {
    if buf.capacity() > POOL_MAX_CAPACITY {
        return;
    }
    POOL.with(|p| {
        if let Ok(mut pool) = p.try_borrow_mut() {
            pool.put(buf);
        }
    });
}

impl Pool {
    /// An empty buffer with at least [`MIN_ROOM`] free: the last one given back, else
    /// a spent tail whose allocation can be taken back whole (of the oldest
    /// [`RECLAIM_TRIES`]), else a new one.
    fn take(&mut self) -> BytesMut {
        self.traffic = self.traffic.wrapping_add(1);
        if let Some(buf) = self.free.pop() {
            return buf;
        }
        // The oldest few, each a reference count read; one still in use goes to the
        // back, so one held long (by a request queued for a slow backend) does not
        // keep the others from being looked at.
        for _ in 0..self.spent.len().min(RECLAIM_TRIES) {
            let Some(mut tail) = self.spent.pop_front() else {
                break;
            };
            if tail.try_reclaim(BUFFER_SIZE) {
                return tail;
            }
            self.spent.push_back(tail);
        }
        BytesMut::with_capacity(BUFFER_SIZE)
    }

    /// Keeps an empty buffer: on the free list when it has room, else with the spent
    /// tails (the oldest dropped past [`SPENT_MAX`]).
    fn put(&mut self, buf: BytesMut) {
        self.traffic = self.traffic.wrapping_add(1);
        if buf.capacity() >= MIN_ROOM {
            if self.free.len() < POOL_MAX {
                self.free.push(buf);
            }
        } else {
            if self.spent.len() >= SPENT_MAX {
                self.spent.pop_front();
            }
            self.spent.push_back(buf);
        }
    }
}

/// Free buffers in this thread's pool.
#[cfg(test)]
fn pooled() -> usize {
    POOL.with(|p| p.borrow().free.len())
}

/// Spent tails in this thread's pool.
#[cfg(test)]
fn spent() -> usize {
    POOL.with(|p| p.borrow().spent.len())
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

    #[test]
    fn a_spent_buffer_is_taken_back_in_place_once_its_frames_are_gone() {
        let mut buf = BytesMut::new();
        ready_for_read(&mut buf);
        let start = buf.as_ptr();
        // Frames fill the buffer until less than a quarter is left.
        let frame = vec![7u8; 1000];
        let mut frames = Vec::new();
        while buf.capacity() >= MIN_ROOM {
            buf.extend_from_slice(&frame);
            frames.push(buf.split().freeze());
        }
        buf.extend_from_slice(b"part");
        drop(frames);
        ready_for_read(&mut buf);
        assert_eq!(buf.as_ptr(), start, "the same allocation, from its start");
        assert_eq!(&buf[..], b"part", "the partial frame is kept");
        assert!(buf.capacity() >= BUFFER_SIZE - 4);
    }

    #[test]
    fn a_spent_tail_waits_for_its_frames_and_is_reclaimed_instead_of_a_new_buffer() {
        // Each test runs on its own thread, so with a pool of its own (empty).
        let mut buf = BytesMut::new();
        ready_for_read(&mut buf);
        let start = buf.as_ptr();
        let mut frames = Vec::new();
        while buf.capacity() >= MIN_ROOM {
            buf.extend_from_slice(&[1u8; 1000]);
            frames.push(buf.split().freeze());
        }
        buf.extend_from_slice(b"partial");
        // A frame is still alive: the partial frame moves to another buffer, and the
        // spent tail is set aside.
        ready_for_read(&mut buf);
        assert_ne!(buf.as_ptr(), start);
        assert_eq!(&buf[..], b"partial");
        assert_eq!(spent(), 1);
        // While its frames live, the next buffer taken is a new one.
        let mut other = BytesMut::new();
        ready_for_read(&mut other);
        assert_ne!(other.as_ptr(), start);
        assert_eq!(spent(), 1);
        // Once they are gone, it is taken back whole rather than a buffer allocated.
        drop(frames);
        let mut third = BytesMut::new();
        ready_for_read(&mut third);
        assert_eq!(third.as_ptr(), start, "the spent allocation, reclaimed");
        assert!(third.capacity() >= BUFFER_SIZE);
        assert_eq!(spent(), 0);
    }

    #[test]
    fn spent_tails_are_bounded_and_freed_with_the_pool_when_idle() {
        let mut keep = Vec::new();
        for _ in 0..SPENT_MAX + 5 {
            let mut b = BytesMut::with_capacity(BUFFER_SIZE);
            b.extend_from_slice(&[0u8; BUFFER_SIZE - 100]);
            keep.push(b.split().freeze());
            release(&mut b);
        }
        assert_eq!(spent(), SPENT_MAX);
        trim_when_idle();
        trim_when_idle();
        assert_eq!((pooled(), spent()), (0, 0));
    }

    #[test]
    fn a_partial_frame_larger_than_a_buffer_grows_its_own() {
        let mut buf = BytesMut::new();
        ready_for_read(&mut buf);
        buf.extend_from_slice(&vec![3u8; BUFFER_SIZE - 10]);
        ready_for_read(&mut buf);
        assert!(buf.capacity() - buf.len() >= MIN_ROOM);
        assert_eq!(buf.len(), BUFFER_SIZE - 10, "nothing lost");
    }

    #[test]
    fn a_moved_partial_frame_still_leaves_room_for_a_read() {
        // A pooled buffer with 10 KiB of room, and a 20 KiB partial frame in a spent
        // buffer whose other frame is alive.
        let mut pooled_buf = BytesMut::with_capacity(12 * 1024);
        pooled_buf.extend_from_slice(&[0u8; 2 * 1024]);
        let _alive = pooled_buf.split().freeze();
        release(&mut pooled_buf);
        assert_eq!(pooled(), 1);
        let mut buf = BytesMut::with_capacity(BUFFER_SIZE);
        buf.extend_from_slice(&vec![1u8; BUFFER_SIZE - 20 * 1024 - 100]);
        let _frame = buf.split().freeze();
        buf.extend_from_slice(&vec![2u8; 20 * 1024]);
        ready_for_read(&mut buf);
        assert_eq!(buf.len(), 20 * 1024, "nothing lost");
        assert!(buf.iter().all(|&b| b == 2));
        assert!(buf.capacity() - buf.len() >= MIN_ROOM);
    }
}
