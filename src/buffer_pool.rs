//! A per-worker pool of I/O buffers (as HAProxy keeps one), so memory returns after a
//! burst.
//!
//! A connection holds a read buffer only while a frame is incomplete, and a write buffer
//! only while bytes wait for the socket; an idle connection holds none. Buffers go back
//! to a free list of the worker thread (at most [`POOL_MAX`] of them, each at most
//! [`POOL_MAX_CAPACITY`] bytes: larger ones, grown for large frames, go to a list of
//! their own, [`LARGE_MAX_BYTES`] in all), and the next connection that
//! reads or writes on that worker takes one from there. Frames split off a pooled
//! buffer keep their bytes alive as usual (`Bytes` share the allocation); the pool only
//! ever holds the unused tail. A worker that goes idle empties its pool
//! ([`trim_when_idle`]).
//!
//! Replies to a client wait in its write buffer until the end of the worker's turn
//! ([`crate::turn_end`]), so with hundreds of clients hundreds of write buffers are
//! held at once, each with a few replies. Those come from a second free list of small
//! buffers ([`SMALL_SIZE`], at most [`SMALL_MAX`] kept) when the client's replies in
//! flight fit one ([`ready_for_reply`]); a client whose replies outgrow it moves them
//! into a full-size buffer. With a full-size buffer per client, 256 clients × 16 in
//! flight needed about 256 of them at the end of a turn and 64 or fewer in between:
//! the free list overflowed and ran dry by turns, and a buffer was allocated (and
//! another freed) every 100 or so requests.
//!
//! A read tail runs out of room after a few hundred small frames. Its allocation is
//! taken back whole once no frame cut from it is alive any more, which takes a turn or
//! two of the worker (until the requests were written and the replies encoded): such a
//! spent tail waits in a third list ([`SPENT_MAX`]) and is reclaimed from there when
//! the free list runs dry, instead of a new buffer being allocated and the old one
//! freed. So steady traffic allocates nothing: the lists grow to what the worker's
//! connections held at once (within their bounds) and stay until the worker is idle.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;

