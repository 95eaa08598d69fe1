//! Proves the framed/binary request decode path allocates nothing: a counting global
//! allocator around the steady-state decode of many frames from one read buffer (the
//! way a connection's buffer is used), for 100 B, 4 KiB and 1 MiB payloads. Responses
//! too, on the framed and header transports: decoded in full, and decoded head first
//! (as the runtime's codecs do) then read with `decode_metadata`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use meta_protocol::{Codec, Message};
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{Protocol, ThriftCodec, Transport};

struct Counting;

thread_local! {
    /// Allocations made by this thread. Counted per thread: the test harness's own
    /// thread allocates now and then while a test runs, and a process-wide count saw
    /// those (4 of them, once, in a CI run).
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // Not counted once the thread's locals are gone, as it exits.
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations this thread has made so far.
fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn framed_binary_decode_allocates_nothing() {
    // The counter works: an allocation is seen.
    let before = allocs();
    let v = std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert!(allocs() > before, "the counting allocator counts");
    drop(v);

    for (payload, frames_n) in [(100usize, 1000usize), (4096, 200), (1 << 20, 4)] {
        for name in ["echo", "Store:put"] {
            let spec = FrameSpec::new(Transport::Framed, Protocol::Binary, name, 1);
            let frame = frames::call_frame(&spec, payload).unwrap();
            let mut buf = BytesMut::with_capacity(frame.len() * (frames_n + 1));
            for _ in 0..=frames_n {
                buf.extend_from_slice(&frame);
            }
            let mut codec =
                ThriftCodec::new(Some(Transport::Framed), Some(Protocol::Binary), 16 << 20);
            let mut decoded = Vec::with_capacity(frames_n);
            // The first split of a fresh BytesMut makes its storage shareable (one
            // allocation per buffer, not per frame).
            let first = codec.decode(&mut buf).unwrap().unwrap();
            let before = allocs();
            for _ in 0..frames_n {
                let m = codec.decode(&mut buf).unwrap().unwrap();
                decoded.push(m);
            }
            let after = allocs();
            assert!(buf.is_empty());
            assert_eq!(
                after - before,
                0,
                "{payload} B payload, {name}: allocations while decoding"
            );
            assert_eq!(
                decoded.last().unwrap().metadata().get("method"),
                first.metadata().get("method")
            );
            let method = name.rsplit(':').next().unwrap();
            assert_eq!(decoded[0].metadata().get("method"), Some(method));
        }
    }

    responses_allocate_nothing_eager_or_head_first();
}

/// Decodes `frames_n` copies of `frame` after a first one (which makes the buffer's
/// storage shareable), with `lazy` metadata and then, when `read_rest`,
/// `decode_metadata` on each; returns the allocations counted and the last message.
fn decode_counted(
    frame: &[u8],
    frames_n: usize,
    t: Transport,
    p: Protocol,
    lazy: bool,
    read_rest: bool,
) -> (usize, Message) {
    let mut buf = BytesMut::with_capacity(frame.len() * (frames_n + 1));
    for _ in 0..=frames_n {
        buf.extend_from_slice(frame);
    }
    let mut codec = ThriftCodec::new(Some(t), Some(p), 16 << 20).with_lazy_metadata(lazy);
    let mut decoded = Vec::with_capacity(frames_n);
    let _first = codec.decode(&mut buf).unwrap().unwrap();
    let before = allocs();
    for _ in 0..frames_n {
        let mut m = codec.decode(&mut buf).unwrap().unwrap();
        if read_rest {
            codec.decode_metadata(&mut m).unwrap();
        }
        decoded.push(m);
    }
    let after = allocs();
    assert!(buf.is_empty());
    (after - before, decoded.pop().unwrap())
}

fn responses_allocate_nothing_eager_or_head_first() {
    for t in [Transport::Framed, Transport::Header] {
        for p in Protocol::ALL {
            let spec = FrameSpec::new(t, p, "Store:get", 1).with_headers(&[("tenant", "t1")]);
            let mut frame = BytesMut::new();
            frames::write_reply(&spec, &[b'x'; 100], &mut frame).unwrap();
            let (eager_allocs, eager) = decode_counted(&frame, 500, t, p, false, false);
            assert_eq!(eager_allocs, 0, "{t:?}/{p:?}: a full decode allocates");
            assert!(!eager.metadata_deferred());
            let (head_allocs, head) = decode_counted(&frame, 500, t, p, true, false);
            assert_eq!(head_allocs, 0, "{t:?}/{p:?}: a head-first decode allocates");
            assert!(head.metadata_deferred());
            assert_eq!(head.metadata().get("method"), None);
            let (read_allocs, read) = decode_counted(&frame, 500, t, p, true, true);
            assert_eq!(
                read_allocs, 0,
                "{t:?}/{p:?}: a head-first decode and decode_metadata allocate"
            );
            assert!(!read.metadata_deferred());
            assert_eq!(read.metadata(), eager.metadata());
            assert_eq!(read.metadata().get("method"), Some("get"));
            assert_eq!(read.name(), eager.name());
        }
    }
}
