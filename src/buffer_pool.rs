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
//! freed. So steady traffic allocates nothing, as long as the tails' frames go within a
//! turn or two. With hundreds of clients each with many requests in flight, frames live
//! longer, tails overflow that list and a new buffer is made now and then (one per 180
//! to 1,200 requests at 256 clients × 16 in flight, under callgrind).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// How long a worker must have moved no buffer before a park empties its pool: long
/// enough that the timer wake-ups falling between the requests of a slow client (or of
/// a proxy slowed fifty times under callgrind) never empty it, short enough that a
/// worker's memory returns within about a second of its last request (its upstream
/// connections wake it at least once a second).
const IDLE_AFTER: Duration = Duration::from_millis(100);

/// A worker thread's buffers.
struct Pool {
    /// Empty buffers with at least [`MIN_ROOM`] free, the last given back on top.
    free: Vec<BytesMut>,
    /// Empty tails with less room, oldest first, whose allocations are taken back once
    /// the frames cut from them are gone.
    spent: VecDeque<BytesMut>,
    /// Buffers taken from or given back to the pool, ever (wrapping).
    traffic: u32,
    /// [`Pool::traffic`] when the thread last parked.
    traffic_at_park: u32,
    /// When the thread last parked after moving a buffer.
    busy_at: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            free: Vec::new(),
            spent: VecDeque::new(),
            traffic: 0,
            traffic_at_park: 0,
            busy_at: None,
        })
    };
}

/// Frees this thread's pooled buffers when the thread is about to park (a worker's
/// `on_thread_park` hook) and has moved no buffer for [`IDLE_AFTER`]: the memory a
/// burst left in the pool goes back to the allocator (and, with the `metaproxy`
/// binary's jemalloc settings, to the system within a quarter of a second). A busy
/// worker moves buffers between any two parks that far apart, so its pool stays. Costs
/// one reading of the monotonic clock per park (no system call: the C library reads it
/// from the vDSO).
pub(crate) fn trim_when_idle() {
    trim_if_idle_at(Instant::now());
}

/// [`trim_when_idle`] at the time `now`.
fn trim_if_idle_at(now: Instant) {
    POOL.with(|p| {
        let Ok(mut pool) = p.try_borrow_mut() else {
            return;
        };
        if pool.traffic != pool.traffic_at_park {
            pool.traffic_at_park = pool.traffic;
            pool.busy_at = Some(now);
        } else if pool
            .busy_at
            .is_none_or(|busy| now.saturating_duration_since(busy) >= IDLE_AFTER)
            && (pool.free.capacity() > 0 || pool.spent.capacity() > 0)
        {
            pool.free = Vec::new();
            pool.spent = VecDeque::new();
        }
    });
}

/// Makes sure a connection's read buffer has room for a read of at least a quarter of
/// [`BUFFER_SIZE`]: takes a buffer from the pool when the connection holds none (or only
/// a spent tail), keeping any partial frame. Never loses bytes.
#[inline]
pub(crate) fn ready_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_ROOM {
        refill(buf);
    }
}

/// Gives an empty connection buffer (holding nothing) one from the pool. The common case
/// of every read and every encode into an idle connection, so kept short.
fn take_into(buf: &mut BytesMut) {
    *buf = POOL.with(|p| match p.try_borrow_mut() {
        Ok(mut pool) => {
            pool.traffic = pool.traffic.wrapping_add(1);
            match pool.free.pop() {
                Some(fresh) => fresh,
                None => pool.take_spent_or_new(),
            }
        }
        Err(_) => BytesMut::with_capacity(BUFFER_SIZE),
    });
}

/// Makes room in a buffer that has run short: one from the pool when it holds none
/// (the short, common path), else [`refill_spent`].
#[inline]
fn refill(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        take_into(buf);
    } else {
        refill_spent(buf);
    }
}

/// Makes room in a buffer with an allocation that has run short: reclaims the
/// allocation in place, or moves its partial frame into a buffer from the pool and
/// sets the spent tail aside.
fn refill_spent(buf: &mut BytesMut) {
    let len = buf.len();
    if len > BUFFER_SIZE - MIN_ROOM {
        // A partial frame too large for a fresh buffer's room: grow its own buffer.
        buf.reserve(BUFFER_SIZE);
        return;
    }
    if buf.try_reclaim(BUFFER_SIZE - len) {
        return;
    }
    let mut spent = std::mem::take(buf);
    take_into(buf);
    if len > 0 {
        buf.extend_from_slice(&spent);
        spent.clear();
        if buf.capacity() - buf.len() < MIN_ROOM {
            // A small pooled buffer: grow it rather than read into too little room.
            buf.reserve(MIN_ROOM);
        }
    }
    give_back(&mut spent);
}

/// Makes sure a connection's write buffer has room to encode into: takes one from the
/// pool when it holds nothing to write and too little room.
#[inline]
pub(crate) fn ready_for_write(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() < MIN_ROOM {
        refill(buf);
    }
}

/// Gives a connection's buffer back to the pool once it holds no bytes (its frames
/// were split off, or its bytes written), leaving the connection holding nothing.
#[inline]
pub(crate) fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        give_back(buf);
    }
}

/// Moves an empty buffer into the pool (or frees it: grown too large, or the pool
/// full), leaving `buf` holding nothing.
fn give_back(buf: &mut BytesMut) {
    let cap = buf.capacity();
    if cap > 0 && cap <= POOL_MAX_CAPACITY {
        POOL.with(|p| {
            if let Ok(mut pool) = p.try_borrow_mut() {
                pool.traffic = pool.traffic.wrapping_add(1);
                if cap >= MIN_ROOM {
                    if pool.free.len() < POOL_MAX {
                        pool.free.push(std::mem::take(buf));
                    }
                } else {
                    if pool.spent.len() >= SPENT_MAX {
                        pool.spent.pop_front();
                    }
                    pool.spent.push_back(std::mem::take(buf));
                }
            }
        });
    }
    if buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

impl Pool {
    /// A buffer when the free list is empty: the oldest spent tail whose frames are all
    /// gone (up to [`RECLAIM_TRIES`] looked at; one still in use goes to the back), or a
    /// new one.
    #[cold]
    fn take_spent_or_new(&mut self) -> BytesMut {
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
        let t0 = Instant::now();
        let mut a = BytesMut::with_capacity(BUFFER_SIZE);
        release(&mut a);
        trim_if_idle_at(t0);
        assert_eq!(pooled(), 1, "a buffer moved since the last park: busy");
        trim_if_idle_at(t0 + IDLE_AFTER / 2);
        assert_eq!(
            pooled(),
            1,
            "a timer wake-up between two requests of a slow client: still busy"
        );
        let mut b = BytesMut::new();
        ready_for_read(&mut b);
        release(&mut b);
        trim_if_idle_at(t0 + IDLE_AFTER * 2);
        assert_eq!(pooled(), 1, "moved a buffer again: busy");
        trim_if_idle_at(t0 + IDLE_AFTER * 3 - Duration::from_millis(1));
        assert_eq!(pooled(), 1, "not idle for long enough yet");
        trim_if_idle_at(t0 + IDLE_AFTER * 3);
        assert_eq!(pooled(), 0, "no buffer moved for IDLE_AFTER: emptied");
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
        let t0 = Instant::now();
        trim_if_idle_at(t0);
        trim_if_idle_at(t0 + IDLE_AFTER);
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