/// Size of a buffer made for the pool; a read asks for at least a quarter of it free.
pub(crate) const BUFFER_SIZE: usize = 32 * 1024;
/// Room a read or an encode wants in a buffer: below it, the buffer is refilled.
const MIN_ROOM: usize = BUFFER_SIZE / 4;
/// Free buffers kept per worker thread: at most 8 MiB per worker at [`BUFFER_SIZE`]
/// (16 MiB if all grew to [`POOL_MAX_CAPACITY`]), held only while the worker is busy
/// ([`trim_when_idle`]), and only as many as its connections held at once. With
/// hundreds of pipelined clients that is many: upstream connections by the dozen each
/// hold a read buffer with a partial frame, and write buffers wait for the end of the
/// turn. Counted under callgrind at 256 clients × 16 in flight: with room for 16, a
/// buffer was allocated and another freed every 17 requests; with 64, every 70 (replies
/// in full-size buffers then); with 256 (and [`SPENT_MAX`] 256), none after warm-up.
pub(crate) const POOL_MAX: usize = 256;
/// Spent tails kept per worker thread until their allocation can be taken back: at most
/// 256 allocations, which frames still in flight hold alive anyway when a tail is set
/// aside; the oldest is dropped (and freed with its last frame) when more come. With
/// 64, Dubbo at 256 clients × 16 in flight dropped tails before their frames were gone
/// and allocated a buffer every 3,000 or so requests; with 256, none after warm-up.
pub(crate) const SPENT_MAX: usize = 256;
/// Size of a small buffer, for a client's replies: 16 replies of 128 bytes fit.
pub(crate) const SMALL_SIZE: usize = 4 * 1024;
/// Small buffers kept per worker thread: at most 1 MiB, held only while the worker is
/// busy ([`trim_when_idle`]); one per client with replies waiting for the end of a turn.
pub(crate) const SMALL_MAX: usize = 256;
/// Room asked for beyond a forwarded frame's own bytes when it is encoded into a write
/// buffer: the headers its route (or a drain) adds.
pub(crate) const MUTATION_ROOM: usize = 128;
/// Spent tails looked at before a new buffer is allocated.
const RECLAIM_TRIES: usize = 4;
/// Buffers looked at, in the free list and then among the spent tails, for one with
/// room for a large message before a new one is allocated.
const ROOM_TRIES: usize = 32;
/// Buffers that grew beyond this (a large frame) are not kept with the others: they go
/// to the list of large buffers ([`LARGE_MAX_BYTES`]), or are freed.
pub(crate) const POOL_MAX_CAPACITY: usize = 2 * BUFFER_SIZE;
/// Large buffers (more than [`POOL_MAX_CAPACITY`], for frames above 64 KiB) kept per
/// worker thread: at most 16 MiB of them in all, each at most [`LARGE_MAX_CAPACITY`],
/// held only while the worker is busy ([`trim_when_idle`]). Without them every frame
/// above 64 KiB allocated four to five times per request (a read buffer grown for it on
/// each side, a write buffer on each side). Measured with 16 clients × 4 in flight
/// (`tests/alloc_hot_path.rs`): with 8 MiB, 0.0055 allocations per request at 100 KiB
/// and 0.33 at 300 KiB; with 16 MiB, 0.0008 and 0.0058.
pub(crate) const LARGE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// The largest buffer kept in the large list: larger ones are freed once written.
pub(crate) const LARGE_MAX_CAPACITY: usize = 1024 * 1024;

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
    /// Empty small buffers ([`SMALL_SIZE`]), the last given back on top.
    small: Vec<BytesMut>,
    /// Empty tails with less room, oldest first, whose allocations are taken back once
    /// the frames cut from them are gone.
    spent: VecDeque<BytesMut>,
    /// Empty large buffers ([`LARGE_MAX_BYTES`] in all), the last given back on top.
    large: Vec<BytesMut>,
    /// Capacity of the buffers in `large`.
    large_bytes: usize,
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
            small: Vec::new(),
            spent: VecDeque::new(),
            large: Vec::new(),
            large_bytes: 0,
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
            && (pool.free.capacity() > 0
                || pool.small.capacity() > 0
                || pool.spent.capacity() > 0
                || pool.large.capacity() > 0)
        {
            pool.free = Vec::new();
            pool.small = Vec::new();
            pool.spent = VecDeque::new();
            pool.large = Vec::new();
            pool.large_bytes = 0;
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
        // A partial frame too large for a fresh buffer's room: its own allocation when
        // nothing else holds it, else a buffer with twice its size (a pooled large one
        // when there is one), so a frame of n bytes is copied about n bytes in all.
        if !buf.try_reclaim(BUFFER_SIZE) {
            move_into_pooled(buf, (2 * len).max(len + BUFFER_SIZE), Origin::Read);
        }
        return;
    }
    if buf.try_reclaim(BUFFER_SIZE - len) {
        return;
    }
    move_into_pooled(buf, len + MIN_ROOM, Origin::Read);
}

/// Moves what `buf` holds into a buffer from the pool with room for `room` bytes in all,
/// and gives its old allocation back (set aside as a spent tail while frames cut from
/// it are alive).
fn move_into_pooled(buf: &mut BytesMut, room: usize, origin: Origin) {
    let mut old = std::mem::take(buf);
    take_with_room(buf, room);
    buf.extend_from_slice(&old);
    old.clear();
    give_back(&mut old, origin);
}

/// Gives an empty connection buffer (holding nothing) one from the pool with room for
/// `room` bytes. A buffer from the free list has a quarter of [`BUFFER_SIZE`] or more,
/// which every small message fits; a larger one is looked for only when that is short.
#[inline]
fn take_with_room(buf: &mut BytesMut, room: usize) {
    take_into(buf);
    if buf.capacity() < room {
        find_room(buf, room);
    }
}

