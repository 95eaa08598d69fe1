//! Proves the framed/binary request decode path allocates nothing: a counting global
//! allocator around the steady-state decode of many frames from one read buffer (the
//! way a connection's buffer is used), for 100 B, 4 KiB and 1 MiB payloads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use meta_protocol::Codec;
use metaproxy_thrift::frames::{self, FrameSpec};
use metaproxy_thrift::{Protocol, ThriftCodec, Transport};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// One test only: the counter is process-wide.
#[test]
fn framed_binary_decode_allocates_nothing() {
    // The counter works: an allocation is seen.
    let before = ALLOCS.load(Ordering::SeqCst);
    let v = std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert!(
        ALLOCS.load(Ordering::SeqCst) > before,
        "the counting allocator counts"
    );
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
            let before = ALLOCS.load(Ordering::SeqCst);
            for _ in 0..frames_n {
                let m = codec.decode(&mut buf).unwrap().unwrap();
                decoded.push(m);
            }
            let after = ALLOCS.load(Ordering::SeqCst);
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
}