/// Swaps the pooled buffer in `buf`, too small for a large message of `room` bytes,
/// for one that is not: the same allocation taken back whole when nothing else holds
/// it, else one of the [`ROOM_TRIES`] oldest free buffers that has the room or can be
/// taken back whole, else a spent tail taken back whole, else a new one. Without this,
/// the codec grew the buffer (a new allocation) whenever the free list's top was a read
/// tail with less room than the message: with 20 KiB messages, 1.7 to 1.9 allocations
/// per request.
#[cold]
fn find_room(buf: &mut BytesMut, room: usize) {
    if buf.try_reclaim(room) {
        return;
    }
    POOL.with(|p| {
        let Ok(mut pool) = p.try_borrow_mut() else {
            return;
        };
        let pool = &mut *pool;
        // Oldest first: the tails given back last still have their frames in flight.
        for i in 0..pool.free.len().min(ROOM_TRIES) {
            if pool.free[i].capacity() >= room || pool.free[i].try_reclaim(room) {
                std::mem::swap(&mut pool.free[i], buf);
                return;
            }
        }
        if let Some(tail) = pool.reclaim_spent(ROOM_TRIES, room) {
            // The small one goes back where it came from.
            pool.free.push(std::mem::replace(buf, tail));
            return;
        }
        if room > BUFFER_SIZE {
            if let Some(large) = pool.take_large(room) {
                pool.free.push(std::mem::replace(buf, large));
            }
        }
    });
    if buf.capacity() < room {
        let mut small = std::mem::replace(buf, BytesMut::with_capacity(room.max(BUFFER_SIZE)));
        give_back(&mut small, Origin::Read);
    }
}

/// Makes sure a connection's write buffer has `need` bytes of room to encode a message
/// into: takes a buffer from the pool when it holds nothing to write, and moves what it
/// holds into a fresh one when that and the message fit one ([`write_room`]).
///
/// Returns `false` when the buffer holds a batch that the message would take past a
/// pooled buffer's size ([`BUFFER_SIZE`]): the caller writes it to the socket first and
/// asks again, as a proxy writes a full buffer, so that large messages go out a buffer
/// at a time instead of growing it (a new allocation, which the pool frees instead of
/// keeping once it passes [`POOL_MAX_CAPACITY`]). A buffer still that full after the
/// write (the socket took part of it) is left for the codec to grow.
#[inline]
#[must_use]
pub(crate) fn ready_for_write(buf: &mut BytesMut, need: usize) -> bool {
    if buf.capacity() - buf.len() < need {
        return write_room(buf, need, false);
    }
    true
}

/// [`ready_for_write`] for a client connection's reply, when `expected` is about what
/// its replies in flight come to: a small buffer when those fit one ([`SMALL_SIZE`]),
/// else a full-size one.
#[inline]
#[must_use]
pub(crate) fn ready_for_reply(buf: &mut BytesMut, need: usize, expected: usize) -> bool {
    if buf.capacity() - buf.len() < need {
        return write_room(buf, need, need.max(expected) <= SMALL_SIZE);
    }
    true
}

/// Makes room for `need` bytes in a write buffer short of it. An empty one gets a
/// buffer from the pool (`small` or full-size). One holding bytes that, with the
/// message, fit a full-size buffer moves them into one from the pool: a small buffer
/// outgrown, or a pooled read tail with little room. Left as it is, the codec would
/// grow it, which allocates (the tail's allocation is shared with frames still alive).
/// A bigger batch is left as it is, and `false` returned: the caller writes it first.
fn write_room(buf: &mut BytesMut, need: usize, small: bool) -> bool {
    if buf.is_empty() {
        if buf.capacity() > 0 {
            give_back(buf, Origin::Write);
        }
        if small {
            take_small_into(buf);
        } else {
            take_with_room(buf, need);
        }
    } else if buf.len() + need <= BUFFER_SIZE {
        move_into_pooled(buf, buf.len() + need, Origin::Write);
    } else {
        return false;
    }
    true
}

/// Gives an empty connection buffer (holding nothing) a small one from the pool.
fn take_small_into(buf: &mut BytesMut) {
    *buf = POOL
        .with(|p| match p.try_borrow_mut() {
            Ok(mut pool) => {
                pool.traffic = pool.traffic.wrapping_add(1);
                pool.small.pop()
            }
            Err(_) => None,
        })
        .unwrap_or_else(|| BytesMut::with_capacity(SMALL_SIZE));
}

/// Gives a connection's write buffer back to the pool once its bytes are written,
/// leaving the connection holding nothing.
#[inline]
pub(crate) fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        give_back(buf, Origin::Write);
    }
}

/// Gives a connection's read buffer back to the pool once every frame was split off
/// it, leaving the connection holding nothing.
#[inline]
pub(crate) fn release_read(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        give_back(buf, Origin::Read);
    }
}

/// Keeps a write buffer that a partial write left with exactly [`SMALL_SIZE`] of room
/// from passing for a small buffer later (and keeping its whole allocation alive in the
/// small list): moves its unwritten bytes, at most that many, to the front of its
/// allocation, which has its full size again. Any other buffer is left as it is.
#[cold]
pub(crate) fn after_partial_write(buf: &mut BytesMut) {
    if buf.capacity() == SMALL_SIZE {
        // Asks for one byte more than it has: only a larger allocation has it.
        let _ = buf.try_reclaim(SMALL_SIZE + 1 - buf.len());
    }
}

/// What a buffer given back was used for last.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Reads: a buffer with little room left is the tail of a larger allocation, even
    /// one of exactly [`SMALL_SIZE`] (fixed-size frames can leave that), so it never
    /// joins the small list, where it would keep the whole allocation alive.
    Read,
    /// Writes: a buffer of exactly [`SMALL_SIZE`] is one of the small list's.
    Write,
}

/// Moves an empty buffer into the pool (or frees it: grown too large, or the pool
/// full), leaving `buf` holding nothing.
fn give_back(buf: &mut BytesMut, origin: Origin) {
    let cap = buf.capacity();
    if cap > 0 {
        POOL.with(|p| {
            if let Ok(mut pool) = p.try_borrow_mut() {
                pool.traffic = pool.traffic.wrapping_add(1);
                if cap > POOL_MAX_CAPACITY {
                    pool.keep_large(buf);
                } else if cap >= MIN_ROOM {
                    if pool.free.len() < POOL_MAX {
                        pool.free.push(std::mem::take(buf));
                    }
                } else if cap == SMALL_SIZE && origin == Origin::Write {
                    if pool.small.len() < SMALL_MAX {
                        pool.small.push(std::mem::take(buf));
                    }
                } else {
                    pool.set_aside(buf, origin);
                }
            }
        });
    }
    if buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

impl Pool {
    /// Keeps an empty buffer with too little room for a read: a tail whose allocation
    /// is taken back whole when no frame holds it any more (right now, or later from
    /// the spent list), or a small buffer that wrote part of its bytes at a time.
    #[cold]
    fn set_aside(&mut self, buf: &mut BytesMut, origin: Origin) {
        if buf.try_reclaim(BUFFER_SIZE) {
            // Taken back whole: a buffer that grew for a large frame joins the large ones.
            if buf.capacity() > POOL_MAX_CAPACITY {
                self.keep_large(buf);
            } else if self.free.len() < POOL_MAX {
                self.free.push(std::mem::take(buf));
            }
        } else if origin == Origin::Write
            && buf.try_reclaim(SMALL_SIZE)
            && buf.capacity() == SMALL_SIZE
        {
            if self.small.len() < SMALL_MAX {
                self.small.push(std::mem::take(buf));
            }
        } else {
            if self.spent.len() >= SPENT_MAX {
                self.spent.pop_front();
            }
            self.spent.push_back(std::mem::take(buf));
        }
    }

    /// A buffer when the free list is empty: the oldest spent tail whose frames are all
    /// gone (up to [`RECLAIM_TRIES`] looked at), or a new one.
    #[cold]
    fn take_spent_or_new(&mut self) -> BytesMut {
        self.reclaim_spent(RECLAIM_TRIES, BUFFER_SIZE)
            .unwrap_or_else(|| BytesMut::with_capacity(BUFFER_SIZE))
    }

    /// Keeps an empty large buffer while the large list has room for it
    /// ([`LARGE_MAX_BYTES`]); leaves `buf` holding nothing either way.
    fn keep_large(&mut self, buf: &mut BytesMut) {
        let cap = buf.capacity();
        if cap <= LARGE_MAX_CAPACITY && self.large_bytes + cap <= LARGE_MAX_BYTES {
            self.large_bytes += cap;
            self.large.push(std::mem::take(buf));
        } else {
            *buf = BytesMut::new();
        }
    }

    /// A large buffer with room for `room` bytes, newest first: one that has it, or
    /// one whose allocation is taken back whole and then has it.
    fn take_large(&mut self, room: usize) -> Option<BytesMut> {
        for i in (0..self.large.len()).rev() {
            let kept = self.large[i].capacity();
            if kept >= room || self.large[i].try_reclaim(room) {
                self.large_bytes -= kept;
                return Some(self.large.swap_remove(i));
            }
        }
        None
    }

    /// The oldest of the first `tries` spent tails whose frames are all gone, taken back
    /// whole, if its allocation has `room` bytes; one still in use (or too small) goes
    /// to the back.
    fn reclaim_spent(&mut self, tries: usize, room: usize) -> Option<BytesMut> {
        for _ in 0..self.spent.len().min(tries) {
            let mut tail = self.spent.pop_front()?;
            if tail.try_reclaim(BUFFER_SIZE) && tail.capacity() >= room {
                return Some(tail);
            }
            self.spent.push_back(tail);
        }
        None
    }
}

/// Large buffers in this thread's pool.
#[cfg(test)]
fn large() -> usize {
    POOL.with(|p| p.borrow().large.len())
}

/// Free buffers in this thread's pool.
#[cfg(test)]
fn pooled() -> usize {
    POOL.with(|p| p.borrow().free.len())
}

/// Small buffers in this thread's pool.
#[cfg(test)]
fn small() -> usize {
    POOL.with(|p| p.borrow().small.len())
}

/// Spent tails in this thread's pool.
#[cfg(test)]
fn spent() -> usize {
    POOL.with(|p| p.borrow().spent.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn buffers_go_round_without_new_allocations() {
        let mut a = BytesMut::new();
        ready_for_read(&mut a);
        assert!(a.capacity() >= BUFFER_SIZE / 4);
        a.extend_from_slice(b"frame");
        let frame = a.split().freeze();
        let ptr = a.as_ptr();
        release_read(&mut a);
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
        release_read(&mut b);
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
        release_read(&mut partial);
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
            release_read(&mut b);
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
        release_read(&mut pooled_buf);
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

    #[test]
    fn replies_that_fit_a_small_buffer_take_one_and_it_comes_back_whole() {
        let mut wbuf = BytesMut::new();
        // 16 replies of 200 bytes in flight: a small buffer.
        assert!(ready_for_reply(&mut wbuf, 200, 16 * 200));
        assert_eq!(wbuf.capacity(), SMALL_SIZE);
        let ptr = wbuf.as_ptr();
        wbuf.extend_from_slice(&[5u8; 200]);
        assert!(ready_for_reply(&mut wbuf, 200, 15 * 200));
        assert_eq!(wbuf.as_ptr(), ptr, "room left: the same buffer");
        // Written in full (as `socket_io::write_once` does) and released.
        wbuf.clear();
        release(&mut wbuf);
        assert_eq!((small(), pooled()), (1, 0), "back in the small list");
        let mut next = BytesMut::new();
        assert!(ready_for_reply(&mut next, 200, 200));
        assert_eq!(next.as_ptr(), ptr, "the next client reuses it");
        assert_eq!(small(), 0);
    }

    #[test]
    fn many_replies_or_a_large_one_take_a_full_size_buffer() {
        let mut many = BytesMut::new();
        assert!(ready_for_reply(&mut many, 200, 64 * 200));
        assert!(many.capacity() >= BUFFER_SIZE);
        let mut large = BytesMut::new();
        assert!(ready_for_reply(&mut large, 5000, 5000));
        assert!(large.capacity() >= BUFFER_SIZE);
        assert_eq!(small(), 0);
    }

    #[test]
    fn replies_that_outgrow_a_small_buffer_move_to_a_full_size_one() {
        let mut wbuf = BytesMut::new();
        assert!(ready_for_reply(&mut wbuf, 200, 200));
        wbuf.extend_from_slice(&vec![9u8; SMALL_SIZE - 100]);
        assert!(ready_for_reply(&mut wbuf, 200, 200));
        assert!(
            wbuf.capacity() >= BUFFER_SIZE,
            "moved to a full-size buffer"
        );
        assert_eq!(wbuf.len(), SMALL_SIZE - 100, "nothing lost");
        assert!(wbuf.iter().all(|&b| b == 9));
        assert_eq!(small(), 1, "the small one went back to the pool");
    }

    #[test]
    fn a_small_buffer_written_in_parts_goes_back_whole() {
        let mut wbuf = BytesMut::new();
        assert!(ready_for_reply(&mut wbuf, 200, 200));
        let ptr = wbuf.as_ptr();
        wbuf.extend_from_slice(&[1u8; 300]);
        // Two partial writes leave it empty with less room than it started with.
        wbuf.advance(100);
        wbuf.advance(200);
        assert!(wbuf.capacity() < SMALL_SIZE);
        release(&mut wbuf);
        assert_eq!(
            (small(), spent()),
            (1, 0),
            "taken back whole, not set aside"
        );
        let mut next = BytesMut::new();
        assert!(ready_for_reply(&mut next, 200, 200));
        assert_eq!((next.as_ptr(), next.capacity()), (ptr, SMALL_SIZE));
    }

    #[test]
    fn a_spent_tail_no_frame_holds_any_more_goes_straight_back_to_the_free_list() {
        let mut buf = BytesMut::with_capacity(BUFFER_SIZE);
        buf.extend_from_slice(&vec![0u8; BUFFER_SIZE - 100]);
        drop(buf.split().freeze());
        release_read(&mut buf);
        assert_eq!((pooled(), spent()), (1, 0));
    }

    #[test]
    fn a_read_tail_of_exactly_a_small_buffers_size_is_not_kept_as_one() {
        // Fixed-size frames can leave a read buffer with exactly SMALL_SIZE of room: as
        // a small buffer it would keep its whole 32 KiB allocation alive.
        let read_tail = |frames: &mut Vec<bytes::Bytes>| {
            let mut buf = BytesMut::with_capacity(BUFFER_SIZE);
            for _ in 0..(BUFFER_SIZE - SMALL_SIZE) / 1024 {
                buf.extend_from_slice(&[5u8; 1024]);
                frames.push(buf.split().freeze());
            }
            assert_eq!((buf.len(), buf.capacity()), (0, SMALL_SIZE));
            buf
        };
        let mut frames = Vec::new();
        let mut held = read_tail(&mut frames);
        release_read(&mut held);
        assert_eq!(
            (pooled(), small(), spent()),
            (0, 0, 1),
            "frames still alive: a spent tail"
        );
        frames.clear();
        let mut free = read_tail(&mut frames);
        frames.clear();
        release_read(&mut free);
        assert_eq!(
            (pooled(), small(), spent()),
            (1, 0, 1),
            "no frame left: the whole allocation, in the free list"
        );
        let mut whole = BytesMut::new();
        ready_for_read(&mut whole);
        assert_eq!(whole.capacity(), BUFFER_SIZE);
    }

    #[test]
    fn the_small_list_is_bounded_and_emptied_when_idle() {
        for _ in 0..SMALL_MAX + 5 {
            let mut b = BytesMut::with_capacity(SMALL_SIZE);
            release(&mut b);
        }
        assert_eq!(small(), SMALL_MAX);
        let t0 = Instant::now();
        trim_if_idle_at(t0);
        trim_if_idle_at(t0 + IDLE_AFTER);
        assert_eq!(small(), 0);
    }

    #[test]
    fn a_grown_buffer_taken_back_whole_joins_the_large_ones() {
        let mut grown = BytesMut::with_capacity(4 * BUFFER_SIZE);
        grown.extend_from_slice(&vec![0u8; 4 * BUFFER_SIZE - 100]);
        // Written out: empty, with less than a read's room left at its end.
        grown.advance(4 * BUFFER_SIZE - 100);
        assert!(grown.capacity() < MIN_ROOM);
        release(&mut grown);
        assert_eq!(
            (pooled(), small(), spent(), large()),
            (0, 0, 0, 1),
            "128 KiB is past the full-size buffers' bound"
        );
        assert_eq!(grown.capacity(), 0);
        let kept = POOL.with(|p| p.borrow().large[0].capacity());
        assert_eq!(kept, 4 * BUFFER_SIZE, "taken back whole");
    }

    #[test]
    fn a_large_message_gets_a_buffer_with_room_for_it() {
        // A read tail with 12 KiB of room, its 20 KiB frame alive, on top of the free list.
        let mut read = BytesMut::with_capacity(BUFFER_SIZE);
        let start = read.as_ptr();
        read.extend_from_slice(&[1u8; 20 * 1024]);
        let frame = read.split().freeze();
        release_read(&mut read);
        assert_eq!(pooled(), 1);
        let mut w = BytesMut::new();
        assert!(ready_for_write(&mut w, 20 * 1024));
        assert!(
            w.capacity() >= 20 * 1024,
            "room for the message: {}",
            w.capacity()
        );
        assert_eq!(
            pooled(),
            1,
            "the tail too small for it went back to the free list"
        );
        release(&mut w);
        drop(frame);
        // The tail's frame is gone: it is taken back whole when a large message wants it,
        // even from under a buffer given back later.
        let mut other = BytesMut::with_capacity(MIN_ROOM);
        release(&mut other);
        assert_eq!(pooled(), 3);
        let mut w = BytesMut::new();
        assert!(ready_for_write(&mut w, 20 * 1024));
        assert_eq!(
            w.as_ptr(),
            start,
            "the oldest buffer, its allocation taken back whole"
        );
        assert_eq!(w.capacity(), BUFFER_SIZE);
    }

    #[test]
    fn a_partial_write_leaving_a_small_buffers_room_keeps_the_buffer_whole() {
        let mut w = BytesMut::with_capacity(BUFFER_SIZE);
        w.extend_from_slice(&[1u8; BUFFER_SIZE - SMALL_SIZE]);
        w.extend_from_slice(&[2u8; SMALL_SIZE]);
        w.advance(BUFFER_SIZE - SMALL_SIZE);
        assert_eq!(w.capacity(), SMALL_SIZE, "looks like a small buffer");
        after_partial_write(&mut w);
        assert_eq!(w.capacity(), BUFFER_SIZE, "its allocation is whole again");
        assert_eq!(
            &w[..],
            &[2u8; SMALL_SIZE][..],
            "the unwritten bytes are kept"
        );
        w.clear();
        release(&mut w);
        assert_eq!(
            (pooled(), small()),
            (1, 0),
            "a full-size buffer, not a small one"
        );
        // A small buffer that wrote nothing is left as it is.
        let mut s = BytesMut::with_capacity(SMALL_SIZE);
        s.extend_from_slice(b"reply");
        after_partial_write(&mut s);
        assert_eq!(s.capacity(), SMALL_SIZE);
        assert_eq!(&s[..], b"reply");
    }

    #[test]
    fn a_batch_a_message_would_take_past_a_pooled_buffer_is_to_be_written_first() {
        let mut w = BytesMut::new();
        assert!(
            ready_for_write(&mut w, 2 * BUFFER_SIZE),
            "empty: room is made"
        );
        assert!(w.capacity() >= 2 * BUFFER_SIZE);
        let mut w = BytesMut::new();
        assert!(ready_for_write(&mut w, 1024));
        w.extend_from_slice(&[7u8; 1024]);
        assert!(
            ready_for_write(&mut w, BUFFER_SIZE - 1024),
            "the batch and the message fit a pooled buffer"
        );
        assert!(w.capacity() - w.len() >= BUFFER_SIZE - 1024);
        w.extend_from_slice(&[8u8; BUFFER_SIZE - 2048]);
        let before = (w.as_ptr(), w.capacity());
        assert!(
            !ready_for_write(&mut w, 2048),
            "they would pass it: the caller writes first"
        );
        assert_eq!(
            (w.as_ptr(), w.capacity()),
            before,
            "the batch is left as it was"
        );
        assert_eq!(w.len(), BUFFER_SIZE - 1024);
    }

    #[test]
    fn large_buffers_are_kept_for_the_next_large_message_within_their_bound() {
        // A write buffer that held a 200 KiB message comes back once written.
        let mut w = BytesMut::new();
        assert!(ready_for_write(&mut w, 200 * 1024));
        let first = w.as_ptr();
        w.extend_from_slice(&[5u8; 200 * 1024]);
        w.clear();
        release(&mut w);
        assert_eq!(large(), 1, "kept, not freed");
        // The next large message, read or written, gets that allocation.
        let mut w = BytesMut::new();
        assert!(ready_for_write(&mut w, 150 * 1024));
        assert_eq!(w.as_ptr(), first, "the kept allocation, no new one");
        assert_eq!(large(), 0);
        release(&mut w);
        // At most 16 MiB of them, none above 1 MiB.
        for _ in 0..LARGE_MAX_BYTES / LARGE_MAX_CAPACITY + 4 {
            let mut b = BytesMut::with_capacity(LARGE_MAX_CAPACITY);
            release(&mut b);
        }
        let mut huge = BytesMut::with_capacity(2 * LARGE_MAX_CAPACITY);
        release(&mut huge);
        let kept = POOL.with(|p| p.borrow().large_bytes);
        assert!(kept <= LARGE_MAX_BYTES, "{kept} bytes kept");
        assert_eq!(large(), LARGE_MAX_BYTES / LARGE_MAX_CAPACITY);
        // An idle park frees them with the rest.
        let t0 = Instant::now();
        trim_if_idle_at(t0);
        trim_if_idle_at(t0 + IDLE_AFTER);
        assert_eq!(large(), 0);
        assert_eq!(POOL.with(|p| p.borrow().large_bytes), 0);
    }

    #[test]
    fn a_large_partial_frame_moves_into_a_kept_large_buffer_when_its_own_is_shared() {
        let mut kept = BytesMut::with_capacity(256 * 1024);
        let kept_at = kept.as_ptr();
        release(&mut kept);
        assert_eq!(large(), 1);
        // A read buffer with a finished frame still alive, then 40 KiB of the next one.
        let mut read = BytesMut::new();
        ready_for_read(&mut read);
        read.extend_from_slice(&[1u8; 100]);
        let alive = read.split().freeze();
        read.extend_from_slice(&[2u8; 20 * 1024]);
        ready_for_read(&mut read);
        read.extend_from_slice(&[2u8; 20 * 1024]);
        ready_for_read(&mut read);
        assert_eq!(read.len(), 40 * 1024, "nothing lost");
        assert!(read.iter().all(|&b| b == 2));
        assert_eq!(read.as_ptr(), kept_at, "moved into the kept large buffer");
        assert!(read.capacity() - read.len() >= MIN_ROOM);
        drop(alive);
    }
}
